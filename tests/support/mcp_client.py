"""One MCP tool call over streamable HTTP with the real MCP client, as a host would make it."""

from __future__ import annotations

from typing import Any

import httpx
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client


async def call(url: str, token: str | None, tool: str, arguments: dict[str, Any] | None = None) -> Any:
    """Open a session on ``url``/mcp (with ``token`` as the bearer, if any), initialize, call ``tool``."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        httpx.AsyncClient(headers=headers, timeout=30) as http,
        streamable_http_client(f"{url}/mcp", http_client=http) as (read, write, _),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        return await session.call_tool(tool, arguments or {})
