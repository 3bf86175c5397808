"""``fastapps-auth dev-issuer``: mint, rotate, jwks, keys and serve from the command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import KeySet, KeySetSerialization

from fastapps_auth.dev_issuer.cli import main


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def claims_of(token: str, jwks: dict[str, Any]) -> dict[str, Any]:
    return dict(
        jwt.decode(token, KeySet.import_key_set(cast(KeySetSerialization, jwks)), algorithms=["RS256", "ES256"]).claims
    )


def test_mint_prints_a_token_with_the_requested_claims(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = str(tmp_path)
    code, out, _ = run(
        capsys, "mint", "--dir", d, "--sub", "alice", "--scope", "read write", "--scope", "admin",
        "--aud", "api", "--claim", "tenant=acme", "--claim", "level=3", "--claim", "jti=null",
        "--alg", "ES256", "--lifetime", "60", "--now", "1800000000",
    )  # fmt: skip
    assert code == 0
    token = out.strip()
    assert token.count(".") == 2 and "\n" not in token
    _, jwks_out, _ = run(capsys, "jwks", "--dir", d)
    claims = claims_of(token, json.loads(jwks_out))
    assert claims["sub"] == "alice" and claims["scope"] == "read write admin" and claims["aud"] == "api"
    assert claims["tenant"] == "acme" and claims["level"] == 3 and "jti" not in claims
    assert claims["iat"] == 1_800_000_000 and claims["exp"] == 1_800_000_060
    assert claims["iss"] == "http://127.0.0.1:8765"


def test_mint_expired_and_not_yet_valid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = str(tmp_path)
    _, expired, _ = run(capsys, "mint", "--dir", d, "--expired", "--now", "1800000000")
    _, early, _ = run(capsys, "mint", "--dir", d, "--not-yet-valid", "--now", "1800000000")
    jwks = json.loads(run(capsys, "jwks", "--dir", d)[1])
    assert claims_of(expired.strip(), jwks)["exp"] < 1_800_000_000
    assert claims_of(early.strip(), jwks)["nbf"] > 1_800_000_000


def test_rotate_and_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = str(tmp_path)
    token = run(capsys, "mint", "--dir", d)[1].strip()
    code, out, _ = run(capsys, "rotate", "--dir", d, "--grace", "600", "--alg", "RS256")
    assert code == 0 and out.startswith("new key rs256-")
    _, listing, _ = run(capsys, "keys", "--dir", d)
    lines = listing.strip().splitlines()
    assert len(lines) == 3
    assert sum("active" in line for line in lines) == 2 and sum("retired" in line for line in lines) == 1
    jwks = json.loads(run(capsys, "jwks", "--dir", d)[1])
    assert claims_of(token, jwks)["sub"] == "user-1"  # the retired key still verifies during its grace
    assert all("d" not in k for k in jwks["keys"])


def test_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert main(["mint", "--claim", "no-equals-sign", "--dir", str(tmp_path)]) == 2
    assert main(["mint", "--alg", "HS256", "--dir", str(tmp_path)]) == 2
    assert main(["serve", "--host", "0.0.0.0", "--dir", str(tmp_path)]) == 2
    assert "loopback" in capsys.readouterr().err
    assert main(["--help"]) == 0


def test_serve_answers_and_picks_up_a_rotation_from_another_process(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = str(tmp_path)
    code = f"from fastapps_auth.dev_issuer.cli import main; main(['serve', '--dir', {d!r}, '--port', '0'])"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("dev issuer http://127.0.0.1:")
        url = first.split()[2]
        meta = httpx.get(f"{url}/.well-known/openid-configuration", timeout=5).json()
        assert meta["issuer"] == url
        saved = json.loads((tmp_path / "issuer.json").read_text())
        client = saved["clients"][0]
        r = httpx.post(
            meta["token_endpoint"],
            data={"grant_type": "client_credentials", "scope": "read"},
            auth=(client["client_id"], client["secret"]),
            timeout=5,
        )
        assert r.status_code == 200
        assert claims_of(r.json()["access_token"], httpx.get(meta["jwks_uri"]).json())["iss"] == url
        # mint from the CLI defaults to the served issuer URL
        assert claims_of(run(capsys, "mint", "--dir", d)[1].strip(), httpx.get(meta["jwks_uri"]).json())["iss"] == url
        before = {k["kid"] for k in httpx.get(meta["jwks_uri"]).json()["keys"]}
        assert main(["rotate", "--dir", d, "--grace", "0"]) == 0
        after = {k["kid"] for k in httpx.get(meta["jwks_uri"]).json()["keys"]}
        assert len(after) == 2 and not before & after
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_numbers_out_of_range_are_usage_errors_not_tracebacks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = str(tmp_path)
    assert main(["serve", "--dir", d, "--port", "99999"]) == 2
    assert main(["mint", "--dir", d, "--lifetime", "inf"]) == 2
    assert main(["mint", "--dir", d, "--now", "nan"]) == 2
    assert main(["rotate", "--dir", d, "--grace", "inf"]) == 2
    assert main(["rotate", "--dir", d, "--grace", "nan"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "port is 0 to 65535" in err and "finite" in err
    assert not (tmp_path / "keys.json").exists() or "Infinity" not in (tmp_path / "keys.json").read_text()


def test_serve_makes_an_existing_issuer_file_private(tmp_path: Path) -> None:
    """issuer.json holds the client secrets: a copy left readable by others (a checkout, say) is made 0600."""
    (tmp_path / "issuer.json").write_text("{}")
    (tmp_path / "issuer.json").chmod(0o644)
    code = f"from fastapps_auth.dev_issuer.cli import main; main(['serve', '--dir', {str(tmp_path)!r}, '--port', '0'])"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("dev issuer http://127.0.0.1:")
        assert "secret" in (tmp_path / "issuer.json").read_text()
        assert (tmp_path / "issuer.json").stat().st_mode & 0o777 == 0o600
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# -- the state directory ---------------------------------------------------------------------


def test_the_default_state_dir_is_per_user_and_shared_wherever_a_command_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from fastapps_auth.dev_issuer.state import DIR_ENV, StateDir

    monkeypatch.delenv(DIR_ENV, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    expected = tmp_path / "data" / "fastapps-auth" / "dev-issuer"
    assert StateDir().path == expected
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    code, token, err = run(capsys, "mint", "--sub", "alice")
    assert code == 0 and "created new signing keys in " + str(expected) in err
    monkeypatch.chdir(tmp_path / "b")  # another directory: the same keys, and no note
    code, jwks_out, err = run(capsys, "jwks")
    assert code == 0 and err == ""
    assert claims_of(token.strip(), json.loads(jwks_out))["sub"] == "alice"
    monkeypatch.setenv(DIR_ENV, str(tmp_path / "env"))
    assert StateDir().path == tmp_path / "env" and StateDir(str(tmp_path / "x")).path == tmp_path / "x"


def test_commands_that_expect_keys_say_when_there_are_none(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = str(tmp_path)
    for command in ("jwks", "keys", "clients"):
        code, out, err = run(capsys, command, "--state-dir", d)
        assert code == 2 and out == "" and err.count("\n") == 1
        assert err.startswith(f"fastapps-auth dev-issuer: error: {command}: no ") and "serve" in err
    (tmp_path / "issuer.json").write_text('{"issuer": "http://127.0.0.1:9999"}')  # a serve ran here, keys are gone
    code, _, err = run(capsys, "mint", "--state-dir", d)
    assert code == 0 and "an issuer served from here, so its tokens will no longer verify" in err


def test_usage_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for args in (["mint", "--alg", "HS256"], ["serve", "--port", "x"], ["nope"], ["serve", "--user", "a b"]):
        code, out, err = run(capsys, *args, "--state-dir", str(tmp_path))
        assert code == 2 and out == "" and err.count("\n") == 1, err
        assert err.startswith("fastapps-auth dev-issuer: error: ") and "usage:" not in err
    code, _, err = run(capsys, "serve", "--auto-login", "nobody", "--port", "0", "--state-dir", str(tmp_path))
    assert code == 2 and "not one of the users" in err and err.count("\n") == 1


def _serve(tmp_path: Path, *args: str) -> tuple[subprocess.Popen[str], list[str]]:
    code = (
        "from fastapps_auth.dev_issuer.cli import main; "
        f"main(['serve', '--state-dir', {str(tmp_path)!r}, '--port', '0', *{list(args)!r}])"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    lines = [proc.stdout.readline()]
    while lines[-1] and not lines[-1].startswith("  tokens"):  # the last line of the start-up block
        lines.append(proc.stdout.readline())
    return proc, lines


def test_serve_prints_where_everything_is_and_clients_shows_registrations(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    proc, lines = _serve(tmp_path)
    try:
        url = lines[0].split()[2]
        shown = "".join(lines)
        assert f"state      {tmp_path}  (created new signing keys)" in shown
        for endpoint in ("authorize", "token", "register", "introspect", "revoke", "jwks.json"):
            assert f"{url}/{endpoint}" in shown
        assert "clients    dev-client  (ids and secrets: fastapps-auth dev-issuer clients)" in shown
        registered = httpx.post(
            f"{url}/register", json={"redirect_uris": ["http://127.0.0.1/cb"], "client_name": "mine"}, timeout=5
        ).json()
        code, listing, _ = run(capsys, "clients", "--state-dir", str(tmp_path))
        assert code == 0
        assert f"{registered['client_id']}  secret={registered['client_secret']}  auth=client_secret_basic" in listing
        assert "    redirect http://127.0.0.1/cb" in listing and listing.startswith("dev-client  secret=")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    proc, lines = _serve(tmp_path)  # a restart keeps the keys and the registered client
    try:
        assert "created new signing keys" not in "".join(lines)
        code, again, _ = run(capsys, "clients", "--state-dir", str(tmp_path), "--json")
        assert registered["client_id"] in again
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_serve_with_auto_login_users_and_opaque_tokens(tmp_path: Path) -> None:
    from fastapps_auth.testing.flow import pkce

    proc, lines = _serve(tmp_path, "--auto-login", "bob", "--user", "bob=read", "--user", "eve", "--opaque")
    try:
        url = lines[0].split()[2]
        assert "auto-login bob" in "".join(lines) and "opaque (introspection only)" in "".join(lines)
        client = httpx.post(
            f"{url}/register", json={"redirect_uris": ["http://127.0.0.1/cb"], "token_endpoint_auth_method": "none"}
        ).json()
        verifier, challenge = pkce()
        query = {"response_type": "code", "client_id": client["client_id"], "redirect_uri": "http://127.0.0.1/cb",
                 "code_challenge": challenge, "code_challenge_method": "S256", "scope": "read write"}  # fmt: skip
        location = httpx.get(f"{url}/authorize", params=query).headers["location"]
        code = dict(p.split("=", 1) for p in location.split("?", 1)[1].split("&"))["code"]
        token = httpx.post(
            f"{url}/token",
            data={"grant_type": "authorization_code", "code": code, "redirect_uri": "http://127.0.0.1/cb",
                  "code_verifier": verifier, "client_id": client["client_id"]},
        ).json()  # fmt: skip
        assert token["scope"] == "read" and "." not in token["access_token"]  # bob may have only read; opaque
        saved = json.loads((tmp_path / "issuer.json").read_text())["clients"][0]
        body = httpx.post(
            f"{url}/introspect", data={"token": token["access_token"]}, auth=(saved["client_id"], saved["secret"])
        ).json()
        assert body["active"] and body["sub"] == "bob" and body["scope"] == "read"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
