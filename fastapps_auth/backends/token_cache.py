"""The verified-token cache: a verification's result reused until a deadline, bounded in size.

Keyed by the token's SHA-256 digest (never the token). Each entry carries its own
deadline (the token's ``exp`` plus leeway, capped by the cache TTL) and the deadline
is checked against the caller's ``now`` on every hit, so an entry is never served
past it. The cache holds at most ``max_entries``; the oldest entry is evicted first.
Plain insertion order, no timers: a miss costs a lookup, an insertion and at most
one eviction, all O(1).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

V = TypeVar("V")


class VerifiedTokenCache(Generic[V]):
    """At most ``max_entries`` values by token digest, each until ``min(expires, stored + ttl)``."""

    __slots__ = ("_entries", "max_entries", "ttl")

    def __init__(self, max_entries: int, ttl: float) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        if not ttl > 0:
            raise ValueError("ttl must be positive")
        self.max_entries = max_entries
        self.ttl = float(ttl)
        self._entries: OrderedDict[bytes, tuple[float, V]] = OrderedDict()

    def get(self, digest: bytes, now: float) -> V | None:
        """The value stored for ``digest`` if its deadline is after ``now``; an expired entry is dropped."""
        entry = self._entries.get(digest)
        if entry is None:
            return None
        if now < entry[0]:
            return entry[1]
        del self._entries[digest]
        return None

    def put(self, digest: bytes, value: V, *, now: float, expires: float) -> None:
        """Store ``value`` until ``expires``, at most ``ttl`` seconds from ``now``; full: the oldest goes."""
        until = now + self.ttl
        if expires < until:
            until = expires
        if until <= now:
            return
        entries = self._entries
        if digest in entries:
            del entries[digest]  # re-stored: it becomes the newest
        elif len(entries) >= self.max_entries:
            entries.popitem(last=False)
        entries[digest] = (until, value)

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        """Forget every entry."""
        self._entries.clear()
