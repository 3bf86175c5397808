"""Batching of concurrent user-status lookups: the batcher, the shared deadlines, the many-key SQL, PostgreSQL."""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from fastapps_auth import ManualClock, VerifierChain
from fastapps_auth.backends.batcher import Batcher
from fastapps_auth.backends.deadlines import Deadlines
from fastapps_auth.backends.postgres import PostgresUserStore
from fastapps_auth.backends.postgres_batch import BatchQuery, batch_query
from fastapps_auth.backends.users import StoreUnavailable
from fastapps_auth.stages.user_status import UserStatusStage, verdict
from tests.support.batching import Backend, failure, settle
from tests.support.tcp_proxy import TCPProxy
from tests.support.user_status import TokenUser, UserStatusChains

#: Bounded waits for events that should come in milliseconds; a hang guard, not a timing assertion.
DEADLINE = 10.0


# -- the batcher ---------------------------------------------------------------------------------------------


async def test_a_lone_lookup_sends_its_own_query_in_its_own_task() -> None:
    tasks: list[asyncio.Task[Any] | None] = []

    async def one(key: str) -> str:
        tasks.append(asyncio.current_task())
        return key

    b = Backend()
    batcher: Batcher[str, str] = Batcher(one, b.many, failure=failure)
    assert [await batcher.load(k) for k in ("a", "b", "c")] == ["a", "b", "c"]
    assert tasks == [asyncio.current_task()] * 3 and b.manys == []  # no task, no queue, no timer


async def test_lookups_arriving_while_a_query_is_in_flight_go_out_together() -> None:
    b = Backend()
    b.gate.clear()
    batcher = b.batcher()
    first = asyncio.ensure_future(batcher.load("a"))
    await settle()
    rest = [asyncio.ensure_future(batcher.load(k)) for k in ("b", "c", "b", "d")]
    await settle()
    assert (b.ones, b.manys, batcher.queued) == (["a"], [], 3)
    b.gate.set()
    assert await first == "row:a"
    assert [await t for t in rest] == ["row:b", "row:c", "row:b", "row:d"]
    assert b.manys == [["b", "c", "d"]]  # the two lookups of b share one slot
    assert (batcher.batches, batcher.batched, batcher.inflight) == (1, 3, 0)


async def test_batches_are_capped_and_keep_arrival_order() -> None:
    b = Backend()
    b.gate.clear()
    batcher = b.batcher(max_batch=3)
    first = asyncio.ensure_future(batcher.load("k0"))
    await settle()
    rest = [asyncio.ensure_future(batcher.load(f"k{i}")) for i in range(1, 8)]
    await settle()
    b.gate.set()
    assert await first == "row:k0"
    assert [await t for t in rest] == [f"row:k{i}" for i in range(1, 8)]
    assert b.manys == [["k1", "k2", "k3"], ["k4", "k5", "k6"]]
    assert b.ones == ["k0", "k7"]  # a batch of one key is a one-key query


async def test_a_failed_batch_fails_each_of_its_lookups_and_only_those() -> None:
    b = Backend()
    b.gate.clear()
    b.fail_many = RuntimeError("boom")
    batcher = b.batcher()
    first = asyncio.ensure_future(batcher.load("a"))
    await settle()
    rest = [asyncio.ensure_future(batcher.load(k)) for k in ("b", "c", "c")]
    await settle()
    b.gate.set()
    assert await first == "row:a"
    errors = await asyncio.gather(*rest, return_exceptions=True)
    assert all(isinstance(e, StoreUnavailable) and str(e) == "failed: RuntimeError" for e in errors)
    assert len({id(e) for e in errors}) == 3  # a fresh exception each
    b.fail_many = None
    assert await batcher.load("b") == "row:b"  # nothing left behind


async def test_a_cancelled_lookup_leaves_the_batch_to_the_others() -> None:
    b = Backend()
    b.gate.clear()
    batcher = b.batcher()
    first = asyncio.ensure_future(batcher.load("a"))
    await settle()
    gone = asyncio.ensure_future(batcher.load("gone"))
    shared = [asyncio.ensure_future(batcher.load("s")) for _ in range(2)]
    await settle()
    gone.cancel()
    shared[0].cancel()
    await settle()
    b.gate.set()
    assert await first == "row:a" and await shared[1] == "row:s"
    assert b.ones == ["a", "s"]  # "gone" was never sent; "s" still was


