"""ChainAuthMiddleware against hostile or unusual clients and deployments: each test is a bug that was found.

Every test runs the real middleware and a real chain; the ASGI messages are driven
directly where the HTTP client would hide the case (a disconnect, a websocket, a root path).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, ClassVar

import httpx
import pytest
from mcp.server.auth.middleware.bearer_auth import BearerAuthBackend
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.websockets import WebSocket

from fastapps_auth import AccessToken, Rejected, Stage, Verification, VerifierChain
from fastapps_auth.component import ComponentOptions
from fastapps_auth.integrations.starlette import (
    ChainAuthMiddleware,
    RequestScopedVerifier,
    client_ip,
    current_access_token,
    parse_networks,
)
from fastapps_auth.stage import StageOptions
from fastapps_auth.stages.scopes import ScopesStage
from tests.hosts.support import AsyncServer

Message = dict[str, Any]


class ExactAuth(Stage[StageOptions]):
    """Accepts exactly the token ``good`` (a JWT stage is as strict); ``inf`` is rate limited forever."""

    plugin_name: ClassVar[str] = "exact-auth"
    options_model: ClassVar[type[ComponentOptions]] = StageOptions
    authenticates: ClassVar[bool] = True

    def __init__(self) -> None:
        super().__init__()
        self.tokens: list[str] = []

    async def __call__(self, v: Verification) -> None:
        self.tokens.append(v.token)
        if v.token == "inf":
            raise Rejected("rate_limited", "too many requests", error="rate_limited", status=429, retry_after=1e400)
        if v.token != "good":
            raise Rejected("bad_signature", "the token signature is invalid")
        v.access_token = AccessToken(token="fp", client_id="c", scopes=["read"], subject="alice", claims={})


@pytest.fixture
def auth() -> ExactAuth:
    return ExactAuth()


async def whoami(request: Request) -> JSONResponse:
    at = current_access_token()
    return JSONResponse({"subject": at.subject if at else None, "body": (await request.body()).decode()})


def app_with(chain: VerifierChain, **options: Any) -> Starlette:
    routes = [Route(p, whoami, methods=["GET", "POST"]) for p in ("/mcp", "/public", "/public-admin", "/public/x")]
    return Starlette(routes=routes, middleware=[Middleware(ChainAuthMiddleware, chain=chain, **options)])


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def drive(app: Any, scope: dict[str, Any], incoming: Sequence[Message]) -> list[Message]:
    """Call ``app`` once with ``scope``; ``receive`` yields ``incoming`` in order; returns what it sent."""
    pending = list(incoming)
    sent: list[Message] = []

    async def receive() -> Message:
        return pending.pop(0)

    async def send(message: Message) -> None:
        sent.append(dict(message))

    await app(scope, receive, send)
    return sent


def http_scope(path: str, headers: Sequence[tuple[bytes, bytes]] = (), **extra: Any) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": list(headers),
        "client": ("127.0.0.1", 1234),
        "server": ("test", 80),
        **extra,
    }


# -- paths --------------------------------------------------------------------------------------


async def test_a_mounted_app_is_protected_under_its_mount(auth: ExactAuth) -> None:
    """``paths`` name the app's own routes: mounted at ``/api`` (the scope keeps the full path), ``/mcp`` is meant."""
    inner = app_with(VerifierChain(auth), paths=["/mcp"])
    outer = Starlette(routes=[Mount("/api", app=inner)])
    async with client(outer) as c:
        anonymous = await c.get("/api/mcp")
        good = await c.get("/api/mcp", headers={"Authorization": "Bearer good"})
    assert anonymous.status_code == 401
    assert good.status_code == 200 and good.json()["subject"] == "alice"


