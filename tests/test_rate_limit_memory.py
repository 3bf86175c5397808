"""The memory backend's bounds: at most ``max_keys`` keys, idle ones forgotten first, under 150 bytes a key."""

from __future__ import annotations

import sys
import tracemalloc

from fastapps_auth.backends.ratelimit.algorithm import US, Rule
from fastapps_auth.backends.ratelimit.memory import MemoryRateLimitBackend
from fastapps_auth.clock import ManualClock


def test_memory_keys_never_exceed_max_keys_and_active_keys_survive(clock: ManualClock) -> None:
    store = MemoryRateLimitBackend(max_keys=1000, clock=clock)
    rules = (Rule.make(1, 3600),)
    assert store.hit_now("hot", rules).allowed
    for i in range(20_000):
        store.hit_now(f"user-{i}", rules)
        assert len(store) <= 1000
        if i % 100 == 0:  # the hot user keeps coming back: it is never forgotten, so stays limited
            assert not store.hit_now("hot", rules).allowed
    assert store.rotations > 0 and store.dropped > 0
    assert store.stats()["keys"] == len(store)


def test_memory_forgets_idle_keys_first(clock: ManualClock) -> None:
    store = MemoryRateLimitBackend(max_keys=10, clock=clock)
    rules = (Rule.make(1, 3600),)
    store.hit_now("idle", rules)
    for i in range(10):
        store.hit_now(f"k{i}", rules)
    assert store.peek("idle") is None  # forgotten after max_keys/2 newer keys arrived twice over
    assert store.peek("k9") is not None


def _deep_size(store: MemoryRateLimitBackend) -> int:
    """Bytes held by the store's dicts, keys and values, rounded to pymalloc's 16-byte blocks."""
    total = 0
    for d in (store._young, store._old):
        total += sys.getsizeof(d)
        for k, v in d.items():
            total += -(-sys.getsizeof(k) // 16) * 16 + -(-sys.getsizeof(v) // 16) * 16
    return total


def test_memory_per_key_is_at_most_150_bytes_over_a_million_keys(clock: ManualClock) -> None:
    store = MemoryRateLimitBackend(max_keys=1_000_000, clock=clock)
    rules = (Rule.make(10_000, 3600),)
    hit = store.hit_now
    for i in range(1_000_000):
        hit(f"user-{i:07d}", rules)  # 12-character keys, like short subjects
    assert len(store) == 1_000_000
    per_key = _deep_size(store) / 1_000_000
    assert per_key <= 150, per_key


def test_tracemalloc_agrees_with_the_size_accounting(clock: ManualClock) -> None:
    """What the allocator really handed out (keys included), on a sample small enough to trace quickly."""
    store = MemoryRateLimitBackend(max_keys=1_000_000, clock=clock)
    rules = (Rule.make(10_000, 3600),)
    n = 60_000
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(n):
            store.hit_now(f"user-{i:07d}", rules)
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert used / n <= 150, used / n
    assert abs(used - _deep_size(store)) / used < 0.1


def test_tats_are_integer_microseconds_of_the_injected_clock(clock: ManualClock) -> None:
    store = MemoryRateLimitBackend(clock=clock)
    rules = (Rule.make(4, 2),)
    start = store.now()
    assert start == round(clock.monotonic() * US)  # to the nearest microsecond
    store.hit_now("a", rules)
    assert store.peek("a") == start + 500_000