async def test_values_that_could_fail_a_batch_go_alone() -> None:
    b = Backend()
    b.gate.clear()
    batcher = b.batcher(batchable=lambda k: "\x00" not in k)
    first = asyncio.ensure_future(batcher.load("a"))
    await settle()
    odd = asyncio.ensure_future(batcher.load("x\x00y"))
    await settle()
    assert b.ones == ["a", "x\x00y"] and batcher.queued == 0
    b.gate.set()
    assert (await first, await odd) == ("row:a", "row:x\x00y")


async def test_a_queued_lookup_times_out_by_its_own_deadline() -> None:
    b = Backend()
    b.gate.clear()
    deadlines = Deadlines(1000.0)
    batcher = b.batcher(deadlines=deadlines)
    first = asyncio.ensure_future(batcher.load("a"))
    await settle()
    queued = asyncio.ensure_future(batcher.load("b"))
    await settle()
    assert deadlines.expire(math.inf) == 1  # the queued lookup's; the query in flight bounds itself
    with pytest.raises(TimeoutError):
        await queued
    b.gate.set()
    assert await first == "row:a"
    assert b.ones == ["a"] and b.manys == []  # nobody waited for "b" any more
    assert len(deadlines) == 0


async def test_aclose_fails_what_is_queued_and_stops_batches_in_flight() -> None:
    b = Backend()
    b.gate.clear()
    batcher = b.batcher()
    first = asyncio.ensure_future(batcher.load("a"))
    await settle()
    in_batch = [asyncio.ensure_future(batcher.load(k)) for k in ("b", "c")]
    await settle()
    b.gate.set()
    b.gate = asyncio.Event()  # the batch now hangs in flight
    assert await first == "row:a"
    await settle()
    queued = asyncio.ensure_future(batcher.load("d"))
    await settle()
    await batcher.aclose(StoreUnavailable("closed"))
    for t in [*in_batch, queued]:
        with pytest.raises(StoreUnavailable):
            await t
    assert batcher.inflight == 0


def test_batcher_bounds_must_be_positive() -> None:
    b = Backend()
    with pytest.raises(ValueError, match="at least 1"):
        b.batcher(max_batch=0)


# -- deadlines ---------------------------------------------------------------------------------------------------


async def test_deadlines_run_the_actions_of_what_is_still_running_in_order() -> None:
    ran: list[str] = []
    d = Deadlines(1000.0)
    a = d.start(lambda: ran.append("a"))
    b = d.start(lambda: ran.append("b"))
    c = d.start(lambda: ran.append("c"))
    d.finish(b)
    assert len(d) == 3  # b is finished but behind a running one
    assert d.expire(a.at - 1) == 0
    assert d.expire(math.inf) == 2
    assert ran == ["a", "c"] and (a.expired, b.expired, c.expired) == (True, False, True)
    assert len(d) == 0


async def test_finished_operations_leave_no_entry_behind() -> None:
    d = Deadlines(1000.0)
    for _ in range(1000):
        d.finish(d.start(lambda: None))
    assert len(d) == 0


async def test_a_failing_action_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    ran: list[str] = []

    def boom() -> None:
        raise RuntimeError("boom")

    d = Deadlines(1000.0)
    d.start(boom)
    d.start(lambda: ran.append("after"))
    with caplog.at_level(logging.ERROR):
        assert d.expire(math.inf) == 2
    assert ran == ["after"] and "a deadline action failed" in caplog.text


async def test_the_shared_timer_fires_by_itself() -> None:
    fired = asyncio.Event()
    d = Deadlines(0.001)
    d.finish(d.start(lambda: None))
    deadline = d.start(fired.set)
    async with asyncio.timeout(DEADLINE):
        await fired.wait()
    assert deadline.expired and len(d) == 0


