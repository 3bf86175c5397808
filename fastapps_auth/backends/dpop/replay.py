"""The replay cache of DPoP proofs: has this ``jti`` been seen with this key while its proof could still be used?

Entries are a digest of (key thumbprint, ``jti``), never the proof, and each lives only as long as
its proof could be accepted (``ttl``). ``memory://`` is this process's (a bounded ``cachetools``
TLRU cache). Every URL of ``fastapps_auth.backends.redis_client`` (``redis://``, ``rediss://``,
``redis+cluster://``, ``redis+sentinel://``, ``unix://``, the same as the rate limiter's) shares one
cache between every worker and machine with one ``SET key 1 NX PX ttl`` per proof, through the
client ``redis_client.make_client`` builds (a bounded pool; a cluster's or Sentinel's primary).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from cachetools import TLRUCache

from fastapps_auth.backends import redis_client
from fastapps_auth.backends.redis_client import CLUSTER_NODE, RedisUnusable, RedisURL, parse_redis_url
from fastapps_auth.clock import SYSTEM_CLOCK, Clock
from fastapps_auth.errors import TransientError

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster

#: The least time ``ping()`` is given (a cluster's discovery, a Sentinel's query), seconds.
PING_TIMEOUT = 5.0


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

    ``url`` is any URL ``redis_client.parse_redis_url`` accepts (one server, a cluster, Sentinel).
    The client connects on first use, with at most ``max_connections`` per server (a single
    server's pool makes a burst wait for a connection; a cluster's or Sentinel's is bounded here
    by a semaphore). ``timeout`` bounds each call, waiting for a connection included; a slow or
    failed call raises and the stage's ``on_error`` applies. Nothing is resent: a ``SET NX`` that
    may have run would, run again, call the first use a replay.
    """

    def __init__(self, url: str | RedisURL, *, prefix: str, timeout: float = 0.2, max_connections: int = 16) -> None:
        if not timeout > 0 or not math.isfinite(timeout):
            raise ValueError("timeout must be a positive number of seconds")
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        # A malformed URL is a configuration error now, not a failure per request.
        self.url = parse_redis_url(url, allow_plaintext=True) if isinstance(url, str) else url
        self.prefix = prefix
        self.timeout = timeout
        self.max_connections = max_connections
        self._client: Redis | RedisCluster | None = None
        self._bound = asyncio.Semaphore(max_connections) if redis_client.needs_bound(self.url) else None
        #: A lasting misconfiguration found at first use (a cluster node behind redis://).
        self.problem: str | None = None
        self.calls = 0
        self.errors = 0

    def _connect(self) -> Redis | RedisCluster:
        # Every call runs under asyncio.timeout(timeout): the client need not time its socket calls again.
        client = self._client = redis_client.make_client(
            self.url, max_connections=self.max_connections, timeout=self.timeout, caller_bounds=True
        )
        return client

    def redis_key(self, key: bytes) -> str:
        return f"{self.prefix}:{key.hex()}"

    async def first_use(self, key: bytes, ttl: float) -> bool:
        from redis.exceptions import AskError  # MOVED is an AskError: a plain client sent to a cluster node

        client = self._client or self._connect()
        bound = self._bound
        self.calls += 1
        try:
            async with asyncio.timeout(self.timeout):
                if self.problem is not None:
                    raise RedisUnusable(self.problem)
                if bound is not None:
                    await bound.acquire()
                try:
                    stored = await client.set(self.redis_key(key), b"1", nx=True, px=max(1, math.ceil(ttl * 1000)))
                finally:
                    if bound is not None:
                        bound.release()
        except AskError:
            self.errors += 1
            if self.url.kind == "cluster":
                raise
            self.problem = CLUSTER_NODE
            raise RedisUnusable(CLUSTER_NODE) from None
        except BaseException:
            self.errors += 1
            raise
        return bool(stored)

    async def ping(self) -> None:
        """Reach Redis now (every primary of a cluster): ``start`` connects, ``probe`` says why it cannot."""
        client = self._client or self._connect()
        async with asyncio.timeout(max(2 * self.timeout, PING_TIMEOUT)):
            await redis_client.probe(client)

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await redis_client.close(client)

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

    ``memory://``, or a Redis URL (``redis_client``): plaintext to a host other than loopback needs
    ``allow_plaintext`` (``insecure_backend``; use a ``rediss`` scheme). Nothing connects here.
    """
    if uri.split("://", 1)[0].lower() == "memory":
        return MemoryReplayStore(max_entries=max_entries, clock=clock)
    try:
        url = parse_redis_url(uri, allow_plaintext=allow_plaintext, plaintext_option="insecure_backend")
    except ValueError as exc:
        raise ValueError(f"{exc} (or memory://)") from None
    return RedisReplayStore(url, prefix=prefix, timeout=timeout, max_connections=max_connections)
