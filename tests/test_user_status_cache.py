"""The bounded TTL cache behind the user-status stage: expiry, bound, single-flight, invalidation."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
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


@settings(max_examples=120, deadline=None)
@given(ops=OPS, bound=st.integers(1, 4))
def test_matches_a_reference_model(ops: list[tuple[object, ...]], bound: int) -> None:
    """Expiry and invalidation as a dict model; the bound only ever removes entries, oldest first."""
    clock = ManualClock()
    cache: TTLCache[str, int] = TTLCache(bound, clock=clock)
    model: dict[str, tuple[float, int]] = {}  # insertion order = age
    for op in ops:
        kind = op[0]
        if kind == "set":
            _, key, value, ttl = op
            assert isinstance(key, str) and isinstance(value, int) and isinstance(ttl, float)
            cache.set(key, value, ttl)
            if ttl > 0:
                model.pop(key, None)
                while len(model) >= bound:
                    model.pop(next(iter(model)))
                model[key] = (clock.monotonic() + ttl, value)
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
    assert cache.inflight == 2
    gate.set()
    assert await asyncio.gather(*good) == [("X", False)] * 20
    results = await asyncio.gather(*bad, return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)
    assert calls == ["x", "bad"]
    assert await cache.get_or_load("x", load, lambda v: 5.0) == ("X", True)
    assert cache.get("bad") == (False, None)  # failures are not cached
    assert cache.inflight == 0


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
    assert cache.inflight == 2
    gate.set()
    assert await a == (1, False) and await bb == (2, False) and await late == (1, False)
    assert cache.get("bb") == (True, 2)
    assert cache.get("a") == (True, 1)  # stored by the fresh load only
    assert cache.loads == 3
