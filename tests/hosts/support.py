"""What the end-to-end integration tests share: an RSA issuer, an authenticating stage, a uvicorn thread.

Importable from both venvs (the main one and ``.venv-hosts``), so it needs only
joserfc, uvicorn and the package itself.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import httpx
import uvicorn
from joserfc import jwt
from joserfc.jwk import RSAKey

from fastapps_auth import Stage
from fastapps_auth.errors import PluginError
from fastapps_auth.registry import load

ISSUER = "https://issuer.example.com/"
RESOURCE = "http://127.0.0.1/mcp"


class Issuer:
    """An RSA key that mints RS256 tokens, and the JWKS that verifies them (no network)."""

    def __init__(self, kid: str = "test-key") -> None:
        self.key = RSAKey.generate_key(2048, parameters={"kid": kid, "use": "sig", "alg": "RS256"})
        self.kid = kid

    @property
    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.key.as_dict(private=False)]}

    def mint(
        self,
        sub: str = "alice",
        *,
        scope: str = "read",
        aud: str | list[str] = RESOURCE,
        iss: str = ISSUER,
        now: float | None = None,
        ttl: int = 3600,
        **claims: Any,
    ) -> str:
        issued = int(now if now is not None else time.time())
        payload: dict[str, Any] = {
            "sub": sub,
            "iss": iss,
            "aud": aud,
            "iat": issued,
            "exp": issued + ttl,
            "scope": scope,
            "client_id": "test-client",
            **claims,
        }
        return jwt.encode({"alg": "RS256", "kid": self.kid}, payload, self.key)


def jwt_stage(issuer: Issuer, *, audience: str = RESOURCE, **kwargs: Any) -> Stage[Any]:
    """The real ``jwt`` plugin configured with the issuer's inline JWKS."""
    try:
        cls = load("jwt")
    except PluginError as exc:  # pragma: no cover - only while the jwt stage is missing
        raise RuntimeError("the jwt stage is not installed") from exc
    stage = cls(issuer_url=ISSUER, audience=audience, jwks=issuer.jwks, algorithms=["RS256"], **kwargs)
    assert isinstance(stage, Stage)
    return stage


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class ServerThread:
    """A real uvicorn server on 127.0.0.1 in a background thread; ``stop()`` shuts it down."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


class AsyncServer:
    """A real uvicorn server on 127.0.0.1 run as a task of the test's event loop.

    Sharing the loop lets the test close the chain (pools, clients) where it was opened.
    """

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.task: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> AsyncServer:
        import asyncio

        self.task = asyncio.ensure_future(self.server.serve())
        for _ in range(2000):
            if self.server.started:
                return self
            if self.task.done():
                self.task.result()
            await asyncio.sleep(0.01)
        raise RuntimeError("uvicorn did not start")

    async def __aexit__(self, *exc: object) -> None:
        self.server.should_exit = True
        await self.task


def rpc(method: str, params: dict[str, Any] | None = None, id: int = 1) -> dict[str, Any]:
    """A JSON-RPC request body as an MCP client sends it."""
    msg: dict[str, Any] = {"jsonrpc": "2.0", "id": id, "method": method}
    if params is not None:
        msg["params"] = params
    return msg


INITIALIZE = rpc(
    "initialize",
    {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}},
)
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


async def raw(url: str, token: str | None, body: dict[str, Any] | None = None) -> httpx.Response:
    """POST one JSON-RPC message (``initialize`` by default) to ``{url}/mcp``, bearer token optional."""
    headers = {**MCP_HEADERS, **({"Authorization": f"Bearer {token}"} if token else {})}
    async with httpx.AsyncClient(timeout=30) as http:
        return await http.post(f"{url}/mcp", json=body or INITIALIZE, headers=headers)


USERS = [("alice", True, False), ("mallory", True, True), ("carol", True, False)]


class UsersTable:
    """A users table of its own in the shared PostgreSQL (alice active, mallory banned, carol active)."""

    def __init__(self, postgres_dsn: str, proxy_port: int, table: str) -> None:
        self.admin_dsn = postgres_dsn
        self.table = table
        self.dsn = f"postgresql://postgres@127.0.0.1:{proxy_port}/test"
        self.query = f"SELECT active, banned FROM {table} WHERE id = $1"

    async def __aenter__(self) -> UsersTable:
        import asyncpg

        conn = await asyncpg.connect(self.admin_dsn)
        try:
            await conn.execute(f"DROP TABLE IF EXISTS {self.table}")
            await conn.execute(f"CREATE TABLE {self.table} (id text primary key, active bool, banned bool)")
            await conn.executemany(f"INSERT INTO {self.table} VALUES ($1, $2, $3)", USERS)
        finally:
            await conn.close()
        return self

    async def __aexit__(self, *exc: object) -> None:
        import asyncpg

        conn = await asyncpg.connect(self.admin_dsn)
        try:
            await conn.execute(f"DROP TABLE IF EXISTS {self.table}")
        finally:
            await conn.close()
