"""Interleavings that could hang a request, hand it a stale or foreign answer, or leak a timer.

Orders are forced with ``asyncio.Event`` gates and loop turns, never with sleeps; two event loops
one after the other (``asyncio.run`` twice, as a CLI or pytest-asyncio's per-test loops do) share
one object the way a module-level chain would.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from fastapps_auth.backends.audit_sink import StreamSink
from fastapps_auth.backends.ttl_cache import TTLCache
from fastapps_auth.backends.users import UserStoreOptions
from fastapps_auth.backends.users.sqlite import SqliteUserStore, create_demo_database
from fastapps_auth.clock import ManualClock
from tests.support.user_status import UserStatusChains, settle


def five(_: int) -> float:
    return 5.0


# -- the single-flight cache across event loops ----------------------------------------------------------------


def test_a_load_cancelled_before_it_ran_does_not_poison_its_key() -> None:
    """asyncio.run cancels a load task that never ran; the next loop must load the key afresh."""
    cache: TTLCache[str, int] = TTLCache(10, clock=ManualClock())
    calls: list[str] = []

    async def load(key: str) -> int:
        calls.append(key)
        return 7

    async def shut_down_mid_request() -> None:
        # The request runs once (registering its load) in the loop's last turn; the load never runs.
        asyncio.get_running_loop().create_task(cache.get_or_load("k", load, five))

    asyncio.run(shut_down_mid_request())
    assert calls == []

    async def next_run() -> tuple[int, bool]:
        return await cache.get_or_load("k", load, five)

    assert asyncio.run(next_run()) == (7, False)
    assert cache.stats()["inflight"] == 0 and cache.get("k") == (True, 7)


def test_a_load_left_pending_on_a_closed_loop_is_not_awaited_from_the_next() -> None:
    cache: TTLCache[str, int] = TTLCache(10, clock=ManualClock())
    never = asyncio.Event()

    async def hang(key: str) -> int:
        await never.wait()
        return 0  # pragma: no cover

    async def ok(key: str) -> int:
        return 1

    first = asyncio.new_event_loop()
    request = first.create_task(cache.get_or_load("k", hang, five))
    first.run_until_complete(asyncio.sleep(0))
    assert cache.stats()["inflight"] == 1  # the load is pending on a loop that is no longer running

    async def next_run() -> tuple[int, bool]:
        return await cache.get_or_load("k", ok, five)

    try:
        assert asyncio.run(next_run()) == (1, False)
        assert cache.get("k") == (True, 1)
    finally:
        pending = asyncio.all_tasks(first)  # the request and its load
        for task in pending:
            task.cancel()
        first.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        first.close()
    assert request.cancelled()
    assert cache.get("k") == (True, 1)  # the old load, ended late, stored nothing over the fresh value


class HeldStore(SqliteUserStore):
    """A real SQLite store whose answers, once read, wait for ``gate`` (a result still in transit)."""

    def __init__(self, path: str) -> None:
        super().__init__(UserStoreOptions(dsn=f"sqlite:///{path}"))
        self.gate = asyncio.Event()
        self.gate.set()
        self.read = asyncio.Event()

    async def fetch(self, key: str) -> Mapping[str, Any] | None:
        row = await super().fetch(key)
        self.read.set()
        await self.gate.wait()
        return row


@pytest.mark.parametrize("everything", [False, True])
async def test_an_answer_read_before_an_invalidation_is_not_cached_after_it(
    tmp_path: Path, clock: ManualClock, everything: bool
) -> None:
    db = create_demo_database(tmp_path / "users.db", {"alice": (True, False)})
    store = HeldStore(str(db))
    build = UserStatusChains(clock)
    chain, stage = build(store=store, cache_ttl=300)
    try:
        store.gate.clear()
        before = asyncio.ensure_future(chain.evaluate("user:alice"))
        await store.read.wait()  # alice's row was read as active ...
        with sqlite3.connect(db) as con:  # ... then she is banned, and the application says so
            con.execute("UPDATE users SET banned = 1 WHERE id = 'alice'")
        con.close()
        if everything:
            stage.invalidate_all()
        else:
            stage.invalidate("alice")
        store.gate.set()
        assert (await before).allowed  # it started before the change
        after = await chain.evaluate("user:alice")
        assert (after.allowed, after.reason, after.trace[-1].cache_hit) == (False, "user_banned", False)
        assert (await chain.evaluate("user:alice")).trace[-1].cache_hit is True
    finally:
        await build.aclose()


async def test_a_load_pending_while_the_cache_is_full_never_exceeds_the_bound() -> None:
    clock = ManualClock()
    cache: TTLCache[str, int] = TTLCache(2, clock=clock)
    gate = asyncio.Event()

    async def load(key: str) -> int:
        await gate.wait()
        return len(key)

    cache.set("x", 0, 5.0)
    cache.set("yy", 0, 5.0)
    pending = [asyncio.ensure_future(cache.get_or_load(k, load, five)) for k in ("a", "bb", "ccc")]
    await settle()
    assert (len(cache), cache.stats()["inflight"]) == (2, 3)
    gate.set()
    assert [await t for t in pending] == [(1, False), (2, False), (3, False)]
    assert len(cache) == 2 and cache.get("bb") == (True, 2) and cache.get("ccc") == (True, 3)
    assert cache.stats()["inflight"] == 0


async def test_right_after_expiry_concurrent_callers_share_one_fresh_load() -> None:
    clock = ManualClock()
    cache: TTLCache[str, int] = TTLCache(10, clock=clock)
    gate = asyncio.Event()
    loads: list[int] = []

    async def load(key: str) -> int:
        loads.append(len(loads))
        await gate.wait()
        return len(loads)

    gate.set()
    assert await cache.get_or_load("k", load, five) == (1, False)
    clock.advance(5.0)  # the entry's deadline: gone
    gate.clear()
    callers = [asyncio.ensure_future(cache.get_or_load("k", load, five)) for _ in range(10)]
    await settle()
    gate.set()
    assert [await c for c in callers] == [(2, False)] * 10
    assert loads == [0, 1] and await cache.get_or_load("k", load, five) == (2, True)


async def test_a_failed_load_reaches_every_waiter_and_the_next_caller_loads_again() -> None:
    cache: TTLCache[str, int] = TTLCache(10, clock=ManualClock())
    gate = asyncio.Event()
    outcomes: list[Exception | int] = [ConnectionError("down"), 3]

    async def load(key: str) -> int:
        await gate.wait()
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    waiters = [asyncio.ensure_future(cache.get_or_load("k", load, five)) for _ in range(5)]
    waiters[0].cancel()  # one gives up before the load ends: the others still get its outcome
    await settle()
    gate.set()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert isinstance(results[0], asyncio.CancelledError)
    assert all(isinstance(r, ConnectionError) for r in results[1:])
    assert await cache.get_or_load("k", load, five) == (3, False)
    assert cache.stats()["inflight"] == 0


# -- the audit stream sink ---------------------------------------------------------------------------------------


def test_a_flush_timer_on_a_closed_loop_does_not_hold_the_next_loops_lines(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    sink = StreamSink("file", path=str(path), flush_interval=60)

    async def log(line: bytes) -> asyncio.TimerHandle | None:
        sink.write(line)
        return sink._timer

    stale = asyncio.run(log(b"one\n"))  # the loop closes with the flush timer still pending
    assert stale is not None and not path.exists()

    async def next_run() -> None:
        timer = await log(b"two\n")
        assert timer is not None and timer is not stale, "no flush is scheduled on the running loop"
        timer._run()  # what the loop does when the timer is due
        assert path.read_text() == "one\ntwo\n"

    asyncio.run(next_run())
    sink.close()


def test_a_write_without_a_loop_after_one_closed_flushes_at_once(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    sink = StreamSink("file", path=str(path), flush_interval=60)

    async def log() -> None:
        sink.write(b"one\n")

    asyncio.run(log())
    sink.write(b"two\n")  # synchronous code now: nobody would flush later
    assert path.read_text() == "one\ntwo\n"
    sink.close()


def test_the_exit_flush_writes_lines_whose_loop_is_gone(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    sink = StreamSink("file", path=str(path), flush_interval=60)

    async def log() -> None:
        sink.write(b"one\n")
        sink.write(b"two\n")

    asyncio.run(log())
    sink._at_exit()  # what atexit runs at interpreter exit
    assert path.read_text() == "one\ntwo\n"
    sink.close()
