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
