"""The dev issuer: key store and rotation, minting RFC 9068 tokens, and its HTTP endpoints."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from joserfc import jws, jwt
from joserfc.errors import BadSignatureError
from joserfc.jwk import KeySet, KeySetSerialization

from fastapps_auth.clock import ManualClock
from fastapps_auth.dev_issuer import DevIssuer, KeyStore, RunningIssuer
from fastapps_auth.dev_issuer.server import bind
from fastapps_auth.endpoints import is_loopback
from fastapps_auth.testing import start_issuer, tamper


def decode(token: str, jwks: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims of ``token`` after verifying its signature against ``jwks``."""
    tok = jwt.decode(token, KeySet.import_key_set(cast(KeySetSerialization, jwks)), algorithms=["RS256", "ES256"])
    return dict(tok.header), dict(tok.claims)


# -- key store -------------------------------------------------------------------------------


def test_keystore_creates_rs256_and_es256_keys_private_on_disk(tmp_path: Path) -> None:
    folder = tmp_path / "keys"
    store = KeyStore(folder)
    jwks = store.jwks()
    assert sorted(k["alg"] for k in jwks["keys"]) == ["ES256", "RS256"]
    for k in jwks["keys"]:
        assert k["use"] == "sig" and k["kid"]
        assert "d" not in k  # public parts only
    mode = stat.S_IMODE((folder / "keys.json").stat().st_mode)
    assert mode == 0o600
    again = KeyStore(folder)
    assert again.jwks() == jwks  # the same keys come back from the folder


def test_rotation_keeps_the_old_key_published_for_the_grace_period(clock: ManualClock) -> None:
    store = KeyStore(None, algorithms=["ES256"], clock=clock)
    old = store.signing_key("ES256").kid
    assert old is not None  # the key store always sets a kid
    (new,) = store.rotate(grace=600)
    assert store.signing_key("ES256").kid == new != old
    assert {k["kid"] for k in store.jwks()["keys"]} == {old, new}
    clock.advance(599)
    assert store.key(old) is not None
    clock.advance(2)
    assert {k["kid"] for k in store.jwks()["keys"]} == {new}
    assert store.key(old) is None


def test_rotation_with_no_grace_drops_the_old_key_at_once(clock: ManualClock) -> None:
    store = KeyStore(None, clock=clock)
    before = {k["kid"] for k in store.jwks()["keys"]}
    new = store.rotate(grace=0)
    assert {k["kid"] for k in store.jwks()["keys"]} == set(new)
    assert not before & set(new)


def test_a_second_store_on_the_folder_sees_a_rotation(tmp_path: Path) -> None:
    server_side = KeyStore(tmp_path)
    cli_side = KeyStore(tmp_path)
    (new,) = cli_side.rotate(grace=60, algorithms=["RS256"])
    assert server_side.signing_key("RS256").kid == new
    assert len(server_side.jwks()["keys"]) == 3


def test_keystore_rejects_unknown_algorithms() -> None:
    with pytest.raises(ValueError, match="HS256"):
        KeyStore(None, algorithms=["HS256"])
    with pytest.raises(ValueError, match="grace"):
        KeyStore(None, algorithms=["ES256"]).rotate(grace=-1)


# -- minting -----------------------------------------------------------------------------------


@pytest.fixture
def issuer(clock: ManualClock) -> DevIssuer:
    return DevIssuer("http://127.0.0.1:9/", KeyStore(None, clock=clock), audience="api", clock=clock)


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_mint_makes_an_rfc9068_access_token(issuer: DevIssuer, clock: ManualClock, alg: str) -> None:
    token = issuer.mint("alice", scopes=["read", "write"], alg=alg, lifetime=120)
    header, claims = decode(token, issuer.jwks())
    assert header["typ"] == "at+jwt" and header["alg"] == alg
    assert header["kid"] == issuer.keys.signing_key(alg).kid
    now = int(clock.time())
    assert claims["iss"] == "http://127.0.0.1:9"  # trailing slash dropped
    assert claims["sub"] == "alice" and claims["client_id"] == "alice" and claims["aud"] == "api"
    assert claims["iat"] == now and claims["exp"] == now + 120
    assert claims["scope"] == "read write"
    assert claims["jti"] and claims["jti"] != decode(issuer.mint("alice"), issuer.jwks())[1]["jti"]


