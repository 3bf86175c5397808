"""Rate-limit state on Redis: one atomic Lua script per check, so processes and machines share a limit.

Time is the Redis server's ``TIME`` read inside the script: every process
charging the same key agrees on "now" without synchronised clocks, and a
check stays one round trip. Keys are ``<prefix>:{<key>}:<rule>``: the hash tag
puts every rule of a key in one Redis Cluster slot, and each key expires when
its state stops mattering, so Redis memory stays bounded by the active keys.

Everything goes through redis-py's public API: the client from
``redis_client.make_client`` (its pool, its cluster and Sentinel clients), and
``register_script``, whose EVALSHA reloads the script on NOSCRIPT (a new or
restarted server, a failover, a SCRIPT FLUSH: the script did not run, so running
it then is no second charge). Nothing else is ever resent: a check that failed
after it was sent may have been charged, and it is reported, not repeated.
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.exceptions import AskError

from fastapps_auth.backends import redis_client
from fastapps_auth.backends.ratelimit.algorithm import LUA_GCRA, US, Outcome, Rule
from fastapps_auth.backends.redis_client import CLUSTER_NODE, RedisUnusable, RedisURL, parse_redis_url
from fastapps_auth.clock import Clock

#: The least time ``start()`` and ``probe()`` are given, seconds.
START_TIMEOUT = 5.0


class BackendClosed(RuntimeError):
    """A check after ``aclose()``: a closed backend opens no connection again."""


class BadReply(Exception):
    """Redis answered the script with something that is not its reply (not Redis, or another script)."""


class RedisRateLimitBackend:
    """GCRA on Redis, Redis Cluster or a Sentinel-managed primary, through redis-py.

    ``timeout`` bounds each check, waiting for one of the ``max_connections`` included; a slower
    or failed check raises (``TimeoutError``, ``redis.ConnectionError``, ``RedisUnusable``) and the
    stage applies its ``on_error``. ``clock`` replaces the server's TIME with the client's wall
    clock (tests drive time with it; production leaves it ``None``).
    """

    def __init__(
        self,
        url: str | RedisURL,
        *,
        timeout: float = 0.5,
        prefix: str = "fastapps-auth:rl",
        clock: Clock | None = None,
        max_connections: int = 32,
        warm_connections: int | None = None,
    ) -> None:
        if "{" in prefix or "}" in prefix:
            raise ValueError("the key prefix cannot contain '{' or '}' (they mark the Redis Cluster hash tag)")
        if not timeout > 0:
            raise ValueError("timeout must be positive")
        self.url = parse_redis_url(url) if isinstance(url, str) else url
        self.timeout = timeout
        #: What ``start()`` and ``probe()`` may take: opening every connection, discovering a cluster.
        self.start_timeout = max(2 * timeout, START_TIMEOUT)
        self.prefix = prefix
        self.clock = clock
        #: Connections ``start()`` opens (default: all of them, so a cold burst connects nothing).
        self.warm_connections = max_connections if warm_connections is None else min(warm_connections, max_connections)
        # Every operation here runs under asyncio.timeout(timeout): the client need not time them again.
        self.client = redis_client.make_client(
            self.url, max_connections=max_connections, timeout=timeout, caller_bounds=True
        )
        self.script = self.client.register_script(LUA_GCRA)
        self.max_connections = max_connections
        # A cluster's or Sentinel's pools refuse when exhausted (a single server's pool waits): wait here.
        self._bound = asyncio.Semaphore(max_connections) if redis_client.needs_bound(self.url) else None
        self._tag = f"{prefix}:{{".encode()
        #: Checks in progress (waiting for a connection included), the most at once, and "none now".
        self.in_flight = 0
        self.peak = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.closed = False
        #: A lasting misconfiguration found at start or first use (a cluster node behind redis://).
        self.problem: str | None = None
        self.calls = 0
        self.errors = 0

    def redis_key(self, key: str, rule: Rule) -> str:
        """The Redis key of ``key``'s state for ``rule``."""
        return f"{self.prefix}:{{{key}}}:{rule.ident}"

    async def hit(self, key: str, rules: tuple[Rule, ...]) -> Outcome:
        self.calls += 1
        # bytes: a key may hold a lone surrogate (any JSON string can), which strict UTF-8 refuses
        tagged = self._tag + key.encode("utf-8", "surrogatepass") + b"}:"
        keys = [tagged + r.ident.encode() for r in rules]
        args = [b"" if self.clock is None else b"%d" % round(self.clock.time() * US)]
        for r in rules:
            args += (b"%d" % r.interval, b"%d" % r.tolerance)
        bound = self._bound
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        self._idle.clear()
        try:
            async with asyncio.timeout(self.timeout):
                if bound is not None:
                    await bound.acquire()
                try:
                    if self.closed:  # also after the wait: a closed backend opens nothing
                        raise BackendClosed("the rate-limit backend is closed")
                    if self.problem is not None:
                        raise RedisUnusable(self.problem)
                    reply = await self.script(keys, args)
                finally:
                    if bound is not None:
                        bound.release()
            return _outcome(reply, len(rules))
        except AskError:
            self.errors += 1
            if self.url.kind == "cluster":
                raise
            self.problem = CLUSTER_NODE  # MOVED or ASK to a plain client: the URL should be redis+cluster://
            raise RedisUnusable(CLUSTER_NODE) from None
        except BaseException:
            self.errors += 1
            raise
        finally:
            self.in_flight -= 1
            if not self.in_flight:
                self._idle.set()

    async def start(self) -> None:
        """Connect now: discover a cluster, open the connections, load the script; raise if Redis is unusable.

        Bounded by ``start_timeout`` (opening a whole pool on a busy host takes longer than one check
        may). The stage logs a failure and goes on: checks connect on use.
        """
        if self.closed:
            raise BackendClosed("the rate-limit backend is closed")
        async with asyncio.timeout(self.start_timeout):
            await redis_client.warm(self.client, self.warm_connections)
            if self.url.kind != "cluster" and await redis_client.cluster_enabled(self.client):
                self.problem = CLUSTER_NODE
                raise RedisUnusable(CLUSTER_NODE)
            await self.client.script_load(LUA_GCRA)

    async def probe(self) -> None:
        """Reach Redis once (every primary of a cluster); ``RedisUnusable`` with a one-line reason otherwise."""
        if self.closed:
            raise BackendClosed("the rate-limit backend is closed")
        async with asyncio.timeout(self.start_timeout):
            await redis_client.probe(self.client)

    async def aclose(self) -> None:
        """Refuse new checks, let those in flight end (each is bounded by ``timeout``), close every connection."""
        if self.closed:
            return
        self.closed = True
        try:
            async with asyncio.timeout(self.timeout):
                await self._idle.wait()
        except TimeoutError:
            pass  # closing the client disconnects the connections still in use too
        await redis_client.close(self.client)

    def stats(self) -> dict[str, float]:
        return {
            "calls": float(self.calls),
            "errors": float(self.errors),
            "in_flight": float(self.in_flight),
            "peak_in_flight": float(self.peak),
            "max_connections": float(self.max_connections),
        }


def _outcome(reply: Any, n_rules: int) -> Outcome:
    """The script's ``{allowed, rule, remaining, wait}``, checked: garbage from a server is an error, not a verdict."""
    if type(reply) is list and len(reply) == 4:
        allowed, rule, remaining, wait = reply
        if (
            type(allowed) is type(rule) is type(remaining) is type(wait) is int
            and allowed in (0, 1)
            and 0 <= rule < n_rules
            and remaining >= 0
            and wait >= 0
        ):
            return Outcome(allowed == 1, rule, remaining, wait)
    raise BadReply(f"unexpected reply to the rate-limit script ({type(reply).__name__})")
