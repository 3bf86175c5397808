"""The MCP SDK 2.x client signs in to the dev issuer: ``OAuthClientProvider`` from nothing against an
``MCPServer`` behind the chain (registration, code + PKCE, RFC 9207 ``iss``, the resource as ``aud``),
then steps up for a scope. Runs in ``.venv/hosts`` (``make test-hosts``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import MCPServer

from fastapps_auth import VerifierChain
from fastapps_auth.dev_issuer import RunningIssuer
from fastapps_auth.integrations.mcp import protect, token_verifier
from fastapps_auth.stages.scopes import ScopesStage
from fastapps_auth.testing import BackgroundServer, HeadlessLogin, MemoryStorage, jwt_stage, oauth_client, start_issuer


@pytest.fixture
def issuer() -> Iterator[RunningIssuer]:
    running = start_issuer()
    yield running
    running.stop()


@pytest.fixture
def server_url(issuer: RunningIssuer) -> Iterator[str]:
    chains: list[VerifierChain] = []

    def build(base: str) -> Any:
        resource = f"{base}/mcp"
        chain = VerifierChain(jwt_stage(issuer, audience=resource), ScopesStage(tools={"report": ["reports:read"]}))
        chains.append(chain)
        server = MCPServer(
            "protected",
            token_verifier=token_verifier(chain, resource_url=resource),
            # Strings, not AnyHttpUrl(...): pydantic's default adds a "/" to a root URL, and the 2.x client
            # compares the metadata's issuer with the resource metadata's server exactly (RFC 8414 §3.3).
            auth=AuthSettings.model_validate(
                {"issuer_url": issuer.url, "resource_server_url": resource, "validate_token_resource": True}
            ),
        )

        @server.tool()
        def whoami() -> str:
            at = get_access_token()
            return f"{getattr(at, 'subject', None)} {getattr(at, 'claims', {}).get('aud')}"

        @server.tool()
        def report() -> str:
            return "Q3: 42"

        return protect(server.streamable_http_app(stateless_http=True), chain, resource_url=resource)

    with BackgroundServer(build, factory=True, on_stop=[lambda: chains[0].aclose()]) as http:
        yield f"{http.url}/mcp"


async def test_the_sdk_2_client_signs_in_and_steps_up(issuer: RunningIssuer, server_url: str) -> None:
    login = HeadlessLogin("alice")
    storage = MemoryStorage()
    async with (
        httpx2.AsyncClient(auth=oauth_client(server_url, login=login, storage=storage), timeout=30) as http,
        streamable_http_client(server_url, http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        who = await session.call_tool("whoami", {})
        report = await session.call_tool("report", {})
    assert who.is_error is False and who.content[0].text == f"alice {server_url}"  # type: ignore[union-attr]
    assert report.is_error is False
    assert [r["code_challenge_method"] for r in login.requests] == ["S256", "S256"]
    assert "reports:read" in login.requests[-1]["scope"].split()
    assert login.responses[0]["iss"] == issuer.url  # the 2.x client checks RFC 9207's iss against the metadata
    assert storage.client_info is not None and storage.client_info.client_id
