"""DPoP over real HTTP through ``ChainAuthMiddleware``: uvicorn on 127.0.0.1, httpx and the MCP client,
proofs from ``fastapps_auth.testing.dpop``, bound tokens (``cnf.jkt``) from ``fastapps_auth.testing``'s issuer.

The middleware accepts ``Authorization: DPoP``, passes method, public URL and every ``DPoP`` header to
the stage with no option of its own, answers with both challenges and sends ``DPoP-Nonce``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.server.fastmcp import FastMCP
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from fastapps_auth import VerifierChain
from fastapps_auth.dev_issuer import RunningIssuer
from fastapps_auth.dev_issuer.server import BackgroundServer
from fastapps_auth.integrations.asgi import ChainAuthMiddleware, current_access_token
from fastapps_auth.integrations.mcp import protect
from fastapps_auth.stages.dpop import DPoPStage
from fastapps_auth.testing import jwt_stage, start_issuer
from fastapps_auth.testing.dpop import DPoPKey
from tests.support.dpop_client import dpop_auth

ALGS = "ES256 ES384 RS256 PS256 EdDSA"
AUDIENCE = "https://mcp.example.com/mcp"


@pytest.fixture(scope="module")
def issuer() -> Iterator[RunningIssuer]:
    running = start_issuer(audience=AUDIENCE)
    yield running
    running.stop()


async def whoami(request: Request) -> JSONResponse:
    at = current_access_token()
    return JSONResponse({"sub": at.subject if at is not None else None})


def app_for(issuer: RunningIssuer, *stages: Any, **options: Any) -> tuple[Any, VerifierChain]:
    chain = VerifierChain(jwt_stage(issuer), *stages)
    app = Starlette(routes=[Route("/mcp", whoami, methods=["GET", "POST"])])
    app.add_middleware(ChainAuthMiddleware, chain=chain, **options)
    return app, chain


@pytest.fixture
def server(request: pytest.FixtureRequest, issuer: RunningIssuer) -> Iterator[str]:
    app, chain = app_for(issuer, DPoPStage(**getattr(request, "param", {})), resource_metadata_url="https://m/x")
    with BackgroundServer(app, lifespan="off", on_stop=[chain.aclose]) as srv:
        yield srv.url + "/mcp"


def bound(issuer: RunningIssuer, key: DPoPKey, subject: str = "alice") -> str:
    return issuer.mint(subject, claims={"cnf": key.cnf})


def test_a_proof_passes_once_and_its_replay_is_refused_on_the_dpop_challenge(
    server: str, issuer: RunningIssuer
) -> None:
    key = DPoPKey.generate()
    token = bound(issuer, key)
    headers = key.headers("POST", server, token)
    with httpx.Client(timeout=10) as http:
        ok = http.post(server + "?session=1", headers=headers)  # htu has no query
        again = http.post(server, headers=headers)
    assert ok.status_code == 200 and ok.json() == {"sub": "alice"}
    assert again.status_code == 401 and again.json()["error"] == "invalid_dpop_proof"
    assert again.headers.get_list("www-authenticate") == [
        'Bearer resource_metadata="https://m/x"',
        f'DPoP error="invalid_dpop_proof", error_description="the DPoP proof was already used", algs="{ALGS}"',
    ]


def test_a_stolen_bound_token_is_useless_as_bearer_and_with_the_thiefs_key(server: str, issuer: RunningIssuer) -> None:
    token = bound(issuer, DPoPKey.generate())
    thief = DPoPKey.generate()
    with httpx.Client(timeout=10) as http:
        as_bearer = http.post(server, headers={"Authorization": f"Bearer {token}"})
        with_own_key = http.post(server, headers=thief.headers("POST", server, token))
        none = http.post(server)
    assert as_bearer.status_code == 401
    bearer, dpop = as_bearer.headers.get_list("www-authenticate")
    assert bearer.startswith('Bearer error="invalid_token", error_description="a DPoP-bound token must be sent')
    assert dpop == f'DPoP algs="{ALGS}"'
    assert with_own_key.status_code == 401
    www = with_own_key.headers.get_list("www-authenticate")
    assert www[0] == 'Bearer resource_metadata="https://m/x"' and www[1].startswith('DPoP error="invalid_token"')
    assert none.headers.get_list("www-authenticate") == [www[0], f'DPoP algs="{ALGS}"']


def test_two_proofs_a_proof_for_another_url_or_method(server: str, issuer: RunningIssuer) -> None:
    key = DPoPKey.generate()
    token = bound(issuer, key)
    with httpx.Client(timeout=10) as http:
        two = http.post(
            server,
            headers=[
                ("Authorization", f"DPoP {token}"),
                ("DPoP", key.proof("POST", server, token)),
                ("DPoP", key.proof("POST", server, token)),
            ],
        )
        elsewhere = http.post(server, headers=key.headers("POST", server.replace("/mcp", "/other"), token))
        other_method = http.post(server, headers=key.headers("GET", server, token))
        get = http.get(server, headers=key.headers("GET", server, token))
    assert 'error_description="the request carries more than one DPoP proof"' in two.headers["www-authenticate"]
    assert elsewhere.status_code == other_method.status_code == 401
    assert "another URL" in elsewhere.json()["error_description"]
    assert "another HTTP method" in other_method.json()["error_description"]
    assert get.status_code == 200


@pytest.mark.parametrize("server", [{"nonce": True}], indirect=True)
def test_the_nonce_dance(server: str, issuer: RunningIssuer) -> None:
    key = DPoPKey.generate()
    token = bound(issuer, key)
    with httpx.Client(timeout=10) as http:
        first = http.post(server, headers=key.headers("POST", server, token))
        nonce = first.headers["dpop-nonce"]
        second = http.post(server, headers=key.headers("POST", server, token, nonce=nonce))
        bearer = http.post(server, headers={"Authorization": f"Bearer {issuer.mint('bob')}"})
    assert first.status_code == 401 and 'DPoP error="use_dpop_nonce"' in first.headers["www-authenticate"]
    assert second.status_code == 200 and second.headers["dpop-nonce"] == nonce
    assert bearer.status_code == 200 and "dpop-nonce" not in bearer.headers  # the Bearer scheme has no nonces


def test_the_public_url_behind_a_trusted_proxy(issuer: RunningIssuer) -> None:
    key = DPoPKey.generate()
    token = bound(issuer, key)
    public = "https://mcp.example.com/mcp"
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "mcp.example.com"}
    trusting, chain = app_for(issuer, DPoPStage(), trusted_proxies=["127.0.0.1"])
    untrusting, other = app_for(issuer, DPoPStage())
    with (
        BackgroundServer(trusting, lifespan="off", on_stop=[chain.aclose]) as behind,
        BackgroundServer(untrusting, lifespan="off", on_stop=[other.aclose]) as direct,
        httpx.Client(timeout=10) as http,
    ):
        ok = http.post(behind.url + "/mcp", headers={**key.headers("POST", public, token), **forwarded})
        spoofed = http.post(direct.url + "/mcp", headers={**key.headers("POST", public, token), **forwarded})
    assert ok.status_code == 200
    assert spoofed.status_code == 401 and "another URL" in spoofed.json()["error_description"]


def test_without_a_dpop_stage_the_dpop_scheme_is_no_credential(issuer: RunningIssuer) -> None:
    key = DPoPKey.generate()
    app, chain = app_for(issuer)
    with BackgroundServer(app, lifespan="off", on_stop=[chain.aclose]) as srv, httpx.Client(timeout=10) as http:
        url = srv.url + "/mcp"
        refused = http.post(url, headers=key.headers("POST", url, issuer.mint("alice")))
    assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"


@pytest.fixture
async def mcp_server(issuer: RunningIssuer) -> AsyncIterator[str]:
    chain = VerifierChain(jwt_stage(issuer), DPoPStage(mode="required", nonce=True))
    mcp = FastMCP("dpop")

    @mcp.tool()
    def who() -> str:
        at = current_access_token()
        return f"{at.subject if at else None} {(at.claims or {}).get('cnf') if at else None}"

    app = protect(mcp.streamable_http_app(), chain, server=mcp)
    with BackgroundServer(app, on_stop=[chain.aclose]) as srv:
        yield srv.url


async def test_the_mcp_client_calls_a_tool_with_dpop(mcp_server: str, issuer: RunningIssuer) -> None:
    key = DPoPKey.generate()
    auth = dpop_auth(httpx.Auth, key, bound(issuer, key, "carol"))
    async with (
        httpx.AsyncClient(auth=auth, timeout=30) as http,
        streamable_http_client(f"{mcp_server}/mcp", http_client=http) as (read, write, _),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        result = await session.call_tool("who", {})
    assert not result.isError
    assert result.content[0].text == f"carol {key.cnf}"  # type: ignore[union-attr]
    assert auth.proofs >= 3  # one per request: initialize, initialized, tools/call (and the nonce retry)


async def test_the_mcp_client_with_an_unbound_token_is_refused_when_dpop_is_required(
    mcp_server: str, issuer: RunningIssuer
) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        refused = await http.post(
            f"{mcp_server}/mcp",
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
            headers={"Authorization": f"Bearer {issuer.mint('dave')}", "Accept": "application/json, text/event-stream"},
        )
    assert refused.status_code == 401
    assert refused.json()["error_description"] == "this server accepts only DPoP-bound tokens"
    assert refused.headers.get_list("www-authenticate")[1] == f'DPoP algs="{ALGS}"'


async def test_a_websocket_opened_with_dpop_checks_its_one_proof_once(issuer: RunningIssuer) -> None:
    """The handshake proves possession for the connection; each message is decided without replaying the proof."""
    from starlette.routing import WebSocketRoute
    from websockets.asyncio.client import connect

    from tests.hosts.support import INITIALIZE, rpc
    from tests.test_integration_transports import INITIALIZED, WebsocketMCP, exchange, mcp_server

    ran: list[str] = []
    server = mcp_server(ran)
    chain = VerifierChain(jwt_stage(issuer), DPoPStage(mode="required"))
    app = protect(Starlette(routes=[WebSocketRoute("/ws", WebsocketMCP(server))]), chain, server=server)
    key = DPoPKey.generate()
    token = bound(issuer, key, "erin")
    with BackgroundServer(app, on_stop=[chain.aclose]) as srv:
        url = srv.url.replace("http", "ws") + "/ws"
        headers = key.headers("GET", url, token)
        async with connect(url, subprotocols=["mcp"], additional_headers=headers) as ws:  # type: ignore[list-item]
            assert "result" in await exchange(ws, INITIALIZE)
            await ws.send(json.dumps(INITIALIZED))
            first = await exchange(ws, rpc("tools/call", {"name": "echo", "arguments": {"text": "a"}}, id=2))
            second = await exchange(ws, rpc("tools/call", {"name": "echo", "arguments": {"text": "b"}}, id=3))
        with pytest.raises(Exception, match="401"):
            async with connect(url, subprotocols=["mcp"], additional_headers=headers):  # type: ignore[list-item]
                pass  # the same handshake proof again is a replay
    assert first["result"]["content"][0]["text"] == "a" and second["result"]["content"][0]["text"] == "b"
    assert ran == ["echo", "echo"]


def test_an_opaque_dpop_bound_token_from_introspection() -> None:
    """``cnf.jkt`` from the introspection response binds an opaque token as a JWT's claim does."""
    from tests.support.introspection import opaque_issuer, stage

    key = DPoPKey.generate()
    with opaque_issuer(audience=AUDIENCE) as opaque:
        chain = VerifierChain(stage(opaque), DPoPStage())
        app = Starlette(routes=[Route("/mcp", whoami, methods=["POST"])])
        app.add_middleware(ChainAuthMiddleware, chain=chain)
        token = opaque.mint_opaque("frank", claims={"cnf": key.cnf})
        with BackgroundServer(app, lifespan="off", on_stop=[chain.aclose]) as srv, httpx.Client(timeout=10) as http:
            url = srv.url + "/mcp"
            ok = http.post(url, headers=key.headers("POST", url, token))
            as_bearer = http.post(url, headers={"Authorization": f"Bearer {token}"})
    assert ok.status_code == 200 and ok.json() == {"sub": "frank"}
    assert as_bearer.status_code == 401 and "must be sent with the DPoP scheme" in as_bearer.json()["error_description"]
