"""Where rate-limit state lives: the backend protocol, and opening a backend by URI.

``memory://`` keeps state in this process (bounded by ``max_keys``); the Redis
schemes (``redis://``, ``redis+cluster://``, ``redis+sentinel://``, their
``rediss`` forms, ``unix://``; see ``fastapps_auth.backends.redis_client``)
share it between processes and machines through one Lua script per check. The
algorithm is ``algorithm.check``, the same for both. redis-py is imported only
when a Redis URI is opened.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from fastapps_auth.backends.ratelimit.algorithm import Outcome, Rule
from fastapps_auth.backends.redis_client import SCHEMES as REDIS_SCHEMES
from fastapps_auth.backends.redis_client import parse_redis_url
from fastapps_auth.clock import SYSTEM_CLOCK, Clock

SCHEMES = ("memory", *REDIS_SCHEMES)
#: Seconds a Redis check may take, waiting for a free connection included (docs/stages/rate-limit.md says why).
DEFAULT_TIMEOUT = 0.5
#: Connections (and commands in flight) per process and Redis server.
DEFAULT_MAX_CONNECTIONS = 32


@runtime_checkable
class RateLimitBackend(Protocol):
    """Checks one request for ``key`` against ``rules`` atomically (all rules admit, or none is charged).

    A backend may also have ``async start()`` (connect now; may raise) and ``async probe()``
    (reach the service once; raise with a one-line reason): the stage calls them if present.
    """

    async def hit(self, key: str, rules: tuple[Rule, ...]) -> Outcome: ...

    async def aclose(self) -> None: ...

    def stats(self) -> dict[str, float]: ...


def check_uri(uri: str, *, allow_plaintext: bool = False) -> str:
    """The scheme of a supported backend URI; ``ValueError`` (a readable reason) otherwise.

    A plaintext Redis URL to a host other than loopback sends counters in clear text, so it
    needs ``allow_plaintext`` (use ``rediss://`` for TLS).
    """
    scheme = uri.partition("://")[0].lower()
    if scheme == "memory":
        if uri.lower() != "memory://":
            raise ValueError("memory:// takes nothing after the scheme")
        return scheme
    if scheme not in REDIS_SCHEMES:
        known = ", ".join(f"{s}://" for s in SCHEMES)
        shown = f"{scheme[:20]}://" if "://" in uri else "(not a URI)"  # the rest may hold a password
        raise ValueError(f"unsupported backend {shown!r} (use {known})")
    parse_redis_url(uri, allow_plaintext=allow_plaintext)
    return scheme


def open_rate_limit_backend(
    uri: str,
    *,
    clock: Clock = SYSTEM_CLOCK,
    max_keys: int = 100_000,
    timeout: float = DEFAULT_TIMEOUT,
    prefix: str = "fastapps-auth:rl",
    allow_plaintext: bool = False,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
) -> RateLimitBackend:
    """The backend for ``uri``. Nothing is connected here: Redis connects at ``start()`` or on first use.

    ``clock`` drives the memory backend; Redis uses the server's TIME so that every
    process agrees. ``timeout`` bounds each Redis check, waiting for a connection included.
    """
    scheme = check_uri(uri, allow_plaintext=allow_plaintext)
    if scheme == "memory":
        from fastapps_auth.backends.ratelimit.memory import MemoryRateLimitBackend

        return MemoryRateLimitBackend(max_keys=max_keys, clock=clock)
    from fastapps_auth.backends.ratelimit.redis import RedisRateLimitBackend

    return RedisRateLimitBackend(
        parse_redis_url(uri, allow_plaintext=allow_plaintext),
        timeout=timeout,
        prefix=prefix,
        max_connections=max_connections,
    )
