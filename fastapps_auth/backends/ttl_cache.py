"""A bounded cache with a TTL per entry and single-flight loading, for stages that front a slow store.

The entries live in cachetools' ``TLRUCache`` on the injected clock's monotonic time: each
expires after the TTL it was stored with (a pass and a rejection can have different ones),
and when the cache is full the least recently used goes first. What is ours is around it:
concurrent ``get_or_load`` calls for one missing key share one load; a load's exception
reaches every caller and nothing is cached; an invalidation while a load is in flight keeps
that load's (possibly stale) result out of the cache.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from types import TracebackType
from typing import Generic, TypeVar

from cachetools import TLRUCache

from fastapps_auth.clock import SYSTEM_CLOCK, Clock

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _Failed:
    """A load's exception, kept with the traceback it had when the load raised it."""

    __slots__ = ("exc", "tb")

    def __init__(self, exc: Exception) -> None:
        self.exc = exc
        self.tb: TracebackType | None = exc.__traceback__

    def reraise(self) -> Exception:
        # Each waiter raises it from the load's own traceback: one object raised by many waiters
        # would otherwise collect every waiter's frames.
        return self.exc.with_traceback(self.tb)


def _expires(_key: object, entry: tuple[object, float], now: float) -> float:
    return now + entry[1]


class TTLCache(Generic[K, V]):
    """At most ``max_entries`` values, each kept for the TTL it was stored with.

    ``get_or_load`` is the way in; ``invalidate`` and ``clear`` drop entries (and detach loads in
    flight); ``stats`` reports entries, hits, misses, loads and loads in flight.
    """

    __slots__ = ("_entries", "_inflight", "hits", "loads", "max_entries", "misses")

    def __init__(self, max_entries: int, *, clock: Clock | None = None) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        timer = (clock or SYSTEM_CLOCK).monotonic
        self._entries: TLRUCache[K, tuple[V, float], float] = TLRUCache(max_entries, _expires, timer)
        self._inflight: dict[K, asyncio.Future[V | _Failed]] = {}
        self.hits = 0
        self.misses = 0
        self.loads = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: K) -> tuple[bool, V | None]:
        """``(True, value)`` for a live entry, else ``(False, None)``."""
        try:
            return True, self._entries[key][0]
        except KeyError:
            return False, None

    def set(self, key: K, value: V, ttl: float) -> None:
        """Store ``value`` for ``ttl`` seconds (a ``ttl`` that ends no later than now stores nothing)."""
        if ttl > 0:
            self._entries[key] = (value, ttl)

    def invalidate(self, key: K) -> None:
        """Drop ``key``; a load in flight for it is detached (its result will not be stored)."""
        self._entries.pop(key, None)
        self._inflight.pop(key, None)

    def clear(self) -> None:
        """Drop everything (and detach loads in flight, whose results will not be stored)."""
        self._entries.clear()
        self._inflight.clear()

    def stats(self) -> dict[str, int]:
        return {
            "entries": len(self._entries),
            "hits": self.hits,
            "misses": self.misses,
            "loads": self.loads,
            "inflight": len(self._inflight),
        }

    async def get_or_load(self, key: K, load: Callable[[K], Awaitable[V]], ttl: Callable[[V], float]) -> tuple[V, bool]:
        """The cached value and ``True``, or the loaded one and ``False`` (stored for ``ttl(value)`` seconds).

        One load per key at a time; its exception reaches every caller and nothing is
        cached. A caller that is cancelled does not cancel the load for the others.
        """
        try:
            value = self._entries[key][0]  # one lookup (``get`` would make two)
        except KeyError:
            self.misses += 1
        else:
            self.hits += 1
            return value, True
        fut = self._inflight.get(key)
        # A load cancelled before it ran (a loop shutting down) or left on another loop is no load to join.
        if fut is None or fut.done() or fut.get_loop() is not asyncio.get_running_loop():
            fut = asyncio.ensure_future(self._load(key, load, ttl))
            self._inflight[key] = fut
        outcome = await asyncio.shield(fut)
        if isinstance(outcome, _Failed):
            raise outcome.reraise()
        return outcome, False

    async def _load(self, key: K, load: Callable[[K], Awaitable[V]], ttl: Callable[[V], float]) -> V | _Failed:
        self.loads += 1
        me = asyncio.current_task()
        try:
            value = await load(key)
        except Exception as exc:  # returned, not raised: a load nobody waits for any more logs nothing
            return _Failed(exc)
        finally:
            # Still registered means not invalidated meanwhile: only then is the value current enough to keep.
            current = self._inflight.get(key) is me
            if current:
                del self._inflight[key]
        if current:
            self.set(key, value, ttl(value))
        return value
