"""The bounded TTL cache behind the user-status stage: expiry, bound, single-flight, invalidation."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fastapps_auth.backends.ttl_cache import TTLCache
from fastapps_auth.clock import ManualClock

KEYS = st.sampled_from(["a", "b", "c", "d", "e"])
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("set"), KEYS, st.integers(0, 10), st.floats(0, 20)),
        st.tuples(st.just("advance"), st.floats(0, 15)),
        st.tuples(st.just("get"), KEYS),
        st.tuples(st.just("invalidate"), KEYS),
        st.tuples(st.just("clear")),
    ),
    max_size=60,
)


def inflight(cache: TTLCache[str, Any]) -> int:
    return cache.stats()["inflight"]


@settings(max_examples=120, deadline=None)
@given(ops=OPS, bound=st.integers(1, 4))
# A TTL so small that now + ttl == now: the entry is expired at once, stored nowhere and evicts nothing.
@example(ops=[("set", "a", 0, 1.0), ("set", "c", 0, 1.0), ("set", "b", 0, 3.9e-245), ("get", "a")], bound=2)
def test_matches_a_reference_model(ops: list[tuple[object, ...]], bound: int) -> None:
    """Expiry and invalidation as a dict model; when full, expired entries go first, then the least recently used."""
    clock = ManualClock()
    cache: TTLCache[str, int] = TTLCache(bound, clock=clock)
    model: dict[str, tuple[float, int]] = {}  # order = last use, oldest first
    for op in ops:
        kind = op[0]
        if kind == "set":
            _, key, value, ttl = op
            assert isinstance(key, str) and isinstance(value, int) and isinstance(ttl, float)
            cache.set(key, value, ttl)
            now = clock.monotonic()
            if now + ttl > now:
                model.pop(key, None)
                for k in [k for k, (expires, _) in model.items() if expires <= now]:
                    del model[k]
                while len(model) >= bound:
                    model.pop(next(iter(model)))
                model[key] = (now + ttl, value)
        elif kind == "advance":
            assert isinstance(op[1], float)
            clock.advance(op[1])
        elif kind == "get":
            key = op[1]
            assert isinstance(key, str)
            entry = model.get(key)
            if entry is not None and entry[0] <= clock.monotonic():
                del model[key]
                entry = None
            if entry is not None:
                model[key] = model.pop(key)  # used: now the most recent
            assert cache.get(key) == ((True, entry[1]) if entry else (False, None))
        elif kind == "invalidate":
            assert isinstance(op[1], str)
            cache.invalidate(op[1])
            model.pop(op[1], None)
        else:
            cache.clear()
            model.clear()
        assert len(cache) <= bound


async def test_single_flight_and_shared_failure() -> None:
    cache: TTLCache[str, str] = TTLCache(10, clock=ManualClock())
    gate = asyncio.Event()
    calls: list[str] = []

    async def load(key: str) -> str:
        calls.append(key)
        await gate.wait()
        if key == "bad":
            raise ConnectionError("down")
        return key.upper()

    good = [asyncio.ensure_future(cache.get_or_load("x", load, lambda v: 5.0)) for _ in range(20)]
    bad = [asyncio.ensure_future(cache.get_or_load("bad", load, lambda v: 5.0)) for _ in range(5)]
    await asyncio.sleep(0)
    assert inflight(cache) == 2
    gate.set()
    assert await asyncio.gather(*good) == [("X", False)] * 20
    results = await asyncio.gather(*bad, return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)
    assert calls == ["x", "bad"]
    assert await cache.get_or_load("x", load, lambda v: 5.0) == ("X", True)
    assert cache.get("bad") == (False, None)  # failures are not cached
    assert inflight(cache) == 0


async def test_a_cancelled_caller_does_not_cancel_the_shared_load() -> None:
    cache: TTLCache[str, int] = TTLCache(10, clock=ManualClock())
    gate = asyncio.Event()

    async def load(key: str) -> int:
        await gate.wait()
        return 7

    first = asyncio.ensure_future(cache.get_or_load("k", load, lambda v: 1.0))
    second = asyncio.ensure_future(cache.get_or_load("k", load, lambda v: 1.0))
    await asyncio.sleep(0)
    first.cancel()
    gate.set()
    assert await second == (7, False)
    with pytest.raises(asyncio.CancelledError):
        await first
    assert cache.get("k") == (True, 7)


def test_zero_ttl_stores_nothing_and_bound_must_be_positive() -> None:
    cache: TTLCache[str, int] = TTLCache(1)
    cache.set("a", 1, 0)
    assert len(cache) == 0
    with pytest.raises(ValueError, match="max_entries"):
        TTLCache(0)


async def test_invalidating_one_key_spares_other_loads_in_flight() -> None:
    cache: TTLCache[str, int] = TTLCache(10, clock=ManualClock())
    gate = asyncio.Event()

    async def load(key: str) -> int:
        await gate.wait()
        return len(key)

    a = asyncio.ensure_future(cache.get_or_load("a", load, lambda v: 5.0))
    bb = asyncio.ensure_future(cache.get_or_load("bb", load, lambda v: 5.0))
    await asyncio.sleep(0)
    cache.invalidate("a")
    late = asyncio.ensure_future(cache.get_or_load("a", load, lambda v: 5.0))  # a fresh load, not the detached one
    await asyncio.sleep(0)
    assert inflight(cache) == 2
    gate.set()
    assert await a == (1, False) and await bb == (2, False) and await late == (1, False)
    assert cache.get("bb") == (True, 2)
    assert cache.get("a") == (True, 1)  # stored by the fresh load only
    assert cache.stats()["loads"] == 3


async def test_every_waiter_gets_the_load_exception_with_a_traceback_of_its_own_length() -> None:
    """Many waiters raise one exception object: its traceback must not collect all their frames."""
    cache: TTLCache[str, int] = TTLCache(10, clock=ManualClock())
    gate = asyncio.Event()

    async def load(key: str) -> int:
        await gate.wait()
        raise ConnectionError("down")

    async def caller() -> int:
        try:
            await cache.get_or_load("k", load, lambda v: 5.0)
        except ConnectionError as exc:
            depth, tb = 0, exc.__traceback__
            while tb is not None:
                depth, tb = depth + 1, tb.tb_next
            return depth
        raise AssertionError("no failure")

    callers = [asyncio.ensure_future(caller()) for _ in range(50)]
    await asyncio.sleep(0)
    gate.set()
    depths = await asyncio.gather(*callers)
    assert len(set(depths)) == 1 and depths[0] < 10  # before: the 50th waiter's traceback held 50 waiters' frames
    assert cache.get("k") == (False, None)


def test_a_full_cache_drops_the_least_recently_used() -> None:
    clock = ManualClock()
    cache: TTLCache[str, int] = TTLCache(2, clock=clock)
    cache.set("a", 1, 10)
    cache.set("b", 2, 10)
    assert cache.get("a") == (True, 1)  # a is used again: b is now the least recently used
    cache.set("c", 3, 10)
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == ((True, 1), (False, None), (True, 3))


def test_a_full_cache_drops_expired_entries_before_live_ones() -> None:
    clock = ManualClock()
    cache: TTLCache[str, int] = TTLCache(2, clock=clock)
    cache.set("short", 1, 1)
    cache.set("long", 2, 100)
    cache.get("short")
    clock.advance(2)
    cache.set("new", 3, 10)
    assert (cache.get("long"), cache.get("new"), len(cache)) == ((True, 2), (True, 3), 2)