async def test_a_root_path_from_the_server_does_not_unprotect_paths(auth: ExactAuth) -> None:
    """``uvicorn --root-path /api`` puts the prefix in ``scope["path"]``; routing strips it, so must we."""
    app = app_with(VerifierChain(auth), paths=["/mcp"])
    sent = await drive(app, http_scope("/api/mcp", root_path="/api"), [{"type": "http.request", "body": b""}])
    assert sent[0]["status"] == 401
    # a paths list written against the full path keeps protecting it
    full = app_with(VerifierChain(auth), paths=["/api/mcp"])
    sent = await drive(full, http_scope("/api/mcp", root_path="/api"), [{"type": "http.request", "body": b""}])
    assert sent[0]["status"] == 401


async def test_exempt_prefixes_end_at_a_path_segment(auth: ExactAuth) -> None:
    """``exempt=["/public"]`` exempts ``/public`` and what is under it, not ``/public-admin``."""
    async with client(app_with(VerifierChain(auth), exempt=["/public"])) as c:
        assert (await c.get("/public")).status_code == 200
        assert (await c.get("/public/x")).status_code == 200
        assert (await c.get("/public-admin")).status_code == 401
        assert (await c.get("/mcp")).status_code == 401


# -- the body -----------------------------------------------------------------------------------


async def test_a_client_that_disconnects_mid_body_runs_nothing(auth: ExactAuth) -> None:
    """The part before a disconnect can be a complete JSON-RPC call; it must not be replayed as the whole body."""
    reached: list[bytes] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        reached.append((await receive())["body"])

    middleware = ChainAuthMiddleware(app, VerifierChain(auth))
    call = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "delete_all"}})
    headers = [(b"authorization", b"Bearer good"), (b"content-type", b"application/json")]
    sent = await drive(
        middleware,
        http_scope("/mcp", headers),
        [{"type": "http.request", "body": call.encode(), "more_body": True}, {"type": "http.disconnect"}],
    )
    assert reached == [] and sent == []
    assert auth.tokens == []  # nor a decision, a rate-limit count or an audit line for a request never made


async def test_a_body_in_several_messages_is_read_whole_and_bounded_across_them(auth: ExactAuth) -> None:
    reached: list[bytes] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        reached.append((await receive())["body"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    call = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "t"}}).encode()
    parts = [call[:10], call[10:40], call[40:]]
    headers = [(b"authorization", b"Bearer good"), (b"content-type", b"application/json")]
    incoming = [{"type": "http.request", "body": p, "more_body": i < 2} for i, p in enumerate(parts)]
    sent = await drive(ChainAuthMiddleware(app, VerifierChain(auth)), http_scope("/mcp", headers), incoming)
    assert sent[0]["status"] == 200 and reached == [call]
    small = ChainAuthMiddleware(app, VerifierChain(auth), max_body_bytes=len(call) - 1)
    sent = await drive(small, http_scope("/mcp", headers), incoming)
    assert sent[0]["status"] == 413 and reached == [call]  # the second app never ran


# -- the Authorization header ---------------------------------------------------------------------


async def test_several_spaces_after_bearer_run_the_chain_once_behind_the_sdk_backend(auth: ExactAuth) -> None:
    """RFC 7235 allows ``Bearer  tok``; the SDK's backend keeps the extra space, which must still match."""
    chain = VerifierChain(auth)
    backend = BearerAuthBackend(RequestScopedVerifier(chain))

    async def sdk_user(request: Request) -> JSONResponse:
        return JSONResponse({"authenticated": request.user.is_authenticated})

    app = Starlette(
        routes=[Route("/mcp", sdk_user)],
        middleware=[
            Middleware(ChainAuthMiddleware, chain=chain),
            Middleware(AuthenticationMiddleware, backend=backend),
        ],
    )
    async with client(app) as c:
        r = await c.get("/mcp", headers={"Authorization": "Bearer   good"})
    assert r.status_code == 200 and r.json()["authenticated"] is True
    assert auth.tokens == ["good"]


# -- responses ----------------------------------------------------------------------------------