def test_mint_claims_override_and_none_removes(issuer: DevIssuer) -> None:
    token = issuer.mint("bob", claims={"tenant": "acme", "roles": ["admin"], "exp": None, "iss": "other"})
    _, claims = decode(token, issuer.jwks())
    assert claims["tenant"] == "acme" and claims["roles"] == ["admin"]
    assert "exp" not in claims
    assert claims["iss"] == "other"


def test_expired_and_not_yet_valid_helpers(issuer: DevIssuer, clock: ManualClock) -> None:
    now = clock.time()
    _, expired = decode(issuer.expired("carol", ago=30), issuer.jwks())
    assert expired["exp"] == int(now - 30) and expired["iat"] < expired["exp"]
    _, early = decode(issuer.not_yet_valid("carol", starts_in=90), issuer.jwks())
    assert early["nbf"] == int(now + 90) and early["exp"] > early["nbf"]


def test_tampered_token_fails_signature_verification(issuer: DevIssuer) -> None:
    token = issuer.mint("dave")
    bad = tamper(token)
    assert bad != token and bad.rsplit(".", 1)[0] == token.rsplit(".", 1)[0]
    with pytest.raises(BadSignatureError):
        decode(bad, issuer.jwks())


_claim_names = st.text(st.characters(categories=["L", "N"]), min_size=1, max_size=12).filter(
    lambda s: s not in {"iss", "sub", "aud", "iat", "exp", "jti", "client_id", "scope", "nbf"}
)
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    subject=st.text(min_size=1, max_size=40),
    scopes=st.lists(st.text(st.characters(categories=["L", "N", "P"]), min_size=1, max_size=10), max_size=5),
    extra=st.dictionaries(_claim_names, _json.filter(lambda v: v is not None), max_size=4),
)
def test_any_subject_scopes_and_claims_round_trip(
    issuer: DevIssuer, subject: str, scopes: list[str], extra: dict[str, Any]
) -> None:
    _, claims = decode(issuer.mint(subject, scopes=scopes, claims=extra, alg="ES256"), issuer.jwks())
    assert claims["sub"] == subject
    assert claims.get("scope", "") == " ".join(scopes)
    for name, value in extra.items():
        assert claims[name] == value


# -- over HTTP ------------------------------------------------------------------------------------


@pytest.fixture
def running() -> Any:
    issuer = start_issuer(audience="api")
    yield issuer
    issuer.stop()


def test_discovery_and_jwks_are_served(running: RunningIssuer) -> None:
    for path in ("/.well-known/openid-configuration", "/.well-known/oauth-authorization-server"):
        meta = httpx.get(running.url + path).json()
        assert meta["issuer"] == running.url
        assert meta["jwks_uri"] == running.jwks_uri and meta["token_endpoint"] == running.token_endpoint
    jwks = httpx.get(running.jwks_uri).json()
    assert {(k["alg"], k["use"]) for k in jwks["keys"]} == {("RS256", "sig"), ("ES256", "sig")}
    token = running.mint("erin")
    assert decode(token, jwks)[1]["sub"] == "erin"


def test_jwks_over_http_follows_rotation_and_grace(running: RunningIssuer) -> None:
    old = running.mint("frank")
    running.rotate(grace=3600)
    jwks = httpx.get(running.jwks_uri).json()
    assert len(jwks["keys"]) == 4
    assert decode(old, jwks)[1]["sub"] == "frank"  # signed before the rotation, still verifies
    middle = running.mint("frank")
    middle_kid = jws.extract_compact(middle.encode()).protected["kid"]
    running.rotate(grace=0)  # the keys that signed `middle` go at once; the first keys keep their grace
    kids = {k["kid"] for k in httpx.get(running.jwks_uri).json()["keys"]}
    assert middle_kid not in kids and jws.extract_compact(old.encode()).protected["kid"] in kids
    assert len(kids) == 4


