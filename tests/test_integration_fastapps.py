"""WidgetMCPServer end to end: real uvicorn, the MCP client over streamable HTTP, real PostgreSQL.

The stack is FastApps 1.4.3 + fastmcp 2.14.7 + mcp 1.30.0 (the ``fastapps`` extra).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from fastapps import BaseWidget, auth_required, optional_auth

from fastapps_auth import VerifierChain
from fastapps_auth.integrations.fastapps import WidgetMCPServer
from fastapps_auth.stages.rate_limit import RateLimitStage
from fastapps_auth.stages.scopes import ScopesStage
from fastapps_auth.stages.tenant import TenantStage
from fastapps_auth.stages.user_status import UserStatusStage
from tests.hosts.support import ISSUER, RESOURCE, AsyncServer, Issuer, jwt_stage, raw, rpc
from tests.support.mcp_client import call
from tests.support.tcp_proxy import TCPProxy
from tests.support.widgets import NoInput, Protected, Public, build

TABLE = "int6_widget_users"
QUERY = f"SELECT active, banned FROM {TABLE} WHERE id = $1"
META = "http://127.0.0.1/.well-known/oauth-protected-resource/mcp"
RATE_LIMIT = 5


@auth_required(scopes=["read"])
class WhoAmI(BaseWidget):  # type: ignore[misc]  # fastapps ships no type information: BaseWidget is Any
    identifier = "whoami"
    title = "Who am I"
    input_schema = NoInput

    async def execute(self, input_data: Any, context: Any = None, user: Any = None) -> dict[str, Any]:
        return {
            "subject": user.subject,
            "client_id": user.client_id,
            "scopes": user.scopes,
            "tenant": user.claims.get("tenant_id"),
            "can_write": user.has_scope("write"),
        }


@auth_required(scopes=["admin"])
class AdminPanel(BaseWidget):  # type: ignore[misc]  # fastapps ships no type information: BaseWidget is Any
    identifier = "admin_panel"
    title = "Admin"
    input_schema = NoInput

    async def execute(self, input_data: Any, context: Any = None, user: Any = None) -> dict[str, Any]:
        return {"admin": user.subject}


@optional_auth(scopes=["read"])
class Flexible(BaseWidget):  # type: ignore[misc]  # fastapps ships no type information: BaseWidget is Any
    identifier = "flexible"
    title = "Flexible"
    input_schema = NoInput

    async def execute(self, input_data: Any, context: Any = None, user: Any = None) -> dict[str, Any]:
        return {"tier": "premium" if user.is_authenticated else "basic"}


@auth_required
class DeleteEverything(BaseWidget):  # type: ignore[misc]  # fastapps ships no type information: BaseWidget is Any
    """Guarded at the HTTP layer by the chain's per-tool rule (``admin``), not by a widget scope."""

    identifier = "delete_everything"
    title = "Delete everything"
    input_schema = NoInput

    async def execute(self, input_data: Any, context: Any = None, user: Any = None) -> dict[str, Any]:
        return {"deleted": True}  # pragma: no cover - the middleware refuses it


WIDGETS = [WhoAmI, AdminPanel, Public, Flexible, Protected, DeleteEverything]


@pytest.fixture
async def users_dsn(pg_proxy: TCPProxy, postgres_dsn: str) -> AsyncIterator[str]:
    conn = await asyncpg.connect(postgres_dsn)
    try:
        await conn.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (id text primary key, active bool, banned bool)")
        await conn.execute(f"DELETE FROM {TABLE}")
        await conn.executemany(
            f"INSERT INTO {TABLE} VALUES ($1, $2, $3)",
            [("alice", True, False), ("mallory", True, True), ("carol", True, False)],
        )
        yield f"postgresql://postgres@127.0.0.1:{pg_proxy.port}/test"
    finally:
        await conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
        await conn.close()


@pytest.fixture
def issuer() -> Issuer:
    return Issuer()


