"""The MCP SDK 2.x client signs in to a ``WidgetMCPServer`` (served by the main venv: FastApps needs mcp 1.x)
from nothing, against the dev issuer at a root URL, and steps up from a widget's 403 ``insufficient_scope``.

The issuer URL has no path: written through pydantic's ``AnyHttpUrl`` it would gain a ``/`` in the
resource metadata, and the 2.x client, comparing it with the issuer's own metadata exactly, would refuse.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import httpx2
import pytest
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client

from fastapps_auth.dev_issuer import RunningIssuer
from fastapps_auth.testing import HeadlessLogin, MemoryStorage, oauth_client, start_issuer
from tests.hosts.support import free_port

ROOT = Path(__file__).resolve().parents[2]
MAIN_PYTHON = ROOT / ".venv" / "bin" / "python"


@pytest.fixture
def issuer() -> Iterator[RunningIssuer]:
    running = start_issuer()
    yield running
    running.stop()


@pytest.fixture
def widget_server(issuer: RunningIssuer) -> Iterator[str]:
    assert MAIN_PYTHON.exists(), "the main venv serves FastApps: run `make venv`"
    port = free_port()
    process = subprocess.Popen(
        [str(MAIN_PYTHON), "-m", "tests.hosts.widget_app", issuer.url, str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):  # at most 30 s
            if process.poll() is not None:
                raise RuntimeError(
                    f"the widget server exited: {process.stderr.read().decode() if process.stderr else ''}"
                )
            try:
                httpx.get(f"{url}/.well-known/oauth-protected-resource/mcp", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            raise RuntimeError("the widget server did not start")
        yield f"{url}/mcp"
    finally:
        process.terminate()
        process.wait(10)


async def test_the_sdk_2_client_signs_in_to_a_widget_server_and_steps_up(
    issuer: RunningIssuer, widget_server: str
) -> None:
    login = HeadlessLogin("alice")
    async with (
        httpx2.AsyncClient(auth=oauth_client(widget_server, login=login, storage=MemoryStorage()), timeout=30) as http,
        streamable_http_client(widget_server, http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        result = await session.call_tool("reports", {})
    assert result.is_error is False
    assert result.structured_content is not None
    assert result.structured_content["subject"] == "alice"
    assert result.structured_content["aud"] == widget_server  # RFC 8707: the client asked for this resource
    assert "reports:read" in result.structured_content["scopes"]
    assert len(login.requests) == 2  # signed in, then stepped up from the widget's 403 for its scope
    assert "reports:read" in login.requests[-1]["scope"].split()
    assert login.responses[0]["iss"] == issuer.url
