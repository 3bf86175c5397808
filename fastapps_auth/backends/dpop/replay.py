"""The replay cache of DPoP proofs: has this ``jti`` been seen with this key while its proof could still be used?

Entries are a digest of (key thumbprint, ``jti``), never the proof, and each lives only as long as
its proof could be accepted (``ttl``). ``memory://`` is this process's (a bounded ``cachetools``
TLRU cache); ``redis://``, ``rediss://`` and ``unix://`` share one cache between every worker and
machine with one ``SET key 1 NX PX ttl`` per proof, through redis-py's bounded blocking pool.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from typing import TYPE_CHECKING, Protocol, runtime_checkable
from urllib.parse import urlsplit

from cachetools import TLRUCache

from fastapps_auth.clock import SYSTEM_CLOCK, Clock
from fastapps_auth.endpoints import is_loopback
from fastapps_auth.errors import TransientError

if TYPE_CHECKING:
    from redis.asyncio import Redis

SCHEMES = ("memory", "redis", "rediss", "unix")


def replay_key(jkt: str, jti: str) -> bytes:
    """The cache key of a proof: SHA-256 of its key's thumbprint and its ``jti`` (a thumbprint has no NUL)."""
    return hashlib.sha256(jkt.encode("ascii", "replace") + b"\x00" + jti.encode("utf-8", "surrogatepass")).digest()


@runtime_checkable
class ReplayStore(Protocol):
    """Remembers proof keys for ``ttl`` seconds; ``first_use`` is atomic (of two racing callers, one wins)."""

    async def first_use(self, key: bytes, ttl: float) -> bool:
        """True the first time ``key`` is seen within ``ttl``; False for a replay."""
        ...

    async def aclose(self) -> None: ...

    def stats(self) -> dict[str, float]: ...


def _expiry(_key: bytes, ttl: float, now: float) -> float:
    return now + ttl


class MemoryReplayStore:
    """This process's replay cache, bounded by ``max_entries``.

    When every entry is still live the cache does not evict one (that would let its proof be
    replayed): ``first_use`` raises ``TransientError`` and the stage's ``on_error`` applies. Size it
    to the proofs one process accepts per ``max_age`` window.
    """

    def __init__(self, *, max_entries: int = 100_000, clock: Clock = SYSTEM_CLOCK) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._cache: TLRUCache[bytes, float] = TLRUCache(maxsize=max_entries, ttu=_expiry, timer=clock.monotonic)
        self.full = 0

    async def first_use(self, key: bytes, ttl: float) -> bool:
        cache = self._cache
        if key in cache:  # a live entry (TLRUCache checks its expiry)
            return False
        if len(cache) >= cache.maxsize:
            cache.expire()
            if len(cache) >= cache.maxsize:
                self.full += 1
                raise TransientError("the DPoP replay cache is full (raise replay_max_entries or use Redis)")
        cache[key] = ttl
        return True

    async def aclose(self) -> None:
        self._cache.clear()

    def stats(self) -> dict[str, float]:
        return {"replay_entries": float(len(self._cache)), "replay_full": float(self.full)}


class RedisReplayStore:
    """The replay cache on Redis: ``SET <prefix>:<digest> 1 NX PX <ttl>``, one round trip per proof.

    The client connects on first use, through redis-py's ``BlockingConnectionPool`` of at most
    ``max_connections`` (a burst waits for a connection rather than opening more). ``timeout``
    bounds each call, waiting for a connection included; a slow or failed call raises and the
    stage's ``on_error`` applies.
    """

    def __init__(self, url: str, *, prefix: str, timeout: float = 0.2, max_connections: int = 16) -> None:
        from redis.asyncio.connection import parse_url

        if not timeout > 0 or not math.isfinite(timeout):
            raise ValueError("timeout must be a positive number of seconds")
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        try:
            parse_url(url)  # a malformed URL is a configuration error now, not a failure per request
        except ValueError:
            raise ValueError("not a valid Redis URL (redis://[[user]:password@]host[:port][/db])") from None
        self.url = url
        self.prefix = prefix
        self.timeout = timeout
        self.max_connections = max_connections
        self._client: Redis | None = None
        self.calls = 0
        self.errors = 0

    def _connect(self) -> Redis:
        from redis.asyncio import BlockingConnectionPool, Redis

        pool = BlockingConnectionPool.from_url(
            self.url,
            max_connections=self.max_connections,
            timeout=self.timeout,
            socket_timeout=self.timeout,
            socket_connect_timeout=self.timeout,
        )
        client = self._client = Redis.from_pool(pool)
        return client

    def redis_key(self, key: bytes) -> str:
        return f"{self.prefix}:{key.hex()}"

    async def first_use(self, key: bytes, ttl: float) -> bool:
        client = self._client or self._connect()
        self.calls += 1
        try:
            async with asyncio.timeout(self.timeout):
                stored = await client.set(self.redis_key(key), b"1", nx=True, px=max(1, math.ceil(ttl * 1000)))
        except BaseException:
            self.errors += 1
            raise
        return bool(stored)

    async def ping(self) -> None:
        """One round trip: connects now (``start``), or says why it cannot (``probe``)."""
        client = self._client or self._connect()
        async with asyncio.timeout(self.timeout):
            await client.ping()

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def stats(self) -> dict[str, float]:
        return {"replay_calls": float(self.calls), "replay_errors": float(self.errors)}


def open_replay_store(
    uri: str,
    *,
    clock: Clock = SYSTEM_CLOCK,
    max_entries: int = 100_000,
    prefix: str = "fastapps-auth:dpop",
    timeout: float = 0.2,
    max_connections: int = 16,
    allow_plaintext: bool = False,
) -> ReplayStore:
    """The replay store for ``uri``; ``ValueError`` (a readable reason) for one that cannot be used.

    ``redis://`` to a host other than loopback is unencrypted, so it needs ``allow_plaintext``
    (use ``rediss://``). Nothing connects here.
    """
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise ValueError(f"unsupported replay cache {uri.split(':', 1)[0]!r}:// (use memory://, redis://, rediss://)")
    if scheme == "memory":
        return MemoryReplayStore(max_entries=max_entries, clock=clock)
    if scheme == "redis" and not allow_plaintext and not is_loopback(parts.hostname):
        raise ValueError("redis:// to a non-loopback host is unencrypted; use rediss:// or set insecure_backend = true")
    return RedisReplayStore(uri, prefix=prefix, timeout=timeout, max_connections=max_connections)