def make_server(issuer: Issuer, dsn: str, *, limit: int = 100, **options: Any) -> tuple[WidgetMCPServer, VerifierChain]:
    chain = VerifierChain(
        jwt_stage(issuer),
        UserStatusStage(dsn=dsn, query=QUERY, cache_ttl=0, negative_ttl=0, retry_after=3),
        RateLimitStage(limit=limit, window=3600, backend="memory://"),
        TenantStage(claim="https://example.com/tenant_id", required=False),
        ScopesStage(tools={"public": [], "delete_everything": ["admin"]}),
    )
    server = WidgetMCPServer(
        name="widgets",
        widgets=[build(w) for w in WIDGETS],
        auth_issuer_url=ISSUER,
        auth_resource_server_url=RESOURCE,
        token_verifier=chain,
        **options,
    )
    return server, chain


async def test_valid_token_reaches_the_widget_with_a_user_context(issuer: Issuer, users_dsn: str) -> None:
    server, chain = make_server(issuer, users_dsn)
    tenant: dict[str, Any] = {"https://example.com/tenant_id": "acme"}  # a claim name that is no identifier
    token = issuer.mint("alice", scope="read write", **tenant)
    async with AsyncServer(server.get_app()) as srv:
        result = await call(srv.url, token, "whoami")
    await chain.aclose()
    assert not result.isError
    assert result.structuredContent == {
        "subject": "alice",
        "client_id": "test-client",
        "scopes": ["read", "write"],
        "tenant": "acme",
        "can_write": True,
    }


async def test_http_semantics_of_rejections(issuer: Issuer, users_dsn: str, pg_proxy: TCPProxy) -> None:
    server, chain = make_server(issuer, users_dsn, limit=RATE_LIMIT)
    async with AsyncServer(server.get_app()) as srv:
        none = await raw(srv.url, None)
        bad = await raw(srv.url, issuer.mint("alice") + "x")
        expired = await raw(srv.url, issuer.mint("alice", now=1_000_000_000))
        banned = await raw(srv.url, issuer.mint("mallory"))
        denied_tool = await raw(srv.url, issuer.mint("alice"), rpc("tools/call", {"name": "delete_everything"}))
        metadata = await httpx.AsyncClient().get(f"{srv.url}/.well-known/oauth-protected-resource/mcp")
        carol = issuer.mint("carol")
        for _ in range(RATE_LIMIT):
            assert (await raw(srv.url, carol)).status_code == 200
        limited = await raw(srv.url, carol)
        pg_proxy.cut()
        down = await raw(srv.url, issuer.mint("alice"))
        pg_proxy.restore()
    await chain.aclose()

    assert none.status_code == 401
    assert none.headers["www-authenticate"] == f'Bearer resource_metadata="{META}"'
    assert bad.status_code == 401
    assert bad.headers["www-authenticate"].startswith('Bearer error="invalid_token", error_description="')
    assert f'resource_metadata="{META}"' in bad.headers["www-authenticate"]
    assert expired.status_code == 401 and 'error="invalid_token"' in expired.headers["www-authenticate"]
    assert banned.status_code == 401 and 'error="invalid_token"' in banned.headers["www-authenticate"]
    assert denied_tool.status_code == 403
    assert 'error="insufficient_scope"' in denied_tool.headers["www-authenticate"]
    assert 'scope="admin"' in denied_tool.headers["www-authenticate"]
    assert limited.status_code == 429
    assert int(limited.headers["retry-after"]) > 0
    assert limited.headers["ratelimit-limit"] == str(RATE_LIMIT)
    assert limited.headers["ratelimit-remaining"] == "0"
    assert down.status_code == 503 and down.headers["retry-after"] == "3"
    assert metadata.status_code == 200
    assert metadata.json()["resource"] == RESOURCE
    assert metadata.json()["authorization_servers"] == [ISSUER]


async def test_widget_scopes_are_refused_at_the_http_layer(issuer: Issuer, users_dsn: str) -> None:
    """A widget's ``@auth_required(scopes=[...])`` is a 403 naming the scope, as a scopes-stage rule is."""
    server, chain = make_server(issuer, users_dsn)
    token = issuer.mint("alice", scope="read")
    async with AsyncServer(server.get_app()) as srv:
        admin = await raw(srv.url, token, rpc("tools/call", {"name": "admin_panel", "arguments": {}}))
        public = await call(srv.url, token, "public")
        flexible = await call(srv.url, token, "flexible")
        protected = await call(srv.url, token, "protected")
        whoami = await call(srv.url, token, "whoami")
    await chain.aclose()
    assert admin.status_code == 403
    www = admin.headers["www-authenticate"]
    assert www.startswith('Bearer error="insufficient_scope"') and 'scope="admin"' in www
    assert f'resource_metadata="{META}"' in www
    assert admin.json() == {
        "error": "insufficient_scope",
        "error_description": "the token lacks the required scope: admin",
        "scope": "admin",
    }
    assert public.structuredContent == {"authenticated": True}
    assert flexible.structuredContent == {"tier": "premium"}
    assert protected.structuredContent == {"subject": "alice"}
    assert whoami.structuredContent["subject"] == "alice"


