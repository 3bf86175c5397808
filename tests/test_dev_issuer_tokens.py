"""The dev issuer's token endpoint, introspection and revocation over HTTP: refresh rotation, token
exchange (RFC 8693), client authentication, RFC 7662 responses, RFC 7009 revocation, opaque tokens."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import KeySet, KeySetSerialization

from fastapps_auth.clock import ManualClock
from fastapps_auth.dev_issuer import RunningIssuer
from fastapps_auth.testing import start_issuer, tamper
from fastapps_auth.testing.flow import Flow, register

EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS = "urn:ietf:params:oauth:token-type:access_token"


@pytest.fixture
def issuer(clock: ManualClock) -> Iterator[RunningIssuer]:
    running = start_issuer(clock=clock, users=["alice", "mallory=read,calendar"])
    yield running
    running.stop()


@pytest.fixture
def flow(issuer: RunningIssuer) -> Flow:
    return Flow(issuer, register(issuer))


def secret_auth(issuer: RunningIssuer) -> tuple[str, str]:
    assert issuer.client.secret is not None
    return issuer.client.client_id, issuer.client.secret


def introspect(issuer: RunningIssuer, token: str, **extra: str) -> dict[str, Any]:
    response = httpx.post(issuer.introspection_endpoint, data={"token": token, **extra}, auth=secret_auth(issuer))
    assert response.status_code == 200 and response.headers["cache-control"] == "no-store"
    body: dict[str, Any] = response.json()
    return body


def exchange(issuer: RunningIssuer, subject: str, **params: Any) -> httpx.Response:
    data = {"grant_type": EXCHANGE, "subject_token": subject, "subject_token_type": ACCESS, **params}
    return httpx.post(issuer.token_endpoint, data=data, auth=secret_auth(issuer))


def claims(issuer: RunningIssuer, token: str) -> dict[str, Any]:
    keys = KeySet.import_key_set(cast(KeySetSerialization, issuer.jwks()))
    return dict(jwt.decode(token, keys, algorithms=["RS256", "ES256"]).claims)


# -- refresh tokens ------------------------------------------------------------------------------


def test_refresh_rotates_and_a_reused_refresh_token_revokes_the_login(flow: Flow, issuer: RunningIssuer) -> None:
    first = flow.tokens(scope="read write", resource="https://mcp.example/mcp")
    second = flow.refresh(first["refresh_token"]).json()
    assert second["refresh_token"] != first["refresh_token"] and second["scope"] == "read write"
    assert claims(issuer, second["access_token"])["aud"] == "https://mcp.example/mcp"
    narrower = flow.refresh(second["refresh_token"], scope="read").json()
    assert narrower["scope"] == "read"
    assert introspect(issuer, narrower["access_token"])["active"]
    reuse = flow.refresh(first["refresh_token"])  # spent: someone holds a copy
    assert reuse.status_code == 400 and reuse.json()["error"] == "invalid_grant"
    for token in (first["access_token"], second["access_token"], narrower["access_token"], narrower["refresh_token"]):
        assert introspect(issuer, token) == {"active": False}


def test_refresh_cannot_widen_scopes_nor_cross_clients(flow: Flow, issuer: RunningIssuer) -> None:
    body = flow.tokens(scope="read")
    assert flow.refresh(body["refresh_token"], scope="read admin").json()["error"] == "invalid_scope"
    other = Flow(issuer, register(issuer))
    stolen = other.refresh(body["refresh_token"]).json()
    assert stolen["error"] == "invalid_grant" and "another client" in stolen["error_description"]
    assert flow.refresh(body["refresh_token"]).status_code == 200  # neither attempt spent it


def test_refresh_tokens_expire(flow: Flow, clock: ManualClock) -> None:
    body = flow.tokens()
    clock.advance(86400 + 1)
    assert flow.refresh(body["refresh_token"]).json()["error"] == "invalid_grant"


def test_a_public_client_uses_its_client_id_alone(issuer: RunningIssuer) -> None:
    flow = Flow(issuer, register(issuer, token_endpoint_auth_method="none"))
    assert "client_secret" not in flow.client and flow.auth is None
    body = flow.tokens()
    assert flow.refresh(body["refresh_token"]).status_code == 200
    data = {"grant_type": "client_credentials", "client_id": flow.client["client_id"]}
    cc = httpx.post(issuer.token_endpoint, data=data)
    assert cc.json()["error"] == "unauthorized_client"


# -- client authentication --------------------------------------------------------------------


def test_client_authentication_rules(flow: Flow, issuer: RunningIssuer) -> None:
    code = flow.code()
    cid, secret = flow.client["client_id"], flow.client["client_secret"]
    no_secret = httpx.post(
        issuer.token_endpoint,
        data={"grant_type": "authorization_code", "code": code, "client_id": cid, "code_verifier": flow.verifier},
    )
    assert no_secret.status_code == 401 and no_secret.json()["error"] == "invalid_client"
    two_ways = httpx.post(
        issuer.token_endpoint,
        data={"grant_type": "client_credentials", "client_secret": secret},
        auth=(cid, secret),
    )
    assert two_ways.json()["error"] == "invalid_request"
    post = httpx.post(
        issuer.token_endpoint,
        data={"grant_type": "refresh_token", "refresh_token": "nope", "client_id": cid, "client_secret": secret},
    )
    assert post.status_code == 400 and post.json()["error"] == "invalid_grant"  # authenticated, then refused
    repeated = httpx.post(
        issuer.token_endpoint,
        content=b"grant_type=client_credentials&grant_type=password",
        headers={"content-type": "application/x-www-form-urlencoded"},
        auth=(cid, secret),
    )
    assert repeated.json() == {
        "error": "invalid_request",
        "error_description": "malformed form: grant_type is given more than once",
    }


# -- token exchange (RFC 8693) ---------------------------------------------------------------------


def test_token_exchange_gives_a_token_for_another_audience(flow: Flow, issuer: RunningIssuer) -> None:
    subject = flow.tokens(scope="read calendar", resource="https://mcp.example/mcp")["access_token"]
    response = exchange(issuer, subject, audience="https://calendar.example", scope="calendar")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["issued_token_type"] == ACCESS and body["token_type"] == "Bearer" and body["scope"] == "calendar"
    got, original = claims(issuer, body["access_token"]), claims(issuer, subject)
    assert got["aud"] == "https://calendar.example" and got["sub"] == "alice" and got["scope"] == "calendar"
    assert got["client_id"] == issuer.client.client_id and got["act"] == {"sub": issuer.client.client_id}
    assert got["exp"] <= original["exp"] and got["acr"] == original["acr"]
    resource = exchange(issuer, subject, resource="https://files.example/api").json()
    assert claims(issuer, resource["access_token"])["aud"] == "https://files.example/api"
    assert claims(issuer, resource["access_token"])["scope"] == "read calendar"  # no scope asked: the subject's


def test_token_exchange_refusals(flow: Flow, issuer: RunningIssuer) -> None:
    body = flow.tokens(login_hint="mallory", scope="read")
    subject = body["access_token"]
    assert exchange(issuer, subject, scope="admin").json()["error"] == "invalid_scope"  # mallory may not have it
    assert exchange(issuer, tamper(subject)).json()["error"] == "invalid_grant"
    assert exchange(issuer, subject, actor_token="x", actor_token_type=ACCESS).json()["error"] == "invalid_request"
    assert exchange(issuer, subject, subject_token_type="urn:x").json()["error"] == "invalid_request"
    public = Flow(issuer, register(issuer, token_endpoint_auth_method="none"))
    as_public = httpx.post(
        issuer.token_endpoint,
        data={"grant_type": EXCHANGE, "subject_token": subject, "subject_token_type": ACCESS,
              "client_id": public.client["client_id"]},
    )  # fmt: skip
    assert as_public.json()["error"] == "unauthorized_client"
    issuer.revoke(subject)
    revoked = exchange(issuer, subject).json()
    assert revoked["error"] == "invalid_grant" and "not an active access token" in revoked["error_description"]


# -- introspection and revocation -----------------------------------------------------------------


def test_introspection_of_an_active_token(flow: Flow, issuer: RunningIssuer, clock: ManualClock) -> None:
    token = flow.tokens(scope="read", resource="https://mcp.example/mcp")["access_token"]
    body = introspect(issuer, token, token_type_hint="access_token")
    expected = {"active", "scope", "client_id", "sub", "exp", "iat", "iss", "aud", "token_type"}
    assert set(body) == expected | {"jti", "acr", "auth_time"}
    assert body["active"] is True and body["scope"] == "read" and body["sub"] == "alice"
    assert body["client_id"] == flow.client["client_id"] and body["iss"] == issuer.url
    assert body["aud"] == "https://mcp.example/mcp" and body["token_type"] == "Bearer"
    clock.advance(3601)
    assert introspect(issuer, token) == {"active": False}


def test_introspection_shows_cnf_of_a_bound_token(issuer: RunningIssuer) -> None:
    bound = issuer.mint("alice", claims={"cnf": {"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"}})
    body = introspect(issuer, bound)
    assert body["cnf"] == {"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"} and body["token_type"] == "DPoP"


def test_introspection_needs_a_confidential_client(issuer: RunningIssuer, flow: Flow) -> None:
    token = issuer.mint("alice")
    cid, secret = secret_auth(issuer)
    basic = httpx.post(issuer.introspection_endpoint, data={"token": token}, auth=(cid, secret))
    post = httpx.post(issuer.introspection_endpoint, data={"token": token, "client_id": cid, "client_secret": secret})
    assert basic.json()["active"] and post.json()["active"]
    none = httpx.post(issuer.introspection_endpoint, data={"token": token})
    wrong = httpx.post(issuer.introspection_endpoint, data={"token": token}, auth=(cid, secret + "x"))
    public = Flow(issuer, register(issuer, token_endpoint_auth_method="none"))
    as_public = httpx.post(
        issuer.introspection_endpoint, data={"token": token, "client_id": public.client["client_id"]}
    )
    for refused in (none, wrong, as_public):
        assert refused.status_code == 401 and refused.json()["error"] == "invalid_client"
        assert refused.headers["www-authenticate"].startswith("Basic")
    for bad in ("not a token", tamper(token), issuer.mint("alice", claims={"iss": "https://elsewhere"})):
        assert introspect(issuer, bad) == {"active": False}


def test_revocation_is_reflected_by_introspection(flow: Flow, issuer: RunningIssuer) -> None:
    body = flow.tokens()
    access, refresh = body["access_token"], body["refresh_token"]
    assert introspect(issuer, refresh, token_type_hint="refresh_token")["token_type"] == "refresh_token"
    revoke = httpx.post(issuer.revocation_endpoint, data={"token": access}, auth=flow.auth)
    assert revoke.status_code == 200
    assert introspect(issuer, access) == {"active": False}
    assert introspect(issuer, refresh)["active"]  # revoking an access token leaves the refresh token
    assert httpx.post(issuer.revocation_endpoint, data={"token": refresh}, auth=flow.auth).status_code == 200
    assert introspect(issuer, refresh) == {"active": False}
    assert flow.refresh(refresh).json()["error"] == "invalid_grant"
    unknown = httpx.post(issuer.revocation_endpoint, data={"token": "never-issued"}, auth=flow.auth)
    assert unknown.status_code == 200  # RFC 7009 §2.2


def test_a_client_may_revoke_only_its_own_tokens(flow: Flow, issuer: RunningIssuer) -> None:
    access = flow.tokens()["access_token"]
    other = Flow(issuer, register(issuer))
    refused = httpx.post(issuer.revocation_endpoint, data={"token": access}, auth=other.auth)
    assert refused.status_code == 400 and refused.json()["error"] == "unauthorized_client"
    assert introspect(issuer, access)["active"]


# -- opaque tokens ---------------------------------------------------------------------------------


def test_opaque_mode_issues_tokens_only_introspection_knows(clock: ManualClock) -> None:
    issuer = start_issuer(clock=clock, opaque=True)
    try:
        response = httpx.post(
            issuer.token_endpoint,
            data={"grant_type": "client_credentials", "scope": "read", "resource": "https://api.example"},
            auth=secret_auth(issuer),
        )
        token = response.json()["access_token"]
        assert "." not in token and len(token) >= 40
        body = introspect(issuer, token)
        assert body["active"] and body["sub"] == "dev-client" and body["aud"] == "https://api.example"
        flow = Flow(issuer, register(issuer))
        code_token = flow.tokens(scope="read")["access_token"]
        assert "." not in code_token and introspect(issuer, code_token)["sub"] == "alice"
        minted = issuer.mint_opaque("zoe", scopes=["read"], lifetime=60)
        assert introspect(issuer, minted)["sub"] == "zoe"
        assert issuer.revoke(minted) and introspect(issuer, minted) == {"active": False}
        expired = issuer.mint_opaque("zoe", expires_at=clock.time() - 1)
        assert introspect(issuer, expired) == {"active": False}
        clock.advance(61)
        assert introspect(issuer, issuer.mint_opaque("zoe", lifetime=60))["active"]
    finally:
        issuer.stop()


def test_a_revocation_store_that_is_full_refuses_rather_than_forgets(clock: ManualClock) -> None:
    from fastapps_auth.dev_issuer.tokens import StoreFull, TokenStore

    store = TokenStore(clock, max_entries=2)
    store.revoke_jti("a", clock.time() + 60)
    store.revoke_jti("b", clock.time() + 120)
    with pytest.raises(StoreFull):
        store.revoke_jti("c", clock.time() + 60)
    assert store.is_revoked("a") and store.is_revoked("b")
    clock.advance(61)  # "a" expired anyway: its place is free
    store.revoke_jti("c", clock.time() + 60)
    assert store.is_revoked("c") and not store.is_revoked("a")
