"""Interleavings that could hang a request, hand it a stale or foreign answer, or leak a timer.

Orders are forced with ``asyncio.Event`` gates and loop turns, never with sleeps; two event loops
one after the other (``asyncio.run`` twice, as a CLI or pytest-asyncio's per-test loops do) share
one object the way a module-level chain would.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from fastapps_auth.backends.audit_sink import StreamSink
from fastapps_auth.backends.batcher import Batcher
from fastapps_auth.backends.deadlines import Deadlines
from fastapps_auth.backends.sqlite import SqliteUserStore, create_demo_database
from fastapps_auth.backends.ttl_cache import TTLCache
from fastapps_auth.backends.users import DEFAULT_QUERY, StoreUnavailable
from fastapps_auth.clock import ManualClock
from tests.support.batching import Backend, failure, settle
from tests.support.user_status import UserStatusChains


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
    assert cache.inflight == 0 and cache.get("k") == (True, 7)


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
    assert cache.inflight == 1  # the load is pending on a loop that is no longer running

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
        super().__init__(path, query=DEFAULT_QUERY)
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
    assert (len(cache), cache.inflight) == (2, 3)
    gate.set()
    assert [await t for t in pending] == [(1, False), (2, False), (3, False)]
    assert len(cache) == 2 and cache.get("bb") == (True, 2) and cache.get("ccc") == (True, 3)
    assert cache.inflight == 0


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
    assert cache.inflight == 0


# -- the batcher -------------------------------------------------------------------------------------------------


async def test_a_lookup_queued_while_aclose_stops_a_batch_is_answered() -> None:
    b = Backend(held=True)
    batcher: Batcher[str, str] = Batcher(b.one, b.many, failure=failure)  # no deadlines: only an answer ends it
    first = asyncio.ensure_future(batcher.load("a"))
    await settle()
    in_batch = [asyncio.ensure_future(batcher.load(k)) for k in ("b", "c")]
    await settle()
    b.gate.set()
    b.gate = asyncio.Event()  # the batch of b and c now hangs in flight
    assert await first == "row:a"
    await settle()
    assert b.manys == [["b", "c"]]
    closing = asyncio.ensure_future(batcher.aclose(StoreUnavailable("closed")))
    late = asyncio.ensure_future(batcher.load("d"))  # runs after aclose cancelled the batch, before it stopped
    await closing
    await settle()
    assert late.done(), "a lookup queued behind a stopped batch waits forever"
    for t in [*in_batch, late]:
        with pytest.raises(StoreUnavailable):
            await t
    assert (batcher.inflight, batcher.queued) == (0, 0)


async def test_a_batch_ended_by_a_stray_cancellation_leaves_no_lookup_behind() -> None:
    """A batch that dies of a CancelledError not aimed at it (a shared future cancelled) hands the queue on."""
    b = Backend(held=True)
    shared = asyncio.get_running_loop().create_future()

    async def many(keys: Sequence[str]) -> list[str]:
        b.manys.append(list(keys))
        await shared  # cancelled by its owner, not by anyone waiting for this batch
        return [f"row:{k}" for k in keys]

    batcher: Batcher[str, str] = Batcher(b.one, many, failure=failure)
    first = asyncio.ensure_future(batcher.load("a"))
    await settle()
    in_batch = [asyncio.ensure_future(batcher.load(k)) for k in ("b", "c")]
    await settle()
    b.gate.set()
    assert await first == "row:a"
    await settle()
    queued = asyncio.ensure_future(batcher.load("d"))  # behind the batch in flight
    await settle()
    assert (b.manys, batcher.queued) == ([["b", "c"]], 1)
    shared.cancel()
    for t in in_batch:
        with pytest.raises(StoreUnavailable):
            await t
    await settle()
    assert queued.done(), "a lookup queued behind a failed batch waits forever"
    assert await queued == "row:d"
    assert (batcher.inflight, batcher.queued) == (0, 0)


async def test_every_lookup_gets_its_own_answer_exactly_once_under_churn() -> None:
    """Many keys, tiny batches, two slots, failures, cancellations and timeouts: each lookup ends once, rightly."""
    rng = random.Random(7)
    gates: list[asyncio.Event] = []
    fail: set[str] = {f"k{i}" for i in range(0, 60, 7)}

    async def one(key: str) -> str:
        gate = asyncio.Event()
        gates.append(gate)
        await gate.wait()
        if key in fail:
            raise ConnectionError(key)
        return f"row:{key}"

    async def many(keys: Sequence[str]) -> list[str]:
        gate = asyncio.Event()
        gates.append(gate)
        await gate.wait()
        if any(k in fail for k in keys):
            raise ConnectionError(",".join(keys))
        return [f"row:{k}" for k in keys]

    deadlines = Deadlines(1000.0)
    batcher: Batcher[str, str] = Batcher(one, many, failure=failure, max_batch=3, max_inflight=2, deadlines=deadlines)
    keys = [f"k{rng.randrange(60)}" for _ in range(300)]
    lookups: list[asyncio.Future[str]] = []
    for i, key in enumerate(keys):
        lookups.append(asyncio.ensure_future(batcher.load(key)))
        if rng.random() < 0.3:
            await asyncio.sleep(0)
        if rng.random() < 0.1 and lookups:
            rng.choice(lookups).cancel()
        if rng.random() < 0.3 and gates:
            gates.pop(rng.randrange(len(gates))).set()
        if i % 50 == 49:
            deadlines.expire(0.0)  # nothing is due yet: a no-op
    while not all(t.done() for t in lookups):
        assert batcher.inflight <= 2
        if gates:
            gates.pop(0).set()
        await asyncio.sleep(0)
    assert (batcher.inflight, batcher.queued, len(deadlines)) == (0, 0, 0)
    assert batcher.batches > 10 and any(t.cancelled() for t in lookups)
    for key, t in zip(keys, lookups, strict=True):
        if t.cancelled():
            continue
        exc = t.exception()
        if exc is None:
            assert t.result() == f"row:{key}" and key not in fail
        else:
            assert isinstance(exc, ConnectionError | StoreUnavailable)


async def test_a_deadline_due_after_the_answer_changes_nothing() -> None:
    b = Backend(held=True)
    deadlines = Deadlines(1000.0)
    batcher: Batcher[str, str] = Batcher(b.one, b.many, failure=failure, deadlines=deadlines)
    first = asyncio.ensure_future(batcher.load("a"))
    await settle()
    queued = asyncio.ensure_future(batcher.load("b"))
    await settle()
    b.gate.set()
    assert await first == "row:a"
    await asyncio.sleep(0)
    await asyncio.sleep(0)  # the batch answered "b"; its waiter may not have run yet
    deadlines.expire(float("inf"))
    assert await queued == "row:b"
    assert len(deadlines) == 0


async def test_the_shared_timer_is_not_rearmed_once_nothing_runs() -> None:
    d = Deadlines(1000.0)
    d.finish(d.start(lambda: None))
    assert d._timer is not None
    d._fire()  # the one timer comes due with nothing left running
    assert d._timer is None and len(d) == 0


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
