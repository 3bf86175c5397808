"""The MCP Python SDK's own OAuth clients sign in to the dev issuer, against a live protected server.

``OAuthClientProvider`` starts from nothing (401 -> protected resource metadata -> authorization
server metadata -> registration or a client ID metadata document -> code + PKCE -> token bound to
the server), steps up on a 403, refreshes; ``ClientCredentialsOAuthProvider`` signs in as a
machine. The attacks (wrong verifier, reused code, missing state) are made with the same client.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import ClientSession
from mcp.client.auth import OAuthClientProvider, OAuthFlowError, OAuthTokenError
from mcp.client.auth.extensions.client_credentials import ClientCredentialsOAuthProvider
from mcp.client.streamable_http import streamable_http_client
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from fastapps_auth.dev_issuer import RunningIssuer
from fastapps_auth.testing import BackgroundServer, HeadlessLogin, MemoryStorage, oauth_client, start_issuer
from fastapps_auth.testing.oauth import DEFAULT_REDIRECT_URI
from tests.support.oauth_server import REPORT_SCOPE, ProtectedServer, protected_server
from tests.support.tls import loopback_tls

Seen = list[tuple[str, str, int]]


@pytest.fixture
def issuer() -> Iterator[RunningIssuer]:
    running = start_issuer()
    yield running
    running.stop()


@pytest.fixture
def server(issuer: RunningIssuer) -> Iterator[ProtectedServer]:
    with protected_server(issuer) as srv:
        yield srv


async def session_calls(url: str, auth: httpx.Auth, *tools: str, seen: Seen | None = None) -> list[Any]:
    """One MCP session calling ``tools`` in turn; ``seen`` gets (method, URL without query, status) of each response."""

    async def record(response: httpx.Response) -> None:
        if seen is not None:
            seen.append((response.request.method, str(response.request.url).split("?")[0], response.status_code))

    results = []
    async with (
        httpx.AsyncClient(auth=auth, timeout=15, event_hooks={"response": [record]}) as http,
        streamable_http_client(url, http_client=http) as (read, write, _),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        for tool in tools:
            result = await session.call_tool(tool, {})
            assert not result.isError, result
            results.append(result.structuredContent)
    return results


async def first_request(url: str, auth: httpx.Auth) -> httpx.Response:
    """An MCP ``initialize`` POST through ``auth``: the sign-in happens inside it, errors raise from it."""
    body = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18",
            "capabilities": {}, "clientInfo": {"name": "attack", "version": "0"}}}  # fmt: skip
    async with httpx.AsyncClient(auth=auth, timeout=15) as http:
        return await http.post(url, json=body, headers={"accept": "application/json, text/event-stream"})


async def test_oauth_client_signs_in_from_nothing_with_registration_and_pkce(
    issuer: RunningIssuer, server: ProtectedServer
) -> None:
    login = HeadlessLogin("alice")
    storage = MemoryStorage()
    seen: Seen = []
    [me] = await session_calls(server.url, oauth_client(server.url, login=login, storage=storage), "whoami", seen=seen)
    assert me["subject"] == "alice" and me["aud"] == server.url and me["acr"] == "pwd"
    base = server.url.removesuffix("/mcp")
    assert seen[:5] == [
        ("POST", server.url, 401),
        ("GET", f"{base}/.well-known/oauth-protected-resource/mcp", 200),
        ("GET", f"{issuer.url}/.well-known/oauth-authorization-server", 200),
        ("POST", issuer.registration_endpoint, 201),
        ("POST", issuer.token_endpoint, 200),
    ]
    [request] = login.requests
    assert request["code_challenge_method"] == "S256" and request["resource"] == server.url
    assert login.responses == [{"state": request["state"], "iss": issuer.url}]  # state echoed, RFC 9207 iss
    assert storage.client_info is not None and storage.client_info.client_secret  # a confidential client
    assert storage.tokens is not None and storage.tokens.refresh_token
    active = issuer.introspect(storage.tokens.access_token)
    assert active["active"] and active["client_id"] == storage.client_info.client_id and active["aud"] == server.url


async def test_a_403_with_a_scope_challenge_makes_the_client_step_up(server: ProtectedServer) -> None:
    login = HeadlessLogin("bob")
    seen: Seen = []
    auth = oauth_client(server.url, login=login)
    whoami, report = await session_calls(server.url, auth, "whoami", "report", seen=seen)
    assert whoami["subject"] == "bob" and REPORT_SCOPE not in whoami["scopes"]
    assert report == {"result": "Q3: 42"}
    assert (
        "POST",
        server.url,
        403,
    ) in seen and REPORT_SCOPE in login.requests[-1]["scope"].split()  # re-authorized for the challenged scope
    assert len(login.requests) == 2


async def test_step_up_to_mfa_is_a_new_login_with_acr(server: ProtectedServer) -> None:
    [me] = await session_calls(server.url, oauth_client(server.url, login=HeadlessLogin("carol", acr="mfa")), "whoami")
    assert me["subject"] == "carol" and me["acr"] == "mfa"


async def test_a_client_id_metadata_document_replaces_registration(tmp_path: Path) -> None:
    tls = loopback_tls(tmp_path)
    documents: list[str] = []

    def document_app(base: str) -> Starlette:
        async def client_json(request: Request) -> JSONResponse:
            documents.append(str(request.url))
            return JSONResponse(
                {
                    "client_id": f"{base}/oauth/client.json",
                    "client_name": "a CIMD client",
                    "redirect_uris": [DEFAULT_REDIRECT_URI],
                    "grant_types": ["authorization_code", "refresh_token"],
                    "response_types": ["code"],
                    "token_endpoint_auth_method": "none",
                }
            )

        return Starlette(routes=[Route("/oauth/client.json", client_json)])

    with BackgroundServer(document_app, factory=True, ssl_certfile=tls.certfile, ssl_keyfile=tls.keyfile) as docs:
        issuer = start_issuer(metadata_verify=tls.client_context())
        try:
            with protected_server(issuer) as srv:
                client_id = f"{docs.url}/oauth/client.json"
                storage = MemoryStorage()
                seen: Seen = []
                auth = oauth_client(srv.url, storage=storage, client_metadata_url=client_id)
                [me] = await session_calls(srv.url, auth, "whoami", seen=seen)
        finally:
            issuer.stop()
    assert me["subject"] == "alice"
    assert not any(url.endswith("/register") for _, url, _ in seen)  # no dynamic registration
    assert documents == [client_id]  # fetched once, by the issuer
    assert storage.tokens is not None
    assert issuer.introspect(storage.tokens.access_token)["client_id"] == client_id


async def test_client_credentials_provider_signs_in_as_a_machine(
    issuer: RunningIssuer, server: ProtectedServer
) -> None:
    auth = ClientCredentialsOAuthProvider(
        server.url, MemoryStorage(), issuer.client.client_id, issuer.client.secret, issuer=issuer.url
    )
    [me] = await session_calls(server.url, auth, "whoami")
    assert me["subject"] == "dev-client" and me["aud"] == server.url


async def test_the_client_refreshes_with_rotation(issuer: RunningIssuer, server: ProtectedServer) -> None:
    storage = MemoryStorage()
    login = HeadlessLogin()
    auth = oauth_client(server.url, storage=storage, login=login)
    await session_calls(server.url, auth, "whoami")
    assert storage.tokens is not None and storage.tokens.refresh_token
    first_refresh, first_access = storage.tokens.refresh_token, storage.tokens.access_token
    auth.context.token_expiry_time = 1.0  # as far as the client knows, its access token has expired
    seen: Seen = []
    [me] = await session_calls(server.url, auth, "whoami", seen=seen)
    assert me["subject"] == "alice" and len(login.requests) == 1  # refreshed, no second login
    assert seen[0] == ("POST", issuer.token_endpoint, 200)
    assert storage.tokens.refresh_token and storage.tokens.refresh_token != first_refresh  # rotated
    assert storage.tokens.access_token != first_access
    refreshed = storage.tokens.access_token
    assert issuer.introspect(refreshed)["active"]
    # The old refresh token is spent; presenting it again revokes everything of that login.
    assert storage.client_info is not None and storage.client_info.client_secret is not None
    async with httpx.AsyncClient() as http:
        reuse = await http.post(
            issuer.token_endpoint,
            data={"grant_type": "refresh_token", "refresh_token": first_refresh},
            auth=(storage.client_info.client_id or "", storage.client_info.client_secret),
        )
    assert reuse.status_code == 400 and reuse.json()["error"] == "invalid_grant"
    assert issuer.introspect(refreshed) == {"active": False}
    assert issuer.introspect(storage.tokens.refresh_token) == {"active": False}


class WrongVerifier(OAuthClientProvider):
    """The SDK's client, sending another verifier than the one its challenge was made from."""

    async def _exchange_token_authorization_code(self, auth_code: str, code_verifier: str, **kw: Any) -> httpx.Request:
        return await super()._exchange_token_authorization_code(auth_code, code_verifier[::-1], **kw)


