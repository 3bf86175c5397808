"""Where rate-limit state lives: the backend protocol, and opening a backend by URI.

``memory://`` keeps state in this process (bounded by ``max_keys``);
``redis://``, ``rediss://`` and ``unix://`` share it between processes and
machines through one Lua script per check. Drivers are imported only when
their scheme is used.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable
from urllib.parse import urlsplit

from fastapps_auth.backends.ratelimit_algorithm import Outcome, Rule
from fastapps_auth.clock import SYSTEM_CLOCK, Clock
from fastapps_auth.endpoints import is_loopback

SCHEMES = ("memory", "redis", "rediss", "unix")


@runtime_checkable
class RateLimitBackend(Protocol):
    """Checks one request for ``key`` against ``rules`` atomically (all rules admit, or none is charged)."""

    async def hit(self, key: str, rules: tuple[Rule, ...]) -> Outcome: ...

    async def aclose(self) -> None: ...

    def stats(self) -> dict[str, float]: ...


def check_uri(uri: str, *, allow_plaintext: bool = False) -> str:
    """The scheme of a supported backend URI; ``ValueError`` (a readable reason) otherwise.

    ``redis://`` to a host other than loopback sends counters in clear text, so it
    needs ``allow_plaintext`` (use ``rediss://`` for TLS).
    """
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise ValueError(f"unsupported backend {uri.split(':', 1)[0]!r}:// (use memory://, redis://, rediss://)")
    if scheme == "redis" and not allow_plaintext and not is_loopback(parts.hostname):
        raise ValueError("redis:// to a non-loopback host is unencrypted; use rediss:// or set insecure_backend = true")
    return scheme


def open_rate_limit_backend(
    uri: str,
    *,
    clock: Clock = SYSTEM_CLOCK,
    max_keys: int = 100_000,
    timeout: float = 0.1,
    prefix: str = "fastapps-auth:rl",
    allow_plaintext: bool = False,
) -> RateLimitBackend:
    """The backend for ``uri``. Nothing is connected here: Redis connects on first use.

    ``clock`` drives the memory backend; Redis uses the server's TIME so that every
    process agrees. ``timeout`` bounds each Redis round trip, connecting included.
    """
    scheme = check_uri(uri, allow_plaintext=allow_plaintext)
    if scheme == "memory":
        from fastapps_auth.backends.ratelimit_memory import MemoryRateLimitBackend

        return MemoryRateLimitBackend(max_keys=max_keys, clock=clock)
    from fastapps_auth.backends.ratelimit_redis import RedisRateLimitBackend

    return RedisRateLimitBackend(uri, timeout=timeout, prefix=prefix)
