"""End to end over HTTP: an MCP server (the SDK's FastMCP) behind an introspection chain, the real MCP client,
opaque tokens from the dev issuer, the audience bound to the server's resource URL by ``protect``."""

from __future__ import annotations

import httpx
from mcp.server.fastmcp import FastMCP as SDKFastMCP

from fastapps_auth import VerifierChain
from fastapps_auth.integrations.mcp import protect
from fastapps_auth.integrations.starlette import current_access_token
from fastapps_auth.stages.introspection import IntrospectionStage
from tests.hosts.support import MCP_HEADERS, AsyncServer
from tests.support.introspection import opaque_issuer, requests, stage
from tests.support.mcp_client import call

RESOURCE = "https://mcp.example.com/mcp"


async def test_an_opaque_token_for_this_server_calls_a_tool_and_others_get_401() -> None:
    with opaque_issuer(audience=RESOURCE) as issuer:
        intro: IntrospectionStage = stage(issuer, audience=None)
        chain = VerifierChain(intro)
        server = SDKFastMCP("demo")

        @server.tool()
        def whoami() -> str:
            at = current_access_token()
            return at.subject or "-" if at else "-"

        app = protect(server.streamable_http_app(), chain, server=server, resource_url=RESOURCE)
        async with AsyncServer(app) as srv:
            result = await call(srv.url, issuer.mint_opaque("alice"), "whoami")
            async with httpx.AsyncClient(timeout=30) as http:
                other = issuer.mint_opaque("bob", audience="https://other.example.com/mcp")
                refused = await http.post(
                    f"{srv.url}/mcp", json={}, headers={**MCP_HEADERS, "Authorization": f"Bearer {other}"}
                )
                revoked = issuer.mint_opaque("carol")
                issuer.revoke(revoked)
                inactive = await http.post(
                    f"{srv.url}/mcp", json={}, headers={**MCP_HEADERS, "Authorization": f"Bearer {revoked}"}
                )
        await chain.aclose()
    assert result.content[0].text == "alice"
    assert refused.status_code == 401 and 'error="invalid_token"' in refused.headers["www-authenticate"]
    assert inactive.status_code == 401
    assert "not meant for this audience" in refused.text
    assert "not active" in inactive.text
    assert requests(intro) >= 3
