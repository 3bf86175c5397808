"""The official TypeScript MCP SDK's client signs in to the dev issuer (metadata validated by its zod schemas).

Needs Node.js and the SDK installed somewhere: ``npm install @modelcontextprotocol/sdk`` in a
directory, then ``FASTAPPS_AUTH_TS_SDK=that/directory``. Skipped otherwise (the suite installs
nothing from npm by itself).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fastapps_auth.dev_issuer import RunningIssuer
from fastapps_auth.testing import start_issuer
from tests.support.oauth_server import ProtectedServer, protected_server

SDK_DIR = os.environ.get("FASTAPPS_AUTH_TS_SDK", "")
SCRIPT = Path(__file__).parent / "support" / "ts_sdk_client.mjs"

pytestmark = pytest.mark.skipif(
    not (SDK_DIR and shutil.which("node") and (Path(SDK_DIR) / "node_modules/@modelcontextprotocol/sdk").is_dir()),
    reason="set FASTAPPS_AUTH_TS_SDK to a directory where `npm install @modelcontextprotocol/sdk` ran",
)


@pytest.fixture
def issuer() -> Iterator[RunningIssuer]:
    running = start_issuer()
    yield running
    running.stop()


@pytest.fixture
def server(issuer: RunningIssuer) -> Iterator[ProtectedServer]:
    with protected_server(issuer) as srv:
        yield srv


async def ts_client(server_url: str, tool: str, *grant: str) -> dict[str, Any]:
    node = shutil.which("node") or "node"
    proc = await asyncio.create_subprocess_exec(
        node, str(SCRIPT), SDK_DIR, server_url, tool, *grant,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, err.decode()[-2000:]
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


async def test_the_typescript_sdk_signs_in_with_registration_and_pkce(
    issuer: RunningIssuer, server: ProtectedServer
) -> None:
    got = await ts_client(server.url, "whoami", "code", "alice")
    assert got["result"]["subject"] == "alice" and got["result"]["aud"] == server.url
    assert got["authorization"]["code_challenge_method"] == "S256"
    assert got["authorization"]["resource"] == server.url
    assert got["client_id"].startswith("dcr-") and got["has_secret"] and got["has_refresh_token"]
    assert got["iss"] == issuer.url and got["token_type"] == "Bearer"


async def test_the_typescript_sdk_client_credentials_provider(issuer: RunningIssuer, server: ProtectedServer) -> None:
    client = issuer.client
    got = await ts_client(server.url, "whoami", "client_credentials", client.client_id, client.secret, issuer.url)
    assert got["result"]["subject"] == "dev-client" and got["result"]["aud"] == server.url