def _token_request(running: RunningIssuer, data: dict[str, str], auth: tuple[str, str] | None = None) -> httpx.Response:
    return httpx.post(running.token_endpoint, data=data, auth=auth)


def test_client_credentials_with_basic_and_post_auth(running: RunningIssuer) -> None:
    cid, secret = running.client.client_id, running.client.secret
    r = _token_request(running, {"grant_type": "client_credentials", "scope": "read write"}, (cid, secret))
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    body = r.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3600 and body["scope"] == "read write"
    header, claims = decode(body["access_token"], running.jwks())
    assert header["typ"] == "at+jwt"
    assert claims["sub"] == cid and claims["client_id"] == cid and claims["scope"] == "read write"
    assert claims["aud"] == "api"
    r = _token_request(
        running,
        {"grant_type": "client_credentials", "client_id": cid, "client_secret": secret, "resource": "https://mcp.test"},
    )
    assert r.status_code == 200
    assert decode(r.json()["access_token"], running.jwks())[1]["aud"] == "https://mcp.test"


def test_token_endpoint_refuses_bad_clients_grants_and_scopes(running: RunningIssuer) -> None:
    cid, secret = running.client.client_id, running.client.secret
    r = _token_request(running, {"grant_type": "client_credentials"}, (cid, secret + "x"))
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"
    assert r.headers["www-authenticate"].startswith("Basic")
    assert _token_request(running, {"grant_type": "client_credentials"}).status_code == 401
    r = _token_request(running, {"grant_type": "password"}, (cid, secret))
    assert r.status_code == 400 and r.json()["error"] == "unsupported_grant_type"
    assert running.issuer is not None
    limited = running.issuer.add_client("limited", "s3cret", scopes=["read"])
    ok = _token_request(running, {"grant_type": "client_credentials", "scope": "read"}, ("limited", limited.secret))
    assert ok.status_code == 200
    r = _token_request(running, {"grant_type": "client_credentials", "scope": "read admin"}, ("limited", "s3cret"))
    assert r.status_code == 400 and r.json() == {
        "error": "invalid_scope",
        "error_description": "scope not allowed for this client: admin",
    }
    huge = httpx.post(
        running.token_endpoint,
        content=b"a=" + b"x" * 10_000,
        auth=(cid, secret),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert huge.status_code == 400


def test_malformed_basic_header_is_an_invalid_client(running: RunningIssuer) -> None:
    for value in ("Basic !!!", "Basic " + base64.b64encode(b"no-colon").decode(), "Bearer x"):
        r = httpx.post(
            running.token_endpoint, data={"grant_type": "client_credentials"}, headers={"authorization": value}
        )
        assert r.status_code == 401


def test_servers_listen_on_loopback_only() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.10") and not is_loopback("example.com")
    with pytest.raises(ValueError, match="loopback"):
        bind("0.0.0.0")


def test_folder_backed_running_issuer_keeps_keys_across_restarts(tmp_path: Path) -> None:
    with RunningIssuer(tmp_path) as first:
        kids = {k["kid"] for k in httpx.get(first.jwks_uri).json()["keys"]}
        token = first.mint("gina")
    with RunningIssuer(tmp_path) as second:
        jwks = httpx.get(second.jwks_uri).json()
        assert {k["kid"] for k in jwks["keys"]} == kids
        assert decode(token, jwks)[1]["sub"] == "gina"
    assert json.loads((tmp_path / "keys.json").read_text())["keys"][0]["jwk"]["d"]  # private part is kept


def test_client_secrets_stay_out_of_reprs(running: RunningIssuer) -> None:
    """A failing assertion on the fixture's client, or a log line of the issuer, does not print the secret."""
    secret = running.client.secret
    assert secret not in repr(running.client)
    assert secret not in repr(running.issuer)


def test_servers_bind_tcp_sockets_so_asyncio_sets_nodelay() -> None:
    """asyncio turns Nagle off only for sockets created as IPPROTO_TCP; with it on, every keep-alive
    response written in two parts waited for the client's delayed ACK."""
    import socket

    sock = bind("127.0.0.1")
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()
