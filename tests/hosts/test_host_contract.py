"""The MCP resource-server contract on mcp 2.x (``MCPServer``) and FastMCP 4.x, over HTTP with the MCP client:
a 403 naming every scope a tool needs, the audience bound to the server's URL by default, a scope hierarchy,
the 2026-07-28 mirrored headers, step-up. Runs in ``.venv/hosts`` (``make test-hosts``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import httpx2
import pytest
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client

from fastapps_auth import Stage, VerifierChain
from fastapps_auth.integrations.mcp import metadata_url, protect
from fastapps_auth.registry import load
from fastapps_auth.stages.scopes import ScopesStage
from tests.hosts.support import ISSUER, MCP_HEADERS, RESOURCE, AsyncServer, Issuer, rpc

META = metadata_url(RESOURCE)
RULES: dict[str, Any] = {
    "report": ["reports:read"],
    "transfer": {"scopes": ["payments"], "acr_values": ["mfa"], "max_age": 300},
}


def chain_for(issuer: Issuer) -> VerifierChain:
    """A ``jwt`` stage with no ``audience`` of its own (the host binds it), and per-tool rules, hierarchic."""
    jwt = load("jwt")(issuer_url=ISSUER, jwks=issuer.jwks, algorithms=["RS256"])
    assert isinstance(jwt, Stage)
    scopes = ScopesStage(required=["user"], tools=RULES, scope_strategy="hierarchic")
    return VerifierChain(jwt, scopes)


def report() -> str:
    return "Q3: 42"


def transfer() -> str:
    return "sent"


def mcp2_app(chain: VerifierChain) -> Any:
    from mcp.server.auth.settings import AuthSettings
    from mcp.server.mcpserver import MCPServer

    from fastapps_auth.integrations.mcp import token_verifier

    server = MCPServer(
        "contract",
        token_verifier=token_verifier(chain, resource_url=RESOURCE),
        auth=AuthSettings.model_validate(
            {"issuer_url": ISSUER, "resource_server_url": RESOURCE, "validate_token_resource": True}
        ),
    )
    server.tool()(report)
    server.tool()(transfer)
    return protect(server.streamable_http_app(stateless_http=True), chain, server=server, resource_url=RESOURCE)


def fastmcp4_app(chain: VerifierChain) -> Any:
    from fastmcp import FastMCP
    from fastmcp.server.auth import RemoteAuthProvider
    from pydantic import AnyHttpUrl

    from fastapps_auth.integrations.fastmcp import as_fastmcp_verifier

    verifier = as_fastmcp_verifier(chain, base_url="http://127.0.0.1", resource_url=RESOURCE)
    mcp = FastMCP("contract", auth=RemoteAuthProvider(verifier, [AnyHttpUrl(ISSUER)], base_url="http://127.0.0.1"))
    mcp.tool(report)
    mcp.tool(transfer)
    return protect(mcp.http_app(stateless_http=True), chain, server=mcp, resource_url=RESOURCE)


HOSTS = pytest.mark.parametrize("host", [mcp2_app, fastmcp4_app], ids=["mcp2", "fastmcp4"])


async def post(url: str, token: str | None, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(timeout=30) as http:
        return await http.post(f"{url}/mcp", json=body, headers={**MCP_HEADERS, **auth, **(headers or {})})


async def call_tool(url: str, token: str, tool: str) -> Any:
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30) as http,
        streamable_http_client(f"{url}/mcp", http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        return await session.call_tool(tool, {})


def called(tool: str) -> dict[str, Any]:
    return rpc("tools/call", {"name": tool, "arguments": {}})


@HOSTS
async def test_a_403_names_every_scope_the_tool_needs(host: Callable[[VerifierChain], Any]) -> None:
    issuer = Issuer()
    chain = chain_for(issuer)
    async with AsyncServer(host(chain)) as srv:
        refused = await post(srv.url, issuer.mint(scope="user"), called("report"))
        none = await post(srv.url, None, rpc("tools/list"))
    await chain.aclose()
    assert refused.status_code == 403
    www = refused.headers["www-authenticate"]
    assert www.startswith('Bearer error="insufficient_scope"')
    assert www.endswith(f'scope="user reports:read", resource_metadata="{META}"')
    assert refused.json()["scope"] == "user reports:read"
    assert (
        none.status_code == 401
        and none.headers["www-authenticate"] == f'Bearer scope="user", resource_metadata="{META}"'
    )


@HOSTS
async def test_a_scope_hierarchy_grants_the_tool_to_the_mcp_client(host: Callable[[VerifierChain], Any]) -> None:
    issuer = Issuer()
    chain = chain_for(issuer)
    async with AsyncServer(host(chain)) as srv:
        result = await call_tool(srv.url, issuer.mint(scope="user reports"), "report")
    await chain.aclose()
    assert result.is_error is False and result.content[0].text == "Q3: 42"


@HOSTS
async def test_the_audience_is_bound_to_the_servers_url_by_default(host: Callable[[VerifierChain], Any]) -> None:
    issuer = Issuer()
    chain = chain_for(issuer)
    async with AsyncServer(host(chain)) as srv:
        mine = await call_tool(srv.url, issuer.mint(scope="user reports:read"), "report")
        other = await post(srv.url, issuer.mint(scope="user", aud="http://127.0.0.1/other"), rpc("tools/list"))
        dev = await post(srv.url, issuer.mint(scope="user", aud="fastapps-auth-dev"), rpc("tools/list"))
    await chain.aclose()
    assert mine.is_error is False
    assert other.status_code == dev.status_code == 401
    assert 'error="invalid_token"' in other.headers["www-authenticate"]


@HOSTS
async def test_mirrored_headers_that_lie_are_a_400_before_the_tool_runs(host: Callable[[VerifierChain], Any]) -> None:
    issuer = Issuer()
    chain = chain_for(issuer)
    token = issuer.mint(scope="user reports:read")
    async with AsyncServer(host(chain)) as srv:
        lying = await post(srv.url, token, called("report"), {"Mcp-Method": "tools/call", "Mcp-Name": "transfer"})
        honest = await post(srv.url, token, called("report"), {"Mcp-Method": "tools/call", "Mcp-Name": "report"})
    await chain.aclose()
    assert lying.status_code == 400 and lying.json()["error"]["code"] == -32020
    assert honest.status_code == 200 and "Q3: 42" in honest.text


@HOSTS
async def test_step_up_is_a_401_with_acr_values_and_max_age(host: Callable[[VerifierChain], Any]) -> None:
    issuer = Issuer()
    chain = chain_for(issuer)
    async with AsyncServer(host(chain)) as srv:
        weak = await post(srv.url, issuer.mint(scope="user payments", acr="pwd"), called("transfer"))
        stale = await post(srv.url, issuer.mint(scope="user payments", acr="mfa", auth_time=0), called("transfer"))
        fresh = await call_tool(srv.url, issuer.mint(scope="user payments", acr="mfa", auth_time=now()), "transfer")
    await chain.aclose()
    assert weak.status_code == 401
    www = weak.headers["www-authenticate"]
    assert www.startswith('Bearer error="insufficient_user_authentication"')
    assert 'scope="user payments", acr_values="mfa", max_age="300"' in www
    assert weak.json()["acr_values"] == "mfa" and weak.json()["max_age"] == 300
    assert stale.status_code == 401 and 'max_age="300"' in stale.headers["www-authenticate"]
    assert fresh.is_error is False and fresh.content[0].text == "sent"


def now() -> int:
    return int(time.time())