def test_deadlines_need_a_positive_timeout() -> None:
    with pytest.raises(ValueError, match="positive"):
        Deadlines(0)


# -- the many-key query -------------------------------------------------------------------------------------------


HEAD = "SELECT _fa_k._fa_ord, _fa_u.* FROM unnest($1::pg_catalog.text[]) WITH ORDINALITY AS _fa_k(_fa_key, _fa_ord) "


@pytest.mark.parametrize(
    ("query", "per_key"),
    [
        (
            "SELECT active, banned FROM users WHERE id = $1",
            "SELECT active, banned FROM users WHERE id = _fa_k._fa_key",
        ),
        (
            '  select "Active" AS active, u.banned from public."Users" where "Id"=$1 ; ',
            'SELECT "Active" AS active, u.banned FROM public."Users" WHERE "Id" = _fa_k._fa_key',
        ),
        ("SELECT * FROM accounts WHERE email = $1", "SELECT * FROM accounts WHERE email = _fa_k._fa_key"),
        (  # expressions and aggregates run per key inside LATERAL, exactly as in the one-key query
            "SELECT NOT disabled AS active, banned_at IS NOT NULL AS banned FROM accounts WHERE email = $1",
            "SELECT NOT disabled AS active, banned_at IS NOT NULL AS banned FROM accounts WHERE email = _fa_k._fa_key",
        ),
        (
            "SELECT count(*) > 0 AS active FROM users WHERE id = $1",
            "SELECT count(*) > 0 AS active FROM users WHERE id = _fa_k._fa_key",
        ),
    ],
)
def test_the_plain_shape_runs_once_per_key_in_one_statement(query: str, per_key: str) -> None:
    assert batch_query(query) == f"{HEAD}CROSS JOIN LATERAL ({per_key} LIMIT 1) AS _fa_u"


@pytest.mark.parametrize(
    "query",
    [
        "SELECT active FROM users WHERE id = $1 LIMIT 1",
        "SELECT active FROM users WHERE id = $1 OR true",
        "SELECT active FROM users WHERE tenant = 'a' AND id = $1",
        "SELECT active FROM users WHERE lower(email) = $1",
        "SELECT active FROM users WHERE $1 = id",
        "SELECT active FROM users u WHERE u.id = $1",
        "SELECT active FROM users JOIN bans ON true WHERE id = $1",
        "SELECT active FROM users WHERE id = $1; DELETE FROM users",
        "SELECT active FROM users WHERE id = $1 -- comment",
        "SELECT active -- comment\nFROM users WHERE id = $1",
        "SELECT active /* c */ FROM users WHERE id = $1",
        "SELECT 'x' AS active FROM users WHERE id = $1",  # a string could hide anything
        "SELECT $1 = 'admin' AS banned FROM users WHERE id = $1",  # a second $1 would be the whole array
        "SELECT active, $$x$$ AS y FROM users WHERE id = $1",
        "WITH x AS (SELECT 1) SELECT active FROM users WHERE id = $1",
        "SELECT active FROM users WHERE id = $10",
        "UPDATE users SET seen = now() WHERE id = $1 RETURNING active",
    ],
)
def test_anything_else_is_not_batched(query: str) -> None:
    assert batch_query(query) is None


def test_the_shape_check_takes_linear_time_on_long_queries() -> None:
    """A backtracking pattern would hang here (the query option is configuration, but still)."""
    assert batch_query("SELECT " + "a " * 20_000 + "FROM users JOIN b ON true WHERE id = $1") is None
    assert batch_query("SELECT " + "a" * 20_000 + " FROM users WHERE id = $1 x") is None
    assert batch_query("SELECT " + "(a, " * 5_000 + "FROM users u WHERE id = $1") is None


@pytest.mark.parametrize(
    ("key", "unicode", "carried"),
    [
        ("alice", False, True),
        ("x'; DROP TABLE users; --", False, True),
        ("alicé", True, True),
        ("alicé", False, False),  # a server encoding that may not have it
        ("a\x00b", True, False),  # PostgreSQL refuses NUL in text
        ("\ud800", True, False),  # a lone surrogate is not UTF-8
    ],
)
def test_only_values_that_cannot_fail_a_batch_are_carried(key: str, unicode: bool, carried: bool) -> None:
    assert BatchQuery("SELECT 1", unicode=unicode).carries(key) is carried


