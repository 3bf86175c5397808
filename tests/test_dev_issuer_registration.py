"""Clients introducing themselves: dynamic client registration (RFC 7591) and client ID metadata documents."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fastapps_auth.dev_issuer import RunningIssuer
from fastapps_auth.dev_issuer.clients import ClientRegistry, configured_client, redirect_matches
from fastapps_auth.dev_issuer.registration import check_client_id_url
from fastapps_auth.testing import BackgroundServer, start_issuer
from fastapps_auth.testing.flow import REDIRECT, Flow, redirect_params, register


@pytest.fixture
def issuer() -> Iterator[RunningIssuer]:
    running = start_issuer()
    yield running
    running.stop()


def test_registration_answers_with_credentials_and_the_metadata(issuer: RunningIssuer) -> None:
    body = register(issuer, client_name="Inspector", scope="read", logo_uri="https://x.example/l.png")
    assert body["client_id"].startswith("dcr-") and len(body["client_secret"]) >= 40
    assert body["client_secret_expires_at"] == 0 and body["token_endpoint_auth_method"] == "client_secret_basic"
    assert body["redirect_uris"] == [REDIRECT] and body["client_name"] == "Inspector" and body["scope"] == "read"
    assert body["grant_types"] == ["authorization_code", "refresh_token"] and body["response_types"] == ["code"]
    public = register(issuer, token_endpoint_auth_method="none")
    assert "client_secret" not in public


@pytest.mark.parametrize(
    ("metadata", "error"),
    [
        ({"redirect_uris": []}, "invalid_redirect_uri"),
        ({"redirect_uris": ["http://evil.example/cb"]}, "invalid_redirect_uri"),  # plain http, not loopback
        ({"redirect_uris": ["https://app.example/cb#frag"]}, "invalid_redirect_uri"),
        ({"redirect_uris": ["javascript:alert(1)"]}, "invalid_redirect_uri"),
        ({"redirect_uris": [REDIRECT] * 11}, "invalid_redirect_uri"),
        ({"redirect_uris": "https://app.example/cb"}, "invalid_client_metadata"),
        ({"grant_types": ["password"]}, "invalid_client_metadata"),
        ({"response_types": ["token"]}, "invalid_client_metadata"),
        ({"token_endpoint_auth_method": "private_key_jwt"}, "invalid_client_metadata"),
        ({"token_endpoint_auth_method": "none", "grant_types": ["client_credentials"]}, "invalid_client_metadata"),
        ({"client_name": 7}, "invalid_client_metadata"),
    ],
)
def test_registrations_that_are_refused(issuer: RunningIssuer, metadata: dict[str, Any], error: str) -> None:
    body = {"redirect_uris": [REDIRECT], **metadata}
    response = httpx.post(issuer.registration_endpoint, json=body)
    assert response.status_code == 400 and response.json()["error"] == error


def test_registration_bodies_are_json_and_bounded(issuer: RunningIssuer) -> None:
    not_json = httpx.post(issuer.registration_endpoint, content=b"{", headers={"content-type": "application/json"})
    wrong_type = httpx.post(issuer.registration_endpoint, data={"redirect_uris": REDIRECT})
    huge = httpx.post(issuer.registration_endpoint, json={"redirect_uris": [REDIRECT], "x": "y" * 20_000})
    for response in (not_json, wrong_type, huge):
        assert response.status_code == 400


def test_native_app_schemes_and_loopback_are_registrable() -> None:
    client = configured_client("app", redirect_uris=["com.example.app:/oauth2redirect", "http://[::1]/cb"])
    assert client.redirect_for("com.example.app:/oauth2redirect") == "com.example.app:/oauth2redirect"
    assert client.redirect_for("com.example.app:/other") is None


_ports = st.integers(1, 65535)


@given(_ports, _ports, st.sampled_from(["127.0.0.1", "[::1]", "localhost", "127.9.8.7"]))
def test_a_loopback_redirect_matches_on_any_port(registered: int, requested: int, host: str) -> None:
    assert redirect_matches(f"http://{host}:{registered}/cb", f"http://{host}:{requested}/cb")
    assert redirect_matches(f"http://{host}/cb", f"http://{host}:{requested}/cb")
    assert not redirect_matches(f"http://{host}:{registered}/cb", f"http://{host}:{requested}/cb2")


@given(_ports, _ports, st.sampled_from(["app.example", "10.0.0.1", "127.attacker.example"]))
def test_any_other_redirect_matches_exactly(registered: int, requested: int, host: str) -> None:
    for scheme in ("http", "https"):
        same = registered == requested
        assert redirect_matches(f"{scheme}://{host}:{registered}/cb", f"{scheme}://{host}:{requested}/cb") is same


def test_the_registry_keeps_the_newest_registrations() -> None:
    registry = ClientRegistry(max_registered=2)
    registry.add(configured_client("static"))
    for i in range(3):
        registry.register(configured_client(f"dcr-{i}"))
    assert [c.client_id for c in registry.all()] == ["static", "dcr-1", "dcr-2"]


# -- client ID metadata documents ---------------------------------------------------------------


@pytest.fixture
def documents() -> Iterator[tuple[str, dict[str, Any]]]:
    """A loopback http server of client metadata documents: path -> what it answers (a dict, or a Response)."""
    answers: dict[str, Any] = {}

    def app(base: str) -> Starlette:
        async def document(request: Request) -> Response:
            answer = answers.get(request.url.path)
            if isinstance(answer, Response):
                return answer
            if answer is None:
                return Response(status_code=404)
            return JSONResponse({"client_id": f"{base}{request.url.path}", **answer})

        return Starlette(routes=[Route("/{path:path}", document)])

    with BackgroundServer(app, factory=True) as server:
        yield server.url, answers


GOOD = {
    "redirect_uris": [REDIRECT],
    "grant_types": ["authorization_code", "refresh_token"],
    "token_endpoint_auth_method": "none",
    "client_name": "CIMD app",
}


def test_a_metadata_document_client_signs_in_without_registering(
    issuer: RunningIssuer, documents: tuple[str, dict[str, Any]]
) -> None:
    base, answers = documents
    answers["/app/client.json"] = GOOD
    client_id = f"{base}/app/client.json"
    flow = Flow(issuer, {"client_id": client_id})
    page = flow.authorize(login_hint=None)
    assert page.status_code == 200 and "CIMD app" in page.text  # the login page names the document's client
    body = flow.tokens()
    assert issuer.introspect(body["access_token"])["client_id"] == client_id
    assert flow.refresh(body["refresh_token"]).status_code == 200


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ({"redirect_uris": ["https://elsewhere.example/cb"]}, "redirect_uri is missing or not registered"),
        ({"redirect_uris": [REDIRECT], "client_id": "https://other.example/c"}, "must be its own URL"),
        ({"redirect_uris": [REDIRECT], "client_secret": "s"}, "holds no client_secret"),
        ({"redirect_uris": [REDIRECT], "token_endpoint_auth_method": "client_secret_basic"}, "authenticates with"),
        (Response("{", media_type="application/json"), "is not JSON"),
        (Response(b"[" * 70_000, media_type="application/json"), "is over 65536 bytes"),
        (Response(status_code=302, headers={"location": "https://evil.example/c.json"}), "answered HTTP 302"),
        (None, "answered HTTP 404"),
    ],
)
def test_metadata_documents_that_are_refused(
    issuer: RunningIssuer, documents: tuple[str, dict[str, Any]], answer: Any, message: str
) -> None:
    base, answers = documents
    if answer is not None:
        answers["/c.json"] = answer
    response = Flow(issuer, {"client_id": f"{base}/c.json"}).authorize()
    assert response.status_code == 400 and "location" not in response.headers
    assert message in response.text


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://example.com/client.json", "must be an https URL"),
        ("https://app.example", "has a path"),
        ("https://app.example/", "has a path"),
        ("https://user@app.example/c.json", "no user info"),
        ("https://app.example/a/../c.json", "no . or .. segments"),
    ],
)
def test_client_id_urls_follow_the_draft(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_client_id_url(url)
    assert check_client_id_url("https://app.example/oauth/client.json")


def test_a_document_is_fetched_once_per_ttl(issuer: RunningIssuer, documents: tuple[str, dict[str, Any]]) -> None:
    base, answers = documents
    answers["/once.json"] = GOOD
    flow = Flow(issuer, {"client_id": f"{base}/once.json"})
    assert "code" in redirect_params(flow.authorize())
    answers["/once.json"] = {"redirect_uris": ["https://changed.example/cb"]}  # cached: not seen yet
    assert "code" in redirect_params(flow.authorize())


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b'{"redirect_uris": ["http://127.0.0.1/callback"], "client_name": "a", "client_name": "b"}', "duplicate"),
        (b'{"redirect_uris": ["http://127.0.0.1/callback"], "x": NaN}', "NaN"),
        (b'{"redirect_uris": ["http://127.0.0.1/callback"], "client_name": "\\ud800"}', "surrogate"),
        (b"[]", "not a JSON object"),
    ],
)
def test_registration_bodies_are_read_as_strict_json(issuer: RunningIssuer, raw: bytes, why: str) -> None:
    response = httpx.post(issuer.registration_endpoint, content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 400 and response.json()["error"] == "invalid_client_metadata"
    assert why in response.json()["error_description"]
