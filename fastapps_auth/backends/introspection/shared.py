"""Introspection answers shared between workers in Redis: one key per token digest, gone at its deadline.

What is stored is only what a worker needs to decide the same way: the answer (the authorization
server's JSON object, never the token) and the wall-clock deadline until which it may be reused,
under ``<prefix>:<digest hex>`` with a Redis TTL that ends at that deadline, and an HMAC-SHA256 of
the key, answer and deadline under ``key``: an entry that anyone without ``key`` wrote or altered
(a co-tenant of the Redis, an entry copied to another token's key) is not believed. Redis still
sees the answers (subjects, scopes): it is trusted with their confidentiality, not their truth. Any URL that
``redis_client`` accepts works (one server, Cluster, Sentinel, unix socket), through redis-py's own
clients. Every call is bounded by ``timeout``; a failure raises, and the stage then asks the
endpoint itself: the cache is a saving, never the source of a decision.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import math
from typing import TYPE_CHECKING, Any

from fastapps_auth.backends import redis_client
from fastapps_auth.backends.redis_client import RedisURL, parse_redis_url

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster


class SharedAnswers:
    """``get``/``put`` of (answer, deadline) by token digest in Redis; the client connects on first use."""

    def __init__(
        self, url: str | RedisURL, *, prefix: str, key: bytes, timeout: float = 0.2, max_connections: int = 16
    ) -> None:
        if not timeout > 0 or not math.isfinite(timeout):
            raise ValueError("timeout must be a positive number of seconds")
        if len(key) < 16:
            raise ValueError("the entries' key must be at least 16 bytes")
        self._mac_key = key
        self.url = parse_redis_url(url) if isinstance(url, str) else url
        self.prefix = prefix
        self.timeout = timeout
        self.max_connections = max_connections
        self._client: Redis | RedisCluster | None = None
        self._bound = asyncio.Semaphore(max_connections)
        self.hits = 0
        self.errors = 0

    def _redis(self) -> Redis | RedisCluster:
        if self._client is None:
            self._client = redis_client.make_client(
                self.url, max_connections=self.max_connections, timeout=self.timeout, caller_bounds=True
            )
        return self._client

    def key(self, digest: bytes) -> str:
        return f"{self.prefix}:{digest.hex()}"

    async def get(self, digest: bytes) -> tuple[dict[str, Any], float] | None:
        """The stored (answer, deadline) for ``digest``, ``None`` if there is none (or it is unreadable)."""
        try:
            async with self._bound, asyncio.timeout(self.timeout):
                raw = await self._redis().get(self.key(digest))
        except Exception:
            self.errors += 1
            raise
        if raw is None:
            return None
        try:
            item = json.loads(raw)
            answer, until, mac = item["a"], item["u"], item["m"]
        except (ValueError, TypeError, KeyError):
            return None  # written by something else: asked again, then overwritten
        if type(answer) is not dict or type(until) not in (int, float) or type(mac) is not str:
            return None
        if not hmac.compare_digest(mac, self._mac(digest, answer, until)):
            return None  # not written by a holder of the key
        self.hits += 1
        return answer, float(until)

    def _mac(self, digest: bytes, answer: dict[str, Any], until: float) -> str:
        """The entry's tag: its key, answer and deadline, serialised the one way both ends agree on."""
        body = json.dumps([self.key(digest), answer, until], sort_keys=True, separators=(",", ":"))
        return hmac.new(self._mac_key, body.encode(), hashlib.sha256).hexdigest()

    async def put(self, digest: bytes, answer: dict[str, Any], *, until: float, ttl: float) -> None:
        """Keep ``answer`` for ``ttl`` seconds (until the wall-clock ``until``); nothing for ``ttl <= 0``."""
        ms = int(ttl * 1000)
        if ms <= 0:
            return
        value = json.dumps({"a": answer, "u": until, "m": self._mac(digest, answer, until)}, separators=(",", ":"))
        try:
            async with self._bound, asyncio.timeout(self.timeout):
                await self._redis().set(self.key(digest), value, px=ms)
        except Exception:
            self.errors += 1
            raise

    async def probe(self) -> None:
        """Reach Redis once; ``RedisUnusable`` with a one-line reason if it cannot be used."""
        await redis_client.probe(self._redis())

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await redis_client.close(client)
