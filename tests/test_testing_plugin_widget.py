"""The example from docs/testing.md: testing a protected FastApps widget with the plugin's fixtures.

Keep this file and the page in step: the page shows this test, and this suite runs it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapps.builder.compiler import WidgetBuildResult
from fastapps.core.widget import BaseWidget, ClientContext, UserContext
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from pydantic import BaseModel

from fastapps_auth.dev_issuer import RunningIssuer
from fastapps_auth.integrations.fastapps import WidgetMCPServer
from fastapps_auth.stages.scopes import ScopesStage
from fastapps_auth.testing import BackgroundServer, Minter, issuer_chain


class GreetInput(BaseModel):
    name: str


class GreetWidget(BaseWidget):  # type: ignore[misc]  # fastapps ships no type information: BaseWidget is Any
    identifier = "greet"
    title = "Greet"
    input_schema = GreetInput

    async def execute(
        self, input_data: BaseModel, context: ClientContext | None = None, user: UserContext | None = None
    ) -> dict[str, Any]:
        assert isinstance(input_data, GreetInput) and user is not None
        return {"message": f"Hello {input_data.name}, from {user.subject}"}


@pytest.fixture
def mcp_url(dev_issuer: RunningIssuer) -> Iterator[str]:
    """The widget server on 127.0.0.1, trusting the dev issuer; `greet` needs the `greet` scope."""
    chain = issuer_chain(dev_issuer, ScopesStage(tools={"greet": ["greet"]}))
    widget = GreetWidget(WidgetBuildResult(name="greet", hash="0", html="<div id='greet'></div>"))
    server = WidgetMCPServer("greeter", [widget], token_verifier=chain)
    with BackgroundServer(server.get_app(), on_stop=[chain.aclose]) as http:
        yield f"{http.url}/mcp"


async def call_greet(url: str, token: str) -> dict[str, Any]:
    async with (
        httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as http,
        streamable_http_client(url, http_client=http) as (read, write, _),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        result = await session.call_tool("greet", {"name": "Bob"})
        assert result.structuredContent is not None
        return result.structuredContent


async def test_greet_answers_a_token_with_the_scope(mcp_url: str, mint: Minter) -> None:
    data = await call_greet(mcp_url, mint("alice", scopes=["greet"]))
    assert data["message"] == "Hello Bob, from alice"


async def test_greet_refuses_missing_expired_and_underscoped_tokens(mcp_url: str, mint: Minter) -> None:
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "greet", "arguments": {"name": "B"}}}
    headers = {"accept": "application/json, text/event-stream"}
    async with httpx.AsyncClient() as http:
        no_token = await http.post(mcp_url, json=call, headers=headers)
        expired = await http.post(mcp_url, json=call, headers={**headers, "authorization": f"Bearer {mint.expired()}"})
        no_scope = await http.post(mcp_url, json=call, headers={**headers, "authorization": f"Bearer {mint('alice')}"})
    assert no_token.status_code == 401
    assert expired.status_code == 401 and 'error="invalid_token"' in expired.headers["www-authenticate"]
    assert no_scope.status_code == 403 and no_scope.json()["scope"] == "greet"