# -- against the real PostgreSQL ------------------------------------------------------------------------------------


class UsersTable:
    """A uniquely named users table (``id`` of the given SQL type) in database ``test``."""

    def __init__(self, dsn: str, id_type: str = "text") -> None:
        self.dsn = dsn
        self.name = f"batch_users_{uuid.uuid4().hex[:12]}"
        self.id_type = id_type
        self.query = f"SELECT active, banned FROM {self.name} WHERE id = $1"

    async def create(self, users: dict[str, tuple[Any, Any]]) -> None:
        con = await asyncpg.connect(self.dsn)
        try:
            await con.execute(
                f"CREATE TABLE {self.name} (id {self.id_type} PRIMARY KEY, active boolean, banned boolean)"
            )
            await con.executemany(f"INSERT INTO {self.name} VALUES ($1, $2, $3)", [(k, *v) for k, v in users.items()])
        finally:
            await con.close()

    async def drop(self) -> None:
        con = await asyncpg.connect(self.dsn, server_settings={"lock_timeout": "10s"})  # fail, never hang
        try:
            await con.execute(f"DROP TABLE IF EXISTS {self.name}")
        finally:
            await con.close()


MIX = {f"u{i}": (i % 4 != 1, i % 4 == 2) for i in range(300)} | {"nulls": (None, None)}


@pytest.fixture
async def users(postgres_dsn: str) -> AsyncIterator[UsersTable]:
    t = UsersTable(postgres_dsn)
    await t.create(MIX)
    yield t
    await t.drop()


@pytest.fixture
async def build(users: UsersTable, clock: ManualClock) -> AsyncIterator[UserStatusChains]:
    chains = UserStatusChains(clock, dsn=users.dsn, query=users.query, cache_ttl=0, negative_ttl=0)
    yield chains
    await chains.aclose()


def expected(subject: str) -> str | None:
    return verdict({"active": MIX[subject][0], "banned": MIX[subject][1]} if subject in MIX else None)


@pytest.mark.postgres
async def test_concurrent_lookups_of_different_users_are_each_answered_with_fewer_queries(build: Any) -> None:
    chain, stage = build()
    subjects = [*MIX, *(f"nobody{i}" for i in range(50))]
    decisions = await asyncio.gather(*(chain.evaluate(f"user:{s}") for s in subjects))
    assert [d.reason for d in decisions] == [expected(s) for s in subjects]
    assert {expected(s) for s in subjects} == {None, "user_inactive", "user_banned", "user_unknown"}
    stats = stage.stats()
    assert stats["lookups"] == len(subjects)
    assert stats["batches"] >= 1 and stats["queries"] < len(subjects) / 10
    assert stats["queries"] == stats["batches"] + (stats["lookups"] - stats["batched_lookups"])
    assert stats["lookups_queued"] == 0


@pytest.mark.postgres
async def test_sequential_lookups_are_never_held_for_a_batch(build: Any) -> None:
    chain, stage = build()
    for s in ("u0", "u1", "u2", "nobody"):
        assert (await chain.evaluate(f"user:{s}")).reason == expected(s)
    stats = stage.stats()
    assert (stats["queries"], stats["batches"]) == (4, 0)


@pytest.mark.postgres
async def test_concurrent_lookups_of_one_user_share_a_slot(build: Any) -> None:
    chain, stage = build()
    decisions = await asyncio.gather(*(chain.evaluate(f"user:u{i % 3}") for i in range(90)))
    assert [d.reason for d in decisions] == [expected(f"u{i % 3}") for i in range(90)]
    stats = stage.stats()
    assert stats["batched_lookups"] <= 3 * stats["batches"]  # never more slots than distinct users


@pytest.mark.postgres
async def test_with_the_cache_on_lookups_of_one_user_still_share_one_query(build: Any) -> None:
    chain, stage = build(cache_ttl=30, negative_ttl=5)
    decisions = await asyncio.gather(*(chain.evaluate("user:u3") for _ in range(50)))
    assert all(d.allowed for d in decisions)
    assert stage.stats()["queries"] == 1


