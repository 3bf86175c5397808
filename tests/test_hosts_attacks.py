"""The MCP host integrations and dev tools against hostile clients: each test is a bug that was found.

Real components throughout: uvicorn on 127.0.0.1, the MCP Python client, the ``jwt`` stage.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from fastapps import BaseWidget
from mcp.server.fastmcp import FastMCP as SDKFastMCP

from fastapps_auth import VerifierChain
from fastapps_auth.integrations.fastapps import WidgetMCPServer
from fastapps_auth.integrations.mcp import protect
from fastapps_auth.integrations.starlette import current_access_token
from tests.hosts.support import INITIALIZE, ISSUER, MCP_HEADERS, RESOURCE, AsyncServer, Issuer, jwt_stage, raw, rpc
from tests.support.mcp_client import call
from tests.support.widgets import NoInput, Protected, Public, build


class Undecorated(BaseWidget):  # type: ignore[misc]  # fastapps ships no type information: BaseWidget is Any
    """No decorator: FastApps says it inherits the server's policy (auth required when the server has auth)."""

    identifier = "undecorated"
    title = "Undecorated"
    input_schema = NoInput

    async def execute(self, input_data: Any, context: Any = None, user: Any = None) -> dict[str, Any]:
        return {"subject": user.subject if user else None}


def widget_server(issuer: Issuer, **options: Any) -> tuple[WidgetMCPServer, VerifierChain]:
    chain = VerifierChain(jwt_stage(issuer))
    server = WidgetMCPServer(
        "widgets",
        [build(w) for w in (Undecorated, Protected, Public)],
        auth_issuer_url=ISSUER,
        auth_resource_server_url=RESOURCE,
        token_verifier=chain,
        **options,
    )
    return server, chain


async def test_anonymous_allow_keeps_undecorated_widgets_behind_auth() -> None:
    """``anonymous="allow"`` opens ``@no_auth``/``@optional_auth`` widgets, not those inheriting the server's policy."""
    issuer = Issuer()
    server, chain = widget_server(issuer, anonymous="allow")
    async with AsyncServer(server.get_app()) as srv:
        public = await call(srv.url, None, "public")
        undecorated = await raw(srv.url, None, rpc("tools/call", {"name": "undecorated", "arguments": {}}))
        with_token = await call(srv.url, issuer.mint("alice"), "undecorated")
    await chain.aclose()
    assert public.structuredContent == {"authenticated": False}
    assert undecorated.status_code == 401  # refused before the widget runs, with a challenge to sign in
    assert with_token.structuredContent == {"subject": "alice"}


async def test_concurrent_widget_calls_each_see_their_own_user() -> None:
    issuer = Issuer()
    server, chain = widget_server(issuer)
    users = [f"user-{i}" for i in range(12)]
    async with AsyncServer(server.get_app()) as srv:
        results = await asyncio.gather(*(call(srv.url, issuer.mint(u), "protected") for u in users))
    await chain.aclose()
    assert [r.structuredContent["subject"] for r in results] == users


async def test_stateful_session_tools_see_the_current_requests_token() -> None:
    """Same user, new token with fewer scopes, same session: a tool must see the new token, not the first one."""
    issuer = Issuer()
    chain = VerifierChain(jwt_stage(issuer))
    server = SDKFastMCP("demo")

    @server.tool()
    def scopes() -> str:
        at = current_access_token()
        return " ".join(at.scopes) if at else "-"

    app = protect(server.streamable_http_app(), chain)
    async with AsyncServer(app) as srv, httpx.AsyncClient(timeout=30) as http:
        first = {**MCP_HEADERS, "Authorization": f"Bearer {issuer.mint('alice', scope='admin')}"}
        opened = await http.post(f"{srv.url}/mcp", json=INITIALIZE, headers=first)
        later = {
            **MCP_HEADERS,
            "Authorization": f"Bearer {issuer.mint('alice', scope='read')}",
            "Mcp-Session-Id": opened.headers["mcp-session-id"],
            "Mcp-Protocol-Version": "2025-06-18",
        }
        await http.post(f"{srv.url}/mcp", json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=later)
        called = await http.post(f"{srv.url}/mcp", json=rpc("tools/call", {"name": "scopes"}, id=2), headers=later)
    await chain.aclose()
    assert called.status_code == 200
    assert '"text":"read"' in called.text.replace(" ", "")


async def test_widget_rules_follow_the_widget_fastapps_calls() -> None:
    """A name that is not a widget's id is no tool: refused under an allow-list, before FastApps sees it."""
    from fastapps_auth.stages.scopes import ScopesStage

    issuer = Issuer()
    chain = VerifierChain(jwt_stage(issuer), ScopesStage(tools={"public": [], "protected": []}, unknown_tools="deny"))
    server = WidgetMCPServer("widgets", [build(Protected), build(Public)], token_verifier=chain)
    token = issuer.mint("alice")
    async with AsyncServer(server.get_app()) as srv, httpx.AsyncClient(timeout=30) as http:
        headers = {**MCP_HEADERS, "Authorization": f"Bearer {token}"}
        other = await http.post(f"{srv.url}/mcp", json=rpc("tools/call", {"name": "Protected"}), headers=headers)
        known = await http.post(f"{srv.url}/mcp", json=rpc("tools/call", {"name": "protected"}), headers=headers)
    await chain.aclose()
    assert other.status_code == 403 and other.json()["error"] == "insufficient_scope"
    assert known.status_code == 200 and "alice" in known.text
