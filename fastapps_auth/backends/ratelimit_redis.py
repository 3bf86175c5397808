"""Rate-limit state on Redis: one atomic Lua script per check, so processes and machines share a limit.

Time is the Redis server's ``TIME`` read inside the script: every process
charging the same key agrees on "now" without synchronised clocks, and a
check stays one round trip. Keys are ``<prefix>:{<key>}:<rule>``: the hash tag
puts every rule of a key in one Redis Cluster slot, and each key expires when
its state stops mattering, so Redis memory stays bounded by the active keys.
The client connects on first use and reconnects by itself after an outage.

The check packs its EVALSHA command itself (rules' arguments are bytes made
once) and runs it on a connection of its own short idle list, made by redis-py
from the URL: a check costs little more than a PING round trip. The script is loaded on NOSCRIPT (redis-py's
``register_script`` would do the same through its slower generic path).
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection, parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

from fastapps_auth.backends.ratelimit_algorithm import LUA_GCRA, US, Outcome, Rule
from fastapps_auth.clock import Clock

#: Builds an Outcome without NamedTuple's Python-level ``__new__``.
_outcome = tuple.__new__
#: The script's SHA1, under which EVALSHA finds it (the same digest Redis computes).
SCRIPT_SHA = hashlib.sha1(LUA_GCRA.encode()).hexdigest()  # noqa: S324 - a content address, not a secret
_SHA = SCRIPT_SHA.encode()
#: Idle connections a backend keeps (more are opened under load, and closed after use).
MAX_IDLE = 16


class RedisRateLimitBackend:
    """GCRA on Redis via EVALSHA (loading the script on NOSCRIPT: a new server, a restart, a SCRIPT FLUSH).

    ``timeout`` bounds each check, connecting included; a slower or failed check
    raises (``TimeoutError``, ``redis.ConnectionError``) and the stage applies its
    ``on_error``. ``clock`` replaces the server's TIME with the client's wall
    clock (tests drive time with it; production leaves it ``None``).
    """

    def __init__(
        self, url: str, *, timeout: float = 0.1, prefix: str = "fastapps-auth:rl", clock: Clock | None = None
    ) -> None:
        if "{" in prefix or "}" in prefix:
            raise ValueError("the key prefix cannot contain '{' or '}' (they mark the Redis Cluster hash tag)")
        if not timeout > 0:
            raise ValueError("timeout must be positive")
        try:
            parse_url(url)  # a malformed URL is a configuration error now, not a failure at every request
        except ValueError:
            raise ValueError("not a valid Redis URL (redis://[[user]:password@]host[:port][/db])") from None
        self.url = url
        self.timeout = timeout
        self.prefix = prefix
        self.clock = clock
        self._client: aioredis.Redis | None = None
        self._idle: list[AbstractConnection] = []
        self.errors = 0
        self.calls = 0

    def _connect(self) -> aioredis.Redis:
        """The redis-py client: it parses the URL, makes connections, and runs SCRIPT LOAD.

        Synchronous and connection-free (connections dial on first use), so no lock is needed.
        """
        client: aioredis.Redis = aioredis.Redis.from_url(
            self.url,
            socket_connect_timeout=self.timeout,
            retry=Retry(NoBackoff(), 1),  # SCRIPT LOAD on a stale pooled connection: one retry
            health_check_interval=0,
        )
        self._client = client
        return client

    def redis_key(self, key: str, rule: Rule) -> str:
        """The Redis key of ``key``'s state for ``rule``."""
        return f"{self.prefix}:{{{key}}}:{rule.ident}"

    def _command(self, key: str, rules: tuple[Rule, ...]) -> bytes:
        """The EVALSHA command in RESP, packed here: its constant parts are bytes already."""
        tagged = f"{self.prefix}:{{{key}}}:".encode("utf-8", "surrogatepass")
        now = b"" if self.clock is None else str(round(self.clock.time() * US)).encode()
        n = len(rules)
        parts = [b"*%d\r\n$7\r\nEVALSHA\r\n$40\r\n%s\r\n$%d\r\n%d\r\n" % (4 + 3 * n, _SHA, len(str(n)), n)]
        for r in rules:
            k = tagged + r.ident.encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(k), k))
        parts.append(b"$%d\r\n%s\r\n" % (len(now), now))
        parts += [r.packed for r in rules]
        return b"".join(parts)

    async def _call(self, command: bytes) -> Any:
        """Send one packed command on an idle connection (or a new one) and read its reply.

        The backend keeps its own short list of idle connections: redis-py's pool
        checkout costs about a tenth of a round trip. A connection that failed, timed
        out or was cancelled mid-reply is dropped; after a connection error the idle
        ones are dropped too (they are likely as stale) and the command is retried
        once on a new connection.
        """
        pool = (self._client or self._connect()).connection_pool
        idle = self._idle
        for attempt in (0, 1):
            conn = idle.pop() if idle and not attempt else pool.make_connection()  # type: ignore[no-untyped-call]
            try:
                await conn.send_packed_command(command, check_health=False)  # dials if not connected
                reply = await conn.read_response()
            except ResponseError:  # an error reply (NOSCRIPT): the connection is fine
                idle.append(conn)
                raise
            except (RedisConnectionError, OSError):
                await self._drop(conn, *idle)
                idle.clear()
                if attempt:
                    raise
                continue
            except BaseException:
                await self._drop(conn)
                raise
            if len(idle) < MAX_IDLE:
                idle.append(conn)
            else:
                await self._drop(conn)
            return reply
        raise AssertionError("unreachable")

    @staticmethod
    async def _drop(*conns: AbstractConnection) -> None:
        for conn in conns:
            await conn.disconnect(nowait=True)

    async def hit(self, key: str, rules: tuple[Rule, ...]) -> Outcome:
        command = self._command(key, rules)
        self.calls += 1
        try:
            async with asyncio.timeout(self.timeout):
                try:
                    reply = await self._call(command)
                except NoScriptError:  # a new or restarted server, or SCRIPT FLUSH: load it and go on
                    client = self._client or self._connect()
                    await client.script_load(LUA_GCRA)
                    reply = await self._call(command)
        except BaseException:
            self.errors += 1
            raise
        return _outcome(Outcome, (reply[0] == 1, reply[1], reply[2], reply[3]))

    async def ping(self) -> bool:
        """One plain round trip on the check's own connections (``start()`` uses it to connect early)."""
        async with asyncio.timeout(self.timeout):
            return bool(await self._call(b"*1\r\n$4\r\nPING\r\n"))

    async def aclose(self) -> None:
        client, self._client = self._client, None
        idle, self._idle = self._idle, []
        await self._drop(*idle)
        if client is not None:
            await client.aclose()

    def stats(self) -> dict[str, float]:
        return {"calls": float(self.calls), "errors": float(self.errors)}