async def test_a_wrong_code_verifier_gets_no_token(server: ProtectedServer) -> None:
    honest = oauth_client(server.url)
    attacker = WrongVerifier(
        server.url,
        honest.context.client_metadata,
        MemoryStorage(),
        honest.context.redirect_handler,
        honest.context.callback_handler,
    )
    with pytest.raises(OAuthTokenError, match="code_verifier does not match"):
        await first_request(server.url, attacker)


class ReplayingLogin(HeadlessLogin):
    """Answers each authorization (its state intact) with the first code it ever got."""

    first_code: str | None = None

    async def callback_handler(self) -> Any:
        result = await super().callback_handler()
        code = result[0] if isinstance(result, tuple) else result.code
        ReplayingLogin.first_code = ReplayingLogin.first_code or code
        if isinstance(result, tuple):
            return ReplayingLogin.first_code, result[1]
        return result.model_copy(update={"code": ReplayingLogin.first_code})


async def test_a_reused_code_fails_and_revokes_what_it_gave(issuer: RunningIssuer, server: ProtectedServer) -> None:
    storage = MemoryStorage()
    login = ReplayingLogin()
    ReplayingLogin.first_code = None
    await session_calls(server.url, oauth_client(server.url, login=login, storage=storage), "whoami")
    assert storage.tokens is not None
    first_token = storage.tokens.access_token
    # A second client run by the same "browser" receives the already redeemed code.
    replay = oauth_client(server.url, login=login, storage=MemoryStorage(client_info=storage.client_info))
    with pytest.raises(OAuthTokenError, match="already used"):
        await first_request(server.url, replay)
    assert issuer.introspect(first_token) == {"active": False}  # RFC 6749 §4.1.2: what the code gave is revoked


class NoState(HeadlessLogin):
    """A callback that comes back without ``state`` (an authorization response the client did not ask for)."""

    async def callback_handler(self) -> Any:
        result = await super().callback_handler()
        return (result[0], None) if isinstance(result, tuple) else result.model_copy(update={"state": None})


async def test_a_callback_without_state_is_refused_by_the_client(server: ProtectedServer) -> None:
    with pytest.raises(OAuthFlowError, match="State parameter mismatch"):
        await first_request(server.url, oauth_client(server.url, login=NoState()))


async def test_an_unknown_user_is_an_error_the_client_sees(server: ProtectedServer) -> None:
    from fastapps_auth.testing import LoginError

    with pytest.raises(LoginError, match="access_denied: login_hint names no dev user"):
        await first_request(server.url, oauth_client(server.url, login=HeadlessLogin("mallory")))
