"""Per-tool rules on every transport the integrations serve: websocket messages and legacy SSE.

A live MCP SDK server (mcp 1.30's FastMCP) on 127.0.0.1 behind the middleware, the real ``jwt``
stage; the websocket client is ``websockets``, the SSE client httpx.
"""

from __future__ import annotations

import asyncio
import json
import warnings
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from mcp.server.fastmcp import FastMCP as SDKFastMCP
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.types import Receive, Scope, Send
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from fastapps_auth import ManualClock, VerifierChain
from fastapps_auth.integrations.mcp import protect
from fastapps_auth.stages.scopes import ScopesStage
from tests.hosts.support import INITIALIZE, MCP_HEADERS, AsyncServer, Issuer, jwt_stage, rpc
from tests.support.decisions import Recorder

INITIALIZED = {"jsonrpc": "2.0", "method": "notifications/initialized"}


def mcp_server(ran: list[str]) -> SDKFastMCP:
    server = SDKFastMCP("transports")

    @server.tool()
    def echo(text: str = "") -> str:
        ran.append("echo")
        return text

    @server.tool()
    def admin() -> str:
        ran.append("admin")
        return "admin"

    return server


class WebsocketMCP:
    """The SDK's websocket transport (deprecated in mcp 1.x, still shipped) serving ``server``."""

    def __init__(self, server: SDKFastMCP) -> None:
        self.server = server._mcp_server

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        from mcp.server.websocket import websocket_server

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            transport = websocket_server(scope, receive, send)
        async with transport as (read, write):
            await self.server.run(read, write, self.server.create_initialization_options())


def chain_for(issuer: Issuer, recorder: Recorder, clock: ManualClock | None = None) -> VerifierChain:
    stage = jwt_stage(issuer) if clock is None else jwt_stage(issuer, clock=clock)
    rules = ScopesStage(tools={"admin": ["admin"]})
    return VerifierChain(stage, rules, observers=[recorder], clock=clock)


async def exchange(ws: ClientConnection, message: dict[str, Any] | str) -> dict[str, Any]:
    """Send one message and wait (bounded) for the next one the server sends."""
    await ws.send(message if isinstance(message, str) else json.dumps(message))
    async with asyncio.timeout(15):
        answer: dict[str, Any] = json.loads(await ws.recv())
    return answer


@pytest.fixture
def issuer() -> Issuer:
    return Issuer()


@pytest.fixture
async def ws_server(issuer: Issuer) -> AsyncIterator[tuple[str, Recorder, list[str]]]:
    ran: list[str] = []
    recorder = Recorder()
    server = mcp_server(ran)
    chain = chain_for(issuer, recorder)
    app = protect(Starlette(routes=[WebSocketRoute("/ws", WebsocketMCP(server))]), chain, server=server)
    async with AsyncServer(app) as srv:
        yield srv.url.replace("http", "ws") + "/ws", recorder, ran
    await chain.aclose()


async def test_each_websocket_tools_call_is_checked_against_its_tools_rule(
    issuer: Issuer, ws_server: tuple[str, Recorder, list[str]]
) -> None:
    url, recorder, ran = ws_server
    headers = {"Authorization": f"Bearer {issuer.mint('alice', scope='read')}"}
    async with connect(url, subprotocols=["mcp"], additional_headers=headers) as ws:  # type: ignore[list-item]
        assert "result" in await exchange(ws, INITIALIZE)
        await ws.send(json.dumps(INITIALIZED))
        refused = await exchange(ws, rpc("tools/call", {"name": "admin", "arguments": {}}, id=2))
        unreadable = await exchange(ws, '{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"a":NaN}}')
        echoed = await exchange(ws, rpc("tools/call", {"name": "echo", "arguments": {"text": "hi"}}, id=4))
    assert refused["id"] == 2 and refused["error"]["code"] == -32001
    assert refused["error"]["data"]["status"] == 403 and refused["error"]["data"]["scope"] == "admin"
    assert unreadable["id"] is None and unreadable["error"]["code"] == -32700
    assert echoed["id"] == 4 and echoed["result"]["content"][0]["text"] == "hi"  # the connection was kept
    assert ran == ["echo"]  # the refused call never reached the server
    assert recorder.refusals() == [(403, "scopes", "insufficient_tool_scope"), (400, "http", "unreadable_body")]
    tools = [d.request.tool_name for d in recorder.decisions if d.request is not None and d.request.tool_name]
    assert tools == ["admin", "echo"]


async def test_a_websocket_whose_token_stops_being_valid_is_closed(issuer: Issuer) -> None:
    clock = ManualClock(1_800_000_000.0)
    ran: list[str] = []
    recorder = Recorder()
    server = mcp_server(ran)
    chain = chain_for(issuer, recorder, clock)
    app = protect(Starlette(routes=[WebSocketRoute("/ws", WebsocketMCP(server))]), chain, server=server)
    headers = {"Authorization": f"Bearer {issuer.mint('alice', now=clock.time(), ttl=60)}"}
    async with AsyncServer(app) as srv:
        url = srv.url.replace("http", "ws") + "/ws"
        async with connect(url, subprotocols=["mcp"], additional_headers=headers) as ws:  # type: ignore[list-item]
            assert "result" in await exchange(ws, INITIALIZE)
            clock.advance(3600)
            expired = await exchange(ws, rpc("tools/call", {"name": "echo", "arguments": {}}, id=2))
            with pytest.raises(ConnectionClosed) as closed:
                async with asyncio.timeout(15):
                    await ws.recv()
    await chain.aclose()
    assert expired["error"]["data"]["status"] == 401 and expired["error"]["data"]["error"] == "invalid_token"
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    assert ran == []


async def test_legacy_sse_messages_are_checked_like_streamable_http(issuer: Issuer) -> None:
    ran: list[str] = []
    recorder = Recorder()
    server = mcp_server(ran)
    chain = chain_for(issuer, recorder)
    app = protect(server.sse_app(), chain, server=server)
    auth = {"Authorization": f"Bearer {issuer.mint('alice', scope='read')}"}
    async with (
        AsyncServer(app) as srv,
        httpx.AsyncClient(base_url=srv.url, headers=auth, timeout=30) as http,
        http.stream("GET", "/sse") as stream,
    ):
        endpoint = None
        events = stream.aiter_lines()  # kept: dropping the iterator would close the stream, and the session
        async for line in events:  # the first event names the session's message URL
            if line.startswith("data: "):
                endpoint = line.removeprefix("data: ")
                break
        assert endpoint is not None and "session_id=" in endpoint
        json_type = {"Content-Type": MCP_HEADERS["Content-Type"]}
        opened = await http.post(endpoint, json=INITIALIZE, headers=json_type)
        admin = rpc("tools/call", {"name": "admin", "arguments": {}}, id=2)
        denied = await http.post(endpoint, json=admin, headers=json_type)
        nan = b'{"jsonrpc":"2.0","id":3,"method":"ping","x":NaN}'
        unreadable = await http.post(endpoint, content=nan, headers=json_type)
        unknown = await http.post(endpoint, json=rpc("tools/call", {"name": "nope"}, id=4), headers=json_type)
    await chain.aclose()
    assert opened.status_code == 202
    assert denied.status_code == 403 and 'scope="admin"' in denied.headers["www-authenticate"]
    assert unreadable.status_code == 400
    assert unknown.status_code == 202  # a name the server does not have runs nothing; no rule to apply
    assert ran == []
    assert [d.request.tool_name for d in recorder.decisions if d.request and d.request.mcp_method == "tools/call"] == [
        "admin",
        None,
    ]
