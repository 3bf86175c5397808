"""DPoP on mcp 2.x (``MCPServer`` with its own ``AuthSettings``) and FastMCP 4.x (``RemoteAuthProvider``), over HTTP
with the MCP SDK 2.x client carrying proofs; and ``protect(authorization_servers=...)``'s RFC 9728 metadata.

The hosts' own bearer backends read only the ``Bearer`` scheme: the middleware, having checked the proof,
shows the verified credential to the app as ``Bearer``. Runs in ``.venv/hosts`` (``make test-hosts``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import httpx2
import pytest
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client

from fastapps_auth import VerifierChain
from fastapps_auth.integrations.mcp import protect
from fastapps_auth.stages.dpop import DPoPStage
from fastapps_auth.stages.scopes import ScopesStage
from fastapps_auth.testing.dpop import DPoPKey
from tests.hosts.support import ISSUER, MCP_HEADERS, RESOURCE, AsyncServer, Issuer, jwt_stage, rpc
from tests.support.dpop_client import dpop_auth

ROOT_ISSUER = "http://127.0.0.1:9"  # a root URL: pydantic's AnyHttpUrl would write it with a "/"


def who() -> str:
    from fastapps_auth.integrations.asgi import current_access_token

    at = current_access_token()
    return f"{at.subject if at else None} {(at.claims or {}).get('cnf', {}).get('jkt') if at else None}"


def mcp2_app(chain: VerifierChain) -> Any:
    from mcp.server.auth.settings import AuthSettings
    from mcp.server.mcpserver import MCPServer

    from fastapps_auth.integrations.mcp import token_verifier

    server = MCPServer(
        "dpop",
        token_verifier=token_verifier(chain, resource_url=RESOURCE),
        auth=AuthSettings.model_validate(
            {"issuer_url": ISSUER, "resource_server_url": RESOURCE, "validate_token_resource": True}
        ),
    )
    server.tool()(who)
    app = server.streamable_http_app(stateless_http=True)
    return protect(app, chain, server=server, resource_url=RESOURCE, authorization_servers=[ROOT_ISSUER])


def fastmcp4_app(chain: VerifierChain) -> Any:
    from fastmcp import FastMCP
    from fastmcp.server.auth import RemoteAuthProvider
    from pydantic import AnyHttpUrl

    from fastapps_auth.integrations.fastmcp import as_fastmcp_verifier

    verifier = as_fastmcp_verifier(chain, base_url="http://127.0.0.1", resource_url=RESOURCE)
    mcp = FastMCP("dpop", auth=RemoteAuthProvider(verifier, [AnyHttpUrl(ISSUER)], base_url="http://127.0.0.1"))
    mcp.tool(who)
    app = mcp.http_app(stateless_http=True)
    return protect(app, chain, server=mcp, resource_url=RESOURCE, authorization_servers=[ROOT_ISSUER])


HOSTS = pytest.mark.parametrize("host", [mcp2_app, fastmcp4_app], ids=["mcp2", "fastmcp4"])


def chain_for(issuer: Issuer) -> VerifierChain:
    return VerifierChain(jwt_stage(issuer), DPoPStage(mode="required", nonce=True), ScopesStage(required=["read"]))


@HOSTS
async def test_the_mcp_client_calls_a_tool_with_dpop(host: Callable[[VerifierChain], Any]) -> None:
    issuer = Issuer()
    chain = chain_for(issuer)
    key = DPoPKey.generate()
    auth = dpop_auth(httpx2.Auth, key, issuer.mint("alice", cnf=key.cnf))
    async with (
        AsyncServer(host(chain)) as srv,
        httpx2.AsyncClient(auth=auth, timeout=30) as http,
        streamable_http_client(f"{srv.url}/mcp", http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        result = await session.call_tool("who", {})
    await chain.aclose()
    assert result.is_error is False and result.content[0].text == f"alice {key.jkt}"  # type: ignore[union-attr]
    assert auth.proofs >= 3 and auth.nonce is not None


@HOSTS
async def test_a_bound_token_as_bearer_is_refused_with_both_challenges(host: Callable[[VerifierChain], Any]) -> None:
    issuer = Issuer()
    chain = chain_for(issuer)
    key = DPoPKey.generate()
    async with AsyncServer(host(chain)) as srv, httpx.AsyncClient(timeout=30) as http:
        token = issuer.mint("alice", cnf=key.cnf)
        refused = await http.post(
            f"{srv.url}/mcp", json=rpc("tools/list"), headers={**MCP_HEADERS, "Authorization": f"Bearer {token}"}
        )
        document = (await http.get(f"{srv.url}/.well-known/oauth-protected-resource/mcp")).json()
    await chain.aclose()
    assert refused.status_code == 401
    bearer, dpop = refused.headers.get_list("www-authenticate")
    assert bearer.startswith('Bearer error="invalid_token"') and 'scope="read"' in bearer
    assert dpop == 'DPoP scope="read", algs="ES256 ES384 RS256 PS256 EdDSA"'
    assert document == {
        "resource": RESOURCE,
        "authorization_servers": [ROOT_ISSUER],
        "bearer_methods_supported": ["header"],
        "scopes_supported": ["read"],
        "dpop_signing_alg_values_supported": ["ES256", "ES384", "RS256", "PS256", "EdDSA"],
    }


async def test_a_tool_fastmcp_hides_until_the_token_is_known_is_called_with_dpop() -> None:
    """``ToolRules`` decides a tool the HTTP layer could not see; the proof is not checked twice (a replay)."""
    from fastmcp import FastMCP
    from fastmcp.server.auth import RemoteAuthProvider, require_scopes
    from pydantic import AnyHttpUrl

    from fastapps_auth.integrations.fastmcp import as_fastmcp_verifier

    issuer = Issuer()
    chain = chain_for(issuer)
    verifier = as_fastmcp_verifier(chain, base_url="http://127.0.0.1", resource_url=RESOURCE)
    mcp = FastMCP("dpop", auth=RemoteAuthProvider(verifier, [AnyHttpUrl(ISSUER)], base_url="http://127.0.0.1"))
    mcp.tool(auth=require_scopes("read"))(who)
    app = protect(mcp.http_app(stateless_http=True), chain, server=mcp, resource_url=RESOURCE)
    key = DPoPKey.generate()
    auth = dpop_auth(httpx2.Auth, key, issuer.mint("alice", cnf=key.cnf))
    async with (
        AsyncServer(app) as srv,
        httpx2.AsyncClient(auth=auth, timeout=30) as http,
        streamable_http_client(f"{srv.url}/mcp", http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        result = await session.call_tool("who", {})
    await chain.aclose()
    assert result.is_error is False and result.content[0].text == f"alice {key.jkt}"  # type: ignore[union-attr]