INJECTIONS = [
    "x'; DROP TABLE {t}; --",
    "u1' OR '1'='1",
    "u1\\",
    'u1"',
    "{u1,u2}",
    "u1,u2",
    "NULL",
    "(u1)",
    "$1",
    " u1",
    "u1 ",
    "U1",
]


@pytest.mark.postgres
async def test_injection_strings_in_a_batch_are_only_data(build: Any, users: UsersTable) -> None:
    chain, stage = build()
    subjects = [s.replace("{t}", users.name) for s in INJECTIONS] + ["u0", "u1", "u2"]
    decisions = await asyncio.gather(*(chain.evaluate(f"user:{s}") for s in subjects))
    assert [d.reason for d in decisions] == [expected(s) for s in subjects]
    assert stage.stats()["batches"] >= 1
    con = await asyncpg.connect(users.dsn)
    try:
        assert await con.fetchval(f"SELECT count(*) FROM {users.name}") == len(MIX)
    finally:
        await con.close()


@pytest.mark.postgres
async def test_a_value_that_would_fail_a_batch_fails_alone(build: Any) -> None:
    chain, stage = build()
    subjects = ["u0", "a\x00b", "u1", "\ud800", "u2", "u3"]
    decisions = await asyncio.gather(*(chain.evaluate(f"user:{s}") for s in subjects))
    # The stage itself answers a value no text column holds: an unknown user, never a store failure.
    assert [d.status for d in decisions] == [200, 401, 401, 401, 401, 200]
    # Asked directly, the store sends such a value alone: it fails, and no batch with it.
    assert isinstance(stage.store, PostgresUserStore)
    got = await answers(stage.store, subjects, together=True)
    assert [g if isinstance(g, str) else verdict(g) for g in got] == [
        None,
        "StoreUnavailable",
        "user_inactive",
        "StoreUnavailable",
        "user_banned",
        None,
    ]
    assert stage.stats()["batches"] >= 1


async def answers(store: PostgresUserStore, keys: list[str], *, together: bool) -> list[Any]:
    """Each key's row (or the failure's class name), looked up all at once or one after another."""

    async def one(k: str) -> Any:
        try:
            return await store.fetch(k)
        except StoreUnavailable:
            return "StoreUnavailable"

    if together:
        return list(await asyncio.gather(*(one(k) for k in keys)))
    return [await one(k) for k in keys]


EQUALITY_PROBES = ["alice", "Alice", "ALICE", "alice ", " alice", "alicé", "alice\u0301", "ß", "SS", "ss", "", "bob"]


@pytest.mark.postgres
@pytest.mark.parametrize("id_type", ["text", "varchar(16)", "char(8)", "text COLLATE {ci}"])
async def test_a_batch_answers_exactly_as_one_query_per_key(postgres_dsn: str, id_type: str) -> None:
    ci = f"ci_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(postgres_dsn)
    await admin.execute(f"CREATE COLLATION {ci} (provider = icu, locale = 'und-u-ks-level2', deterministic = false)")
    t = UsersTable(postgres_dsn, id_type.format(ci=ci))
    try:
        await t.create({"alice": (True, False), "SS": (False, False), "alicé": (True, True)})
        one_by_one = PostgresUserStore(postgres_dsn, query=t.query, batch_max_size=1)
        batched = PostgresUserStore(postgres_dsn, query=t.query, batch_inflight=1)
        try:
            want = await answers(one_by_one, EQUALITY_PROBES, together=False)
            got = await answers(batched, EQUALITY_PROBES, together=True)
            assert got == want
            assert batched.stats()["batches"] >= 1 and one_by_one.stats()["batches"] == 0
        finally:
            await one_by_one.aclose()
            await batched.aclose()
    finally:
        await t.drop()
        await admin.execute(f"DROP COLLATION IF EXISTS {ci}")
        await admin.close()


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("query", "reasons"),
    [
        (  # an aggregate, batched per key: one row even for an unknown user
            "SELECT bool_and(active) AS active, bool_or(banned) AS banned FROM {t} WHERE id = $1",
            [None, "user_inactive", "user_banned", None, "user_inactive"],
        ),
        (
            "SELECT NOT coalesce(banned, false) AND active AS active FROM {t} WHERE id = $1",
            [None, "user_inactive", "user_inactive", None, "user_unknown"],
        ),
    ],
)
async def test_expressions_and_aggregates_are_batched_per_key(
    build: Any, users: UsersTable, query: str, reasons: list[str | None]
) -> None:
    chain, stage = build(query=query.replace("{t}", users.name))
    subjects = ["u0", "u1", "u2", "u3", "nobody"] * 3
    decisions = await asyncio.gather(*(chain.evaluate(f"user:{s}") for s in subjects))
    assert [d.reason for d in decisions] == reasons * 3
    assert stage.stats()["batches"] >= 1


