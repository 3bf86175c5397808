"""The chain with the MCP SDK 2.x: ``MCPServer`` and the raw Starlette pieces, served by uvicorn.

Runs in ``.venv-hosts`` (``make test-hosts``): mcp 2.x cannot share the main venv with FastApps.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.server.auth.middleware.auth_context import AuthContextMiddleware, get_access_token
from mcp.server.auth.middleware.bearer_auth import BearerAuthBackend, RequireAuthMiddleware
from mcp.server.auth.routes import create_protected_resource_routes
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import MCPServer
from pydantic import AnyHttpUrl
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.responses import JSONResponse
from starlette.routing import Route

from fastapps_auth import Stage, VerifierChain
from fastapps_auth.integrations.mcp import metadata_url, protect, token_verifier
from fastapps_auth.stages.rate_limit import RateLimitStage
from fastapps_auth.stages.scopes import ScopesStage
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

META = metadata_url(RESOURCE)


class Counting(Stage[Any]):
    """Counts how many times the chain ran (to prove the SDK backend did not run it again)."""

    plugin_name = "counting"
    calls = 0

    async def __call__(self, v: Any) -> None:
        type(self).calls += 1


@pytest.fixture
def issuer() -> Issuer:
    return Issuer()


@pytest.fixture
async def users_db(pg_proxy: TCPProxy, postgres_dsn: str) -> AsyncIterator[UsersTable]:
    async with UsersTable(postgres_dsn, pg_proxy.port, "int6_mcp2_users") as table:
        yield table


def make_chain(issuer: Issuer, users: UsersTable, *, limit: int = 100) -> VerifierChain:
    Counting.calls = 0
    return VerifierChain(
        jwt_stage(issuer),
        UserStatusStage(dsn=users.dsn, query=users.query, cache_ttl=0, negative_ttl=0, retry_after=4),
        RateLimitStage(limit=limit, window=3600, backend="memory://"),
        ScopesStage(tools={"whoami": ["read"], "admin_tool": ["admin"]}),
        Counting(),
    )


def make_app(chain: VerifierChain) -> Any:
    server = MCPServer(
        "demo",
        token_verifier=token_verifier(chain, resource_url=RESOURCE),
        auth=AuthSettings(
            issuer_url=AnyHttpUrl(ISSUER),
            resource_server_url=AnyHttpUrl(RESOURCE),
            validate_token_resource=True,
            required_scopes=["read"],
        ),
    )

    @server.tool()
    def whoami() -> str:
        at = get_access_token()
        return f"subject={at.subject if at else None}"

    return protect(server.streamable_http_app(stateless_http=True), chain, resource_url=RESOURCE)


async def call_tool(url: str, token: str, tool: str) -> Any:
    import httpx2

    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30) as http,
        streamable_http_client(f"{url}/mcp", http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        return await session.call_tool(tool, {})


async def test_mcpserver_valid_token_shows_the_subject_and_runs_the_chain_once(
    issuer: Issuer, users_db: UsersTable
) -> None:
    chain = make_chain(issuer, users_db)
    async with AsyncServer(make_app(chain)) as srv:
        before = Counting.calls
        ok = await raw(srv.url, issuer.mint("alice"))
        assert ok.status_code == 200
        assert Counting.calls - before == 1  # the SDK's BearerAuthBackend reused the middleware's decision
        result = await call_tool(srv.url, issuer.mint("alice"), "whoami")
    await chain.aclose()
    assert result.is_error is False
    assert "subject=alice" in result.content[0].text


async def test_mcpserver_http_semantics(issuer: Issuer, users_db: UsersTable, pg_proxy: TCPProxy) -> None:
    chain = make_chain(issuer, users_db, limit=3)
    async with AsyncServer(make_app(chain)) as srv:
        none = await raw(srv.url, None)
        bad = await raw(srv.url, "garbage")
        banned = await raw(srv.url, issuer.mint("mallory"))
        other_resource = await raw(srv.url, issuer.mint("alice", aud=[RESOURCE, "https://other"]))
        denied = await raw(srv.url, issuer.mint("alice"), rpc("tools/call", {"name": "admin_tool"}))
        no_read = await raw(srv.url, issuer.mint("alice", scope="write"))
        carol = issuer.mint("carol")
        for _ in range(3):
            assert (await raw(srv.url, carol)).status_code == 200
        limited = await raw(srv.url, carol)
        pg_proxy.cut()
        down = await raw(srv.url, issuer.mint("alice"))
        pg_proxy.restore()
    await chain.aclose()
    assert none.status_code == 401 and none.headers["www-authenticate"] == f'Bearer resource_metadata="{META}"'
    assert bad.status_code == 401 and 'error="invalid_token"' in bad.headers["www-authenticate"]
    assert banned.status_code == 401
    assert other_resource.status_code == 200  # aud names this server: resource is bound, validation passes
    assert denied.status_code == 403 and 'scope="admin"' in denied.headers["www-authenticate"]
    assert no_read.status_code == 403  # the SDK's RequireAuthMiddleware enforces required_scopes
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) > 0
    assert down.status_code == 503 and down.headers["retry-after"] == "4"


async def test_raw_starlette_pieces_with_resource_validation(issuer: Issuer, users_db: UsersTable) -> None:
    """BearerAuthBackend + RequireAuthMiddleware + RFC 9728 routes, with the chain as the verifier."""
    chain = make_chain(issuer, users_db)

    async def endpoint(scope: Any, receive: Any, send: Any) -> None:
        at = get_access_token()
        await JSONResponse({"subject": at.subject if at else None, "resource": at.resource if at else None})(
            scope, receive, send
        )

    routes = [
        Route("/mcp", RequireAuthMiddleware(endpoint, ["read"], AnyHttpUrl(META))),
        *create_protected_resource_routes(AnyHttpUrl(RESOURCE), [AnyHttpUrl(ISSUER)], ["read"]),
    ]
    verifier = token_verifier(chain, resource_url=RESOURCE)
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(
                AuthenticationMiddleware, backend=BearerAuthBackend(verifier, resource_server_url=AnyHttpUrl(RESOURCE))
            ),
            Middleware(AuthContextMiddleware),
        ],
    )
    protect(app, chain, resource_url=RESOURCE, paths=["/mcp"])
    async with AsyncServer(app) as srv, httpx.AsyncClient() as http:
        good = await http.get(f"{srv.url}/mcp", headers={"Authorization": f"Bearer {issuer.mint('alice')}"})
        meta = await http.get(f"{srv.url}/.well-known/oauth-protected-resource/mcp")
    await chain.aclose()
    assert good.status_code == 200
    assert good.json() == {"subject": "alice", "resource": RESOURCE}
    assert meta.json()["resource"] == RESOURCE