async def test_a_non_finite_retry_after_is_answered_not_raised(auth: ExactAuth) -> None:
    """A stage's ``retry_after`` of infinity is capped (RFC 9111's 2**31), not an OverflowError and a 500."""
    async with client(app_with(VerifierChain(auth))) as c:
        r = await c.get("/mcp", headers={"Authorization": "Bearer inf"})
    assert r.status_code == 429
    assert r.headers["retry-after"] == str(2**31)


# -- websockets -----------------------------------------------------------------------------------


async def hello(websocket: WebSocket) -> None:
    await websocket.accept()
    at = current_access_token()
    await websocket.send_text(at.subject if at and at.subject else "anonymous")
    await websocket.close()


def ws_app(chain: VerifierChain, **options: Any) -> Starlette:
    return Starlette(
        routes=[WebSocketRoute("/mcp/ws", hello), Route("/public", lambda r: PlainTextResponse("ok"))],
        middleware=[Middleware(ChainAuthMiddleware, chain=chain, **options)],
    )


async def test_websockets_are_authenticated_like_http(auth: ExactAuth) -> None:
    """A websocket route behind the middleware was reachable with no token at all."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    async with AsyncServer(ws_app(VerifierChain(auth))) as srv:
        url = srv.url.replace("http", "ws") + "/mcp/ws"
        refused: list[tuple[int, str]] = []
        for headers in ({}, {"Authorization": "Bearer forged"}):
            with pytest.raises(InvalidStatus) as err:
                async with connect(url, additional_headers=headers):
                    pass
            response = err.value.response
            refused.append((response.status_code, response.headers.get("WWW-Authenticate", "")))
        async with connect(url, additional_headers={"Authorization": "Bearer good"}) as ws:
            greeting = await ws.recv()
    assert refused[0] == (401, "Bearer")
    assert refused[1][0] == 401 and 'error="invalid_token"' in refused[1][1]
    assert greeting == "alice"
    assert auth.tokens == ["forged", "good"]


async def test_a_websocket_refusal_without_the_response_extension_closes(auth: ExactAuth) -> None:
    """Servers without ``websocket.http.response`` get a close before accept (they answer 403)."""
    scope = {"type": "websocket", "path": "/mcp/ws", "headers": [], "client": ("127.0.0.1", 1), "subprotocols": []}
    sent = await drive(ws_app(VerifierChain(auth)), scope, [{"type": "websocket.connect"}])
    assert [m["type"] for m in sent] == ["websocket.close"]


async def test_lifespan_still_passes_through(auth: ExactAuth) -> None:
    started: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        started.append(scope["type"])

    await drive(ChainAuthMiddleware(app, VerifierChain(auth, ScopesStage(required=["x"]))), {"type": "lifespan"}, [])
    assert started == ["lifespan"]


# -- X-Forwarded-For ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("peer", "xff", "expected"),
    [
        ("10.0.0.1", b"203.0.113.9:5555", "203.0.113.9"),  # proxies that write the client's port (Azure)
        ("10.0.0.1", b"[2001:db8::9]:443, 10.0.0.5:80", "2001:db8::9"),
        ("::ffff:10.0.0.1", b"203.0.113.9", "203.0.113.9"),  # a dual-stack listener's view of an IPv4 proxy
        ("10.0.0.1", b"203.0.113.9, ::ffff:10.0.0.5", "203.0.113.9"),
        ("10.0.0.1", b"203.0.113.9, 1.2.3.4:http", "10.0.0.1"),  # a malformed hop still ends the trust
        ("10.0.0.1", b"203.0.113.9, [2001:db8::9", "10.0.0.1"),
        ("198.51.100.7", b"203.0.113.9:1", "198.51.100.7"),  # an untrusted peer's header is never read
    ],
)
def test_forwarded_hops_with_ports_and_mapped_addresses(peer: str, xff: bytes, expected: str) -> None:
    scope = {"client": (peer, 1), "headers": [(b"x-forwarded-for", xff)]}
    assert client_ip(scope, parse_networks(["10.0.0.0/8"])) == expected