@pytest.mark.postgres
@pytest.mark.parametrize(
    "query",
    [
        "SELECT active, banned FROM {t} WHERE lower(id) = $1",
        "SELECT active, banned AND 'y' = 'y' AS banned FROM {t} WHERE id = $1",
    ],
)
async def test_a_query_that_cannot_be_batched_keeps_one_query_per_lookup(
    build: Any, users: UsersTable, query: str
) -> None:
    chain, stage = build(query=query.replace("{t}", users.name))
    subjects = ["u0", "u1", "u2", "u3", "nobody"]
    decisions = await asyncio.gather(*(chain.evaluate(f"user:{s}") for s in subjects))
    assert [d.reason for d in decisions] == [expected(s) for s in subjects]
    stats = stage.stats()
    assert stats["batches"] == 0 and stats["queries"] == len(subjects)


@pytest.mark.postgres
async def test_a_key_column_that_is_not_text_keeps_one_query_per_lookup(postgres_dsn: str, clock: ManualClock) -> None:
    ids = [str(uuid.uuid4()) for _ in range(6)]
    t = UsersTable(postgres_dsn, "uuid")
    await t.create({i: (True, n % 2 == 1) for n, i in enumerate(ids)})
    stage = UserStatusStage(dsn=postgres_dsn, query=t.query, cache_ttl=0, negative_ttl=0, clock=clock)
    chain = VerifierChain(TokenUser(), stage, clock=clock)
    try:
        await stage.start()  # confirms the many-key query: a uuid parameter is not batched
        assert stage.store.coalesces is False  # type: ignore[attr-defined]
        decisions = await asyncio.gather(*(chain.evaluate(f"user:{i}") for i in ids))
        assert [d.reason for d in decisions] == [None, "user_banned"] * 3
        assert stage.stats()["batches"] == 0
    finally:
        await chain.aclose()
        await t.drop()


# -- failures inside a batch ------------------------------------------------------------------------------------


class HeldBatch:
    """Holds a batch in flight: the table locked, two one-key queries blocked, the rest sent as one batch."""

    def __init__(self, chain: VerifierChain, users: UsersTable) -> None:
        self.chain = chain
        self.users = users
        self.admin: asyncpg.Connection | None = None
        self._lock: Any = None
        self.members: list[asyncio.Future[Any]] = []
        self.blocked: list[asyncio.Future[Any]] = []

    async def __aenter__(self) -> HeldBatch:
        self.admin = await asyncpg.connect(self.users.dsn)
        try:
            self._lock = self.admin.transaction()
            await self._lock.start()
            await self.admin.execute(f"LOCK TABLE {self.users.name} IN ACCESS EXCLUSIVE MODE")
            self.blocked = [asyncio.ensure_future(self.chain.evaluate(f"user:u{i}")) for i in range(2)]
            await settle()
            self.members = [asyncio.ensure_future(self.chain.evaluate(f"user:u{i}")) for i in range(2, 40)]
            await settle()
            self.blocked[0].cancel()  # frees a slot: the queue goes out as one batch, and blocks on the lock too
            await self._wait_for_the_batch()
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def _wait_for_the_batch(self) -> None:
        sql = (
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND query LIKE '%unnest(%' AND position($1 in query) > 0"
        )
        # Another connection: inside the locking transaction, pg_stat_activity would be a frozen snapshot.
        watcher = await asyncpg.connect(self.users.dsn)
        try:
            async with asyncio.timeout(DEADLINE):
                while not await watcher.fetchval(sql, self.users.name):  # noqa: ASYNC110 - the server's view, polled
                    await asyncio.sleep(0.01)
        finally:
            await watcher.close()

    async def execute(self, sql: str) -> None:
        """Run ``sql`` in the locking transaction."""
        assert self.admin is not None
        await self.admin.execute(sql)

    async def release(self, *, commit: bool = False) -> None:
        """End the locking transaction (the blocked queries go on)."""
        lock, self._lock = self._lock, None
        if lock is not None:
            await (lock.commit() if commit else lock.rollback())

    async def __aexit__(self, *exc: object) -> None:
        for t in [*self.blocked, *self.members]:
            t.cancel()
        await asyncio.gather(*self.blocked, *self.members, return_exceptions=True)
        if self.admin is not None:
            await self.release()
            await self.admin.close()


