"""The dev issuer's authorization endpoint over HTTP: metadata, PKCE, redirect URIs, state, login, codes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import KeySet, KeySetSerialization
from mcp.shared.auth import OAuthMetadata

from fastapps_auth.clock import ManualClock
from fastapps_auth.dev_issuer import RunningIssuer
from fastapps_auth.testing import start_issuer
from fastapps_auth.testing.flow import REDIRECT, Flow, redirect_params, register


@pytest.fixture
def issuer(clock: ManualClock) -> Iterator[RunningIssuer]:
    running = start_issuer(clock=clock, users=["alice", "bob", "mallory=read"])
    yield running
    running.stop()


@pytest.fixture
def flow(issuer: RunningIssuer) -> Flow:
    return Flow(issuer, register(issuer))


def claims(issuer: RunningIssuer, token: str) -> dict[str, Any]:
    keys = KeySet.import_key_set(cast(KeySetSerialization, issuer.jwks()))
    return dict(jwt.decode(token, keys, algorithms=["RS256", "ES256"]).claims)


def test_metadata_has_everything_both_sdks_need(issuer: RunningIssuer) -> None:
    for path in ("/.well-known/oauth-authorization-server", "/.well-known/openid-configuration"):
        meta = httpx.get(issuer.url + path).json()
        assert meta["issuer"] == issuer.url
        endpoints = {"authorization": "authorize", "token": "token", "registration": "register",
                     "introspection": "introspect", "revocation": "revoke"}  # fmt: skip
        for name, path in endpoints.items():
            assert meta[f"{name}_endpoint"] == f"{issuer.url}/{path}"
        assert meta["jwks_uri"] == issuer.jwks_uri
        assert meta["response_types_supported"] == ["code"]
        assert {"authorization_code", "refresh_token", "client_credentials"} <= set(meta["grant_types_supported"])
        assert meta["code_challenge_methods_supported"] == ["S256"]
        methods = {"none", "client_secret_basic", "client_secret_post"}
        assert set(meta["token_endpoint_auth_methods_supported"]) == methods
        assert meta["scopes_supported"] and meta["client_id_metadata_document_supported"] is True
        assert meta["subject_types_supported"] and meta["id_token_signing_alg_values_supported"]  # OIDC, for the TS SDK
        OAuthMetadata.model_validate(meta)  # the Python SDK's own model accepts it
    preflight = httpx.options(
        issuer.token_endpoint,
        headers={"origin": "http://localhost:6274", "access-control-request-method": "POST"},
    )
    assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == "*"


def test_a_code_flow_gives_a_token_for_the_resource_with_state_and_iss(flow: Flow, issuer: RunningIssuer) -> None:
    answer = redirect_params(flow.authorize(resource="https://mcp.example/mcp", scope="read write", state="xyz 1"))
    assert answer["state"] == "xyz 1" and answer["iss"] == issuer.url and answer["code"]
    response = flow.token(answer["code"], resource="https://mcp.example/mcp")
    assert response.status_code == 200 and response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["token_type"] == "Bearer" and body["scope"] == "read write" and body["refresh_token"]
    got = claims(issuer, body["access_token"])
    assert got["aud"] == "https://mcp.example/mcp" and got["sub"] == "alice"
    assert got["client_id"] == flow.client["client_id"] and got["scope"] == "read write"
    assert got["acr"] == "pwd" and got["auth_time"] == int(issuer.issuer.clock.time())  # type: ignore[union-attr]


def test_no_state_means_no_state_in_the_answer(flow: Flow) -> None:
    assert "state" not in redirect_params(flow.authorize(state=None))


def test_two_resources_make_a_list_audience_and_a_token_may_narrow_it(flow: Flow, issuer: RunningIssuer) -> None:
    code = flow.code(resource=["https://a.example/mcp", "https://b.example/api"])
    both = flow.token(code).json()
    assert claims(issuer, both["access_token"])["aud"] == ["https://a.example/mcp", "https://b.example/api"]
    narrowed = flow.refresh(both["refresh_token"], resource="https://b.example/api").json()
    assert claims(issuer, narrowed["access_token"])["aud"] == "https://b.example/api"
    other = flow.refresh(narrowed["refresh_token"], resource="https://c.example/")
    assert other.status_code == 400 and other.json()["error"] == "invalid_target"


@pytest.mark.parametrize(
    ("params", "error"),
    [
        ({"code_challenge_method": "plain"}, "code_challenge_method must be S256"),
        ({"code_challenge_method": None}, "code_challenge_method must be S256"),
        ({"code_challenge": None}, "code_challenge is required"),
        ({"code_challenge": "short"}, "43-character"),
        ({"response_type": "token"}, 'response_type must be "code"'),
        ({"resource": "not a uri"}, "resource must be an absolute URI"),
        ({"login_hint": "nobody"}, "login_hint names no dev user"),
    ],
)
def test_bad_requests_go_back_to_the_client_with_the_error(flow: Flow, params: dict[str, Any], error: str) -> None:
    answer = redirect_params(flow.authorize(**params))
    assert "code" not in answer and answer["state"] == "s-1"
    assert error in answer["error_description"]


@pytest.mark.parametrize(
    ("registered", "requested", "allowed"),
    [
        (REDIRECT, "http://127.0.0.1:54321/callback", True),  # a loopback port may vary (RFC 8252 §7.3)
        ("http://[::1]/cb", "http://[::1]:8080/cb", True),
        (REDIRECT, "http://localhost:54321/callback", False),  # another host
        (REDIRECT, "http://127.0.0.1:54321/other", False),  # another path
        (REDIRECT, "http://evil.example/callback", False),
        ("https://app.example/cb", "https://app.example:8443/cb", False),  # another port, not loopback
        ("https://app.example/cb", "https://evil.example/cb", False),
        ("https://app.example/cb", "https://app.example/cb?x=1", False),
        ("https://app.example/cb", "https://user@app.example/cb", False),
    ],
)
def test_redirect_uris_match_exactly_but_for_loopback_ports(
    issuer: RunningIssuer, registered: str, requested: str, allowed: bool
) -> None:
    flow = Flow(issuer, register(issuer, redirect_uris=[registered]))
    response = flow.authorize(redirect_uri=requested)
    if allowed:
        assert response.status_code == 302 and response.headers["location"].startswith(requested + "?")
    else:  # never redirected anywhere (RFC 6749 §4.1.2.1): an error page for the user
        assert response.status_code == 400 and "location" not in response.headers
        assert "redirect_uri is missing or not registered" in response.text


def test_the_token_request_must_repeat_the_redirect_uri(flow: Flow) -> None:
    code = flow.code(redirect_uri="http://127.0.0.1:4000/callback")
    response = flow.token(code, redirect_uri=REDIRECT)  # not the port the code went to
    assert response.status_code == 400 and "redirect_uri" in response.json()["error_description"]


def test_codes_are_single_use_short_lived_and_bound_to_their_client(
    flow: Flow, issuer: RunningIssuer, clock: ManualClock
) -> None:
    code = flow.code()
    assert flow.token(code).status_code == 200
    again = flow.token(code)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    late = flow.code()
    clock.advance(61)
    assert flow.token(late).json()["error_description"] == "the code is unknown, expired or already used"
    other = Flow(issuer, register(issuer))
    stolen = flow.code()
    response = other.token(stolen, code_verifier=flow.verifier)
    assert response.json()["error_description"] == "the code was issued to another client"


def test_a_wrong_or_missing_verifier_gets_no_token(flow: Flow) -> None:
    wrong = flow.token(flow.code(), code_verifier="x" * 43).json()
    assert wrong == {"error": "invalid_grant", "error_description": "code_verifier does not match the code_challenge"}
    missing = flow.token(flow.code(), code_verifier=None).json()
    assert missing["error"] == "invalid_grant" and "missing" in missing["error_description"]


def test_scopes_are_limited_to_what_the_user_may_have(flow: Flow, issuer: RunningIssuer) -> None:
    body = flow.tokens(login_hint="mallory", scope="read write")
    assert body["scope"] == "read"  # RFC 6749 §3.3: the answer says what was granted
    assert claims(issuer, body["access_token"])["scope"] == "read"
    refused = flow.refresh(body["refresh_token"], scope="read write")
    assert refused.json()["error"] == "invalid_scope"


def test_the_login_page_lists_the_users_and_sets_acr(flow: Flow, issuer: RunningIssuer) -> None:
    page = flow.authorize(login_hint=None, scope="read", acr_values="mfa")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert "Development server" in page.text
    for user in ("alice", "bob", "mallory"):
        assert f'name="user" value="{user}"' in page.text
    assert 'value="mfa" checked' in page.text  # the requested acr is preselected
    request_id = page.text.split('name="request_id" value="')[1].split('"')[0]
    login = httpx.post(f"{issuer.url}/login", data={"request_id": request_id, "user": "bob", "acr": "mfa"})
    answer = redirect_params(login)
    assert login.status_code == 303 and answer["state"] == "s-1"
    got = claims(issuer, flow.token(answer["code"]).json()["access_token"])
    assert got["sub"] == "bob" and got["acr"] == "mfa"
    replay = httpx.post(f"{issuer.url}/login", data={"request_id": request_id, "user": "alice"})
    assert replay.status_code == 400 and "expired or was used" in replay.text


def test_prompt_none_without_a_user_is_login_required(flow: Flow) -> None:
    assert redirect_params(flow.authorize(login_hint=None, prompt="none"))["error"] == "login_required"


def test_auto_login_signs_every_request_in(clock: ManualClock) -> None:
    issuer = start_issuer(clock=clock, auto_login="bob")
    try:
        token = Flow(issuer, register(issuer)).tokens(login_hint=None)["access_token"]
    finally:
        issuer.stop()
    assert claims(issuer, token)["sub"] == "bob"
    with pytest.raises(ValueError, match="not one of the users"):
        start_issuer(auto_login="nobody")


def test_openid_scope_adds_an_id_token_for_the_client(flow: Flow, issuer: RunningIssuer) -> None:
    body = flow.tokens(scope="openid", nonce="n-0S6")
    keys = KeySet.import_key_set(cast(KeySetSerialization, issuer.jwks()))
    id_token = jwt.decode(body["id_token"], keys, algorithms=["RS256"])
    assert id_token.header["typ"] == "JWT"
    assert id_token.claims["aud"] == flow.client["client_id"] and id_token.claims["nonce"] == "n-0S6"
    assert issuer.introspect(body["id_token"]) == {"active": False}  # not an access token


def test_requests_the_user_must_see(issuer: RunningIssuer, flow: Flow) -> None:
    cases: list[dict[str, Any]] = [{"client_id": "nobody"}, {"client_id": None}]
    for params in cases:
        response = flow.authorize(**params)
        assert response.status_code == 400 and "location" not in response.headers
    repeated = httpx.get(
        issuer.authorization_endpoint + f"?client_id={flow.client['client_id']}&state=a&state=b&response_type=code"
    )
    assert repeated.status_code == 400 and "state is given more than once" in repeated.text


def test_the_login_page_escapes_what_clients_say(issuer: RunningIssuer) -> None:
    flow = Flow(issuer, register(issuer, client_name='<script>alert("x")</script>'))
    page = flow.authorize(login_hint=None, scope="<b>")
    assert "<script>" not in page.text and "&lt;script&gt;" in page.text and "&lt;b&gt;" in page.text


async def test_a_headless_login_without_a_user_meets_the_login_page(flow: Flow) -> None:
    from fastapps_auth.testing import HeadlessLogin, LoginError

    url = str(flow.authorize(login_hint=None).request.url)
    with pytest.raises(LoginError, match="answered HTTP 200, not a redirect"):
        await HeadlessLogin(user=None).redirect_handler(url)
