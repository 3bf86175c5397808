"""The verified-token cache: a verification's result reused until its deadline, bounded in size.

A ``cachetools.TLRUCache`` keyed by the token's SHA-256 digest (never the token), on the
injected clock's wall time. Each entry's deadline is its token's ``exp`` plus leeway, capped
by the cache TTL from when it was stored; an entry is never served at or past it, a full
cache evicts the least recently used entry, and an entry already past its deadline is not stored.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from cachetools import TLRUCache

from fastapps_auth.access_token import AccessToken


class CachedVerification(NamedTuple):
    """What a hit answers: the access token, the required scopes it lacks, and ``exp`` plus leeway."""

    access_token: AccessToken
    missing: tuple[str, ...]
    expires: float


def verified_token_cache(
    max_entries: int, ttl: float, timer: Callable[[], float]
) -> TLRUCache[bytes, CachedVerification]:
    """At most ``max_entries`` verifications by token digest, each until ``min(expires, stored + ttl)``."""
    if max_entries < 1:
        raise ValueError("max_entries must be at least 1")
    if not ttl > 0:
        raise ValueError("ttl must be positive")
    ttl = float(ttl)

    def until(_digest: bytes, entry: CachedVerification, now: float) -> float:
        return min(entry.expires, now + ttl)

    return TLRUCache(maxsize=max_entries, ttu=until, timer=timer)