def unavailable(decisions: list[Any]) -> bool:
    return all((d.status, d.error, d.stage) == (503, "temporarily_unavailable", "user-status") for d in decisions)


@pytest.mark.postgres
async def test_a_server_error_inside_a_batch_fails_every_member_transiently(
    build: Any, users: UsersTable, caplog: pytest.LogCaptureFixture
) -> None:
    chain, stage = build(timeout=DEADLINE)
    await stage.start()
    async with HeldBatch(chain, users) as held:
        await held.execute(f"ALTER TABLE {users.name} RENAME COLUMN banned TO banned_at")
        await held.release(commit=True)
        with caplog.at_level(logging.ERROR):
            decisions = await asyncio.gather(*held.members)
    assert unavailable(decisions)
    assert "user query failed on PostgreSQL" in caplog.text
    assert stage.stats()["failures"] >= len(held.members)


@pytest.mark.postgres
async def test_a_timeout_inside_a_batch_fails_every_member_then_recovers(build: Any, users: UsersTable) -> None:
    chain, stage = build(timeout=0.5)
    await stage.start()
    async with HeldBatch(chain, users) as held:
        decisions = await asyncio.gather(*held.members)  # the lock outlasts every lookup's timeout
        assert unavailable(decisions)
        assert all(d.trace[1].error == "StoreUnavailable" for d in decisions)
        await held.release()
        after = await asyncio.gather(*(chain.evaluate(f"user:u{i}") for i in range(2, 40)))
    assert [d.reason for d in after] == [expected(f"u{i}") for i in range(2, 40)]


@pytest.mark.postgres
async def test_a_cut_connection_mid_batch_fails_every_member_then_recovers(
    build: Any, users: UsersTable, pg_proxy: TCPProxy
) -> None:
    dsn = users.dsn.replace("127.0.0.1:5432", f"127.0.0.1:{pg_proxy.port}")
    chain, stage = build(dsn=dsn, timeout=DEADLINE)
    await stage.start()
    async with HeldBatch(chain, users) as held:
        pg_proxy.cut()
        decisions = await asyncio.gather(*held.members)
        assert unavailable(decisions)
        await held.release()
    pg_proxy.restore()
    after = await asyncio.gather(*(chain.evaluate(f"user:u{i}") for i in range(40)))
    assert [d.reason for d in after] == [expected(f"u{i}") for i in range(40)]
    assert stage.stats()["batches"] >= 1


@pytest.mark.postgres
async def test_aclose_fails_queued_lookups_without_hanging(build: Any, users: UsersTable) -> None:
    chain, stage = build(timeout=DEADLINE)
    await stage.start()
    async with HeldBatch(chain, users) as held:
        queued = [asyncio.ensure_future(chain.evaluate(f"user:u{i}")) for i in range(40, 60)]
        await settle()
        assert stage.stats()["lookups_queued"] == 20
        async with asyncio.timeout(DEADLINE):
            await stage.aclose()
            decisions = await asyncio.gather(*held.members, *queued)
    assert unavailable(decisions)