async def test_anonymous_allowed_serves_public_widgets_only(issuer: Issuer, users_dsn: str) -> None:
    server, chain = make_server(issuer, users_dsn, anonymous="allow")
    async with AsyncServer(server.get_app()) as srv:
        public = await call(srv.url, None, "public")
        flexible = await call(srv.url, None, "flexible")
        protected = await raw(srv.url, None, rpc("tools/call", {"name": "protected", "arguments": {}}))
        whoami = await raw(srv.url, None, rpc("tools/call", {"name": "whoami", "arguments": {}}))
        bad = await raw(srv.url, "not-a-jwt")
    await chain.aclose()
    assert public.structuredContent == {"authenticated": False}
    assert flexible.structuredContent == {"tier": "basic"}
    # A widget that requires authentication is refused before it runs, with a challenge to sign in.
    assert protected.status_code == 401
    assert protected.headers["www-authenticate"] == f'Bearer resource_metadata="{META}"'
    assert whoami.status_code == 401
    assert whoami.headers["www-authenticate"] == f'Bearer scope="read", resource_metadata="{META}"'
    assert whoami.json() == {"error_description": "authentication required", "scope": "read"}
    assert bad.status_code == 401


async def test_server_required_scopes_and_cors(issuer: Issuer, users_dsn: str) -> None:
    server, chain = make_server(issuer, users_dsn, auth_required_scopes=["read"], cors_origins=["https://chatgpt.com"])
    async with AsyncServer(server.get_app()) as srv, httpx.AsyncClient() as http:
        lacking = await raw(srv.url, issuer.mint("alice", scope="write"))
        pre = await http.options(
            f"{srv.url}/mcp",
            headers={"Origin": "https://chatgpt.com", "Access-Control-Request-Method": "POST"},
        )
        tools = await raw(srv.url, issuer.mint("alice", scope="read"), rpc("tools/list"))
    await chain.aclose()
    assert lacking.status_code == 403 and 'scope="read"' in lacking.headers["www-authenticate"]
    assert pre.headers["access-control-allow-origin"] == "https://chatgpt.com"
    assert tools.status_code == 200


def test_construction_matches_fastapps_signature(issuer: Issuer) -> None:
    """The documented snippet (positional name, widgets; auth keywords) constructs with one import changed."""
    chain = VerifierChain(jwt_stage(issuer))
    server = WidgetMCPServer(
        "widgets",
        [build(WhoAmI)],
        auth_issuer_url=ISSUER,
        auth_resource_server_url=RESOURCE,
        auth_required_scopes=["read"],
        auth_audience=RESOURCE,
        token_verifier=chain,
        global_resource_domains=["https://cdn.example.com"],
    )
    assert server.server_requires_auth
    # the server's chain is the given one with the server's and the widgets' scopes as its last stage, built once
    assert server.chain is not None and server.chain.stages[:-1] == chain.stages
    assert server.chain.stages[-1].plugin_name == "widget-scopes"
    unscoped = WidgetMCPServer("w", [build(Public)], auth_issuer_url=ISSUER, token_verifier=chain)
    assert unscoped.chain is chain
    assert "https://cdn.example.com" in (server.widgets_by_id["whoami"].widget_csp or {})["resource_domains"]
    built = WidgetMCPServer("w", [build(Protected)], auth_issuer_url=ISSUER, auth_resource_server_url=RESOURCE)
    assert built.chain is not None and [s.plugin_name for s in built.chain.stages] == ["jwt"]
    scoped = WidgetMCPServer("w", [build(WhoAmI)], auth_issuer_url=ISSUER, auth_required_scopes=["read"])
    assert scoped.chain is not None and [s.plugin_name for s in scoped.chain.stages] == ["jwt", "widget-scopes"]
    assert scoped.server_auth_scopes == ["read"]
