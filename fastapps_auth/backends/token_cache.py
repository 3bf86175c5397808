"""The verified-token cache: a verification's result reused until its deadline, bounded in size.

A ``cachetools.LRUCache`` keyed by the token's SHA-256 digest (never the token). Each entry
carries its deadline: the token's ``exp`` plus leeway, capped by the cache TTL from when it was
stored. ``lookup`` serves an entry only before its deadline, on the caller's clock, and drops it
at or past it; an entry already past its deadline is not stored; a full cache evicts the least
recently used entry. (Not ``TLRUCache``: its expiry heap makes an insertion into a full cache cost a
few times as much, which took the distinct-token rate below its target; docs/benchmarks/jwt.md
measures both.)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

from cachetools import LRUCache

from fastapps_auth.access_token import AccessToken


class CachedVerification(NamedTuple):
    """What a hit answers: the access token, the required scopes it lacks, and the entry's deadline."""

    access_token: AccessToken
    missing: tuple[str, ...]
    until: float


class VerifiedTokenCache:
    """At most ``max_entries`` verifications by token digest, each until ``min(expires, stored + ttl)``."""

    __slots__ = ("_entries", "ttl")

    def __init__(self, max_entries: int, ttl: float) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        if not ttl > 0:
            raise ValueError("ttl must be positive")
        self.ttl = float(ttl)
        self._entries: LRUCache[bytes, CachedVerification] = LRUCache(maxsize=max_entries)

    def lookup(self, digest: bytes, now: float) -> CachedVerification | None:
        """The entry for ``digest`` if its deadline is after ``now``; one at or past it is dropped."""
        entry = self._entries.get(digest)
        if entry is None or now < entry.until:
            return entry
        del self._entries[digest]
        return None

    def store(
        self, digest: bytes, access_token: AccessToken, missing: tuple[str, ...], *, now: float, expires: float
    ) -> None:
        """Keep a verification until ``expires`` (``exp`` + leeway), at most ``ttl`` seconds from ``now``."""
        until = min(expires, now + self.ttl)
        if until > now:
            self._entries[digest] = CachedVerification(access_token, missing, until)

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._entries)

    def clear(self) -> None:
        """Forget every entry."""
        self._entries.clear()
