"""The chain with FastMCP 4.x: ``as_fastmcp_verifier`` inside ``RemoteAuthProvider``, served by uvicorn.

Runs in ``.venv-hosts`` (``make test-hosts``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastmcp import Client, FastMCP
from fastmcp.client.auth import BearerAuth
from fastmcp.exceptions import ToolError
from fastmcp.server.auth import RemoteAuthProvider
from fastmcp.server.dependencies import get_access_token
from mcp.shared.exceptions import MCPError
from pydantic import AnyHttpUrl

from fastapps_auth import VerifierChain
from fastapps_auth.integrations.fastmcp import ChainTokenVerifier, as_fastmcp_verifier
from fastapps_auth.integrations.mcp import metadata_url, protect
from fastapps_auth.stages.rate_limit import RateLimitStage
from fastapps_auth.stages.scopes import ScopesStage
from fastapps_auth.stages.tenant import TenantStage
from fastapps_auth.stages.user_status import UserStatusStage
from tests.hosts.support import (
    ISSUER,
    RESOURCE,
    AsyncServer,
    Issuer,
    UsersTable,
    jwt_stage,
    raw,
    rpc,
)
from tests.support.tcp_proxy import TCPProxy

BASE = "http://127.0.0.1"
META = metadata_url(RESOURCE)


@pytest.fixture
def issuer() -> Issuer:
    return Issuer()


@pytest.fixture
async def users(pg_proxy: TCPProxy, postgres_dsn: str) -> AsyncIterator[UsersTable]:
    async with UsersTable(postgres_dsn, pg_proxy.port, "int6_fastmcp4_users") as table:
        yield table


def make(issuer: Issuer, users: UsersTable, *, limit: int = 100) -> tuple[Any, VerifierChain]:
    chain = VerifierChain(
        jwt_stage(issuer),
        UserStatusStage(dsn=users.dsn, query=users.query, cache_ttl=0, negative_ttl=0, retry_after=2),
        RateLimitStage(limit=limit, window=3600, backend="memory://"),
        TenantStage(required=False),
        ScopesStage(tools={"admin_tool": ["admin"]}),
    )
    verifier = as_fastmcp_verifier(chain, base_url=BASE, required_scopes=["read"], resource_url=RESOURCE)
    auth = RemoteAuthProvider(verifier, [AnyHttpUrl(ISSUER)], base_url=BASE)
    mcp = FastMCP("demo", auth=auth)

    @mcp.tool
    def whoami() -> str:
        at = get_access_token()
        return f"subject={at.subject if at else None} tenant={(at.claims or {}).get('tenant_id') if at else None}"

    @mcp.tool
    def admin_tool() -> str:  # pragma: no cover - the middleware refuses it
        return "admin"

    app = protect(mcp.http_app(stateless_http=True), chain, resource_url=RESOURCE)
    return app, chain


async def test_adapter_is_a_fastmcp_token_verifier(issuer: Issuer) -> None:
    chain = VerifierChain(jwt_stage(issuer))
    verifier = as_fastmcp_verifier(chain, required_scopes=["read"])
    assert isinstance(verifier, ChainTokenVerifier)
    at = await verifier.verify_token(issuer.mint("alice"))
    assert at is not None and at.subject == "alice" and at.claims["sub"] == "alice"
    assert await verifier.verify_token("garbage") is None
    assert verifier.required_scopes == ["read"]


async def test_fastmcp_client_sees_the_subject(issuer: Issuer, users: UsersTable) -> None:
    app, chain = make(issuer, users)
    token = issuer.mint("alice", tenant_id="acme")
    async with AsyncServer(app) as srv, Client(f"{srv.url}/mcp", auth=BearerAuth(token)) as client:
        result = await client.call_tool("whoami", {})
        with pytest.raises(MCPError) as info:  # the middleware answers 403 before FastMCP sees it
            await client.call_tool("admin_tool", {})
    await chain.aclose()
    assert "subject=alice tenant=acme" in result.content[0].text
    assert not isinstance(info.value, ToolError)  # refused at the HTTP layer, not by the tool


async def test_fastmcp_http_semantics(issuer: Issuer, users: UsersTable, pg_proxy: TCPProxy) -> None:
    app, chain = make(issuer, users, limit=2)
    async with AsyncServer(app) as srv, httpx.AsyncClient() as http:
        none = await raw(srv.url, None)
        bad = await raw(srv.url, issuer.mint("alice", iss="https://evil.example/"))
        banned = await raw(srv.url, issuer.mint("mallory"))
        no_read = await raw(srv.url, issuer.mint("alice", scope="write"))
        denied = await raw(srv.url, issuer.mint("alice"), rpc("tools/call", {"name": "admin_tool"}))
        meta = await http.get(f"{srv.url}/.well-known/oauth-protected-resource/mcp")
        carol = issuer.mint("carol")
        for _ in range(2):
            assert (await raw(srv.url, carol)).status_code == 200
        limited = await raw(srv.url, carol)
        pg_proxy.cut()
        down = await raw(srv.url, issuer.mint("alice"))
        pg_proxy.restore()
    await chain.aclose()
    assert none.status_code == 401 and none.headers["www-authenticate"] == f'Bearer resource_metadata="{META}"'
    assert bad.status_code == 401 and 'error="invalid_token"' in bad.headers["www-authenticate"]
    assert banned.status_code == 401
    assert no_read.status_code == 403  # FastMCP's own RequireAuthMiddleware, required_scopes=["read"]
    assert denied.status_code == 403 and 'scope="admin"' in denied.headers["www-authenticate"]
    assert meta.status_code == 200 and meta.json()["resource"] == RESOURCE
    assert limited.status_code == 429 and "retry-after" in limited.headers
    assert down.status_code == 503 and down.headers["retry-after"] == "2"
