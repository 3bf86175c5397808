"""A bounded TTL cache with single-flight loading, for stages that front a slow store.

Entries expire on the injected clock's monotonic time; the oldest entry is evicted
when the cache is full. Concurrent ``get_or_load`` calls for the same missing key
share one load. An invalidation while a load is in flight keeps that load's
(possibly stale) result out of the cache.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Generic, TypeVar

from fastapps_auth.clock import SYSTEM_CLOCK, Clock

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


def _retrieve(fut: asyncio.Future[Any]) -> None:
    """Mark a shared future's exception as seen, so a load nobody waits for logs nothing."""
    if not fut.cancelled():
        fut.exception()


class TTLCache(Generic[K, V]):
    """At most ``max_entries`` values, each kept for the TTL it was stored with."""

    __slots__ = ("_clock", "_data", "_inflight", "hits", "loads", "max_entries", "misses")

    def __init__(self, max_entries: int, *, clock: Clock | None = None) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self._clock = clock or SYSTEM_CLOCK
        self._data: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self._inflight: dict[K, asyncio.Future[V]] = {}
        self.hits = 0
        self.misses = 0
        self.loads = 0

    def __len__(self) -> int:
        return len(self._data)

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    def get(self, key: K) -> tuple[bool, V | None]:
        """``(True, value)`` for a live entry, else ``(False, None)`` (an expired one is dropped)."""
        entry = self._data.get(key)
        if entry is None:
            return False, None
        if entry[0] > self._clock.monotonic():
            return True, entry[1]
        del self._data[key]
        return False, None

    def set(self, key: K, value: V, ttl: float) -> None:
        """Store ``value`` for ``ttl`` seconds (``ttl <= 0`` stores nothing)."""
        if ttl <= 0:
            return
        data = self._data
        data.pop(key, None)
        while len(data) >= self.max_entries:
            data.popitem(last=False)
        data[key] = (self._clock.monotonic() + ttl, value)

    def invalidate(self, key: K) -> None:
        """Drop ``key``; a load in flight for it is detached (its result will not be stored)."""
        self._data.pop(key, None)
        self._inflight.pop(key, None)

    def clear(self) -> None:
        """Drop everything (and detach loads in flight, whose results will not be stored)."""
        self._data.clear()
        self._inflight.clear()

    async def get_or_load(self, key: K, load: Callable[[K], Awaitable[V]], ttl: Callable[[V], float]) -> tuple[V, bool]:
        """The cached value and ``True``, or the loaded one and ``False``.

        One load per key at a time; its exception reaches every caller and nothing is
        cached. A caller that is cancelled does not cancel the load for the others.
        """
        entry = self._data.get(key)
        if entry is not None:
            if entry[0] > self._clock.monotonic():
                self.hits += 1
                return entry[1], True
            del self._data[key]
        self.misses += 1
        fut = self._inflight.get(key)
        # A load cancelled before it ran (a loop shutting down) or left on another loop is no load to join.
        if fut is None or fut.done() or fut.get_loop() is not asyncio.get_running_loop():
            fut = asyncio.ensure_future(self._load(key, load, ttl))
            fut.add_done_callback(_retrieve)
            self._inflight[key] = fut
        return await asyncio.shield(fut), False

    async def _load(self, key: K, load: Callable[[K], Awaitable[V]], ttl: Callable[[V], float]) -> V:
        self.loads += 1
        me = asyncio.current_task()
        try:
            value = await load(key)
        except BaseException:
            if self._inflight.get(key) is me:
                del self._inflight[key]
            raise
        # Still registered means not invalidated meanwhile: only then is the value current enough to keep.
        if self._inflight.get(key) is me:
            del self._inflight[key]
            self.set(key, value, ttl(value))
        return value
