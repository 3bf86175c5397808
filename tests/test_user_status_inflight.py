"""user-status lookups in flight on the real PostgreSQL: many at once, a failure mid-query, aclose under load."""

from __future__ import annotations

import asyncio
import gc
import logging
import uuid
import warnings
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from fastapps_auth import ManualClock, VerifierChain
from fastapps_auth.stages.user_status import verdict
from tests.support.tcp_proxy import TCPProxy
from tests.support.user_status import UserStatusChains

pytestmark = pytest.mark.postgres

#: Bounded waits for events that should come in milliseconds; a hang guard, not a timing assertion.
DEADLINE = 10.0

MIX = {f"u{i}": (i % 4 != 1, i % 4 == 2) for i in range(300)} | {"nulls": (None, None)}


class UsersTable:
    """A uniquely named users table in database ``test``, dropped afterwards."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.name = f"users_{uuid.uuid4().hex[:12]}"
        self.query = f"SELECT active, banned FROM {self.name} WHERE id = $1"

    async def create(self) -> None:
        con = await asyncpg.connect(self.dsn)
        try:
            await con.execute(f"CREATE TABLE {self.name} (id text PRIMARY KEY, active boolean, banned boolean)")
            await con.executemany(f"INSERT INTO {self.name} VALUES ($1, $2, $3)", [(k, *v) for k, v in MIX.items()])
        finally:
            await con.close()

    async def drop(self) -> None:
        con = await asyncpg.connect(self.dsn, server_settings={"lock_timeout": "10s"})  # fail, never hang
        try:
            await con.execute(f"DROP TABLE IF EXISTS {self.name}")
        finally:
            await con.close()


@pytest.fixture
async def users(postgres_dsn: str) -> AsyncIterator[UsersTable]:
    t = UsersTable(postgres_dsn)
    await t.create()
    yield t
    await t.drop()


@pytest.fixture
async def build(users: UsersTable, clock: ManualClock) -> AsyncIterator[UserStatusChains]:
    chains = UserStatusChains(clock, dsn=users.dsn, query=users.query, cache_ttl=0, negative_ttl=0)
    yield chains
    await chains.aclose()


def expected(subject: str) -> str | None:
    return verdict({"active": MIX[subject][0], "banned": MIX[subject][1]} if subject in MIX else None)


# -- many lookups at once --------------------------------------------------------------------------------------


async def test_concurrent_lookups_of_different_users_are_each_answered_rightly(build: Any) -> None:
    chain, stage = build()
    subjects = [*MIX, *(f"nobody{i}" for i in range(50))]
    decisions = await asyncio.gather(*(chain.evaluate(f"user:{s}") for s in subjects))
    assert [d.reason for d in decisions] == [expected(s) for s in subjects]
    assert {expected(s) for s in subjects} == {None, "user_inactive", "user_banned", "user_unknown"}
    stats = stage.stats()
    assert stats["lookups"] == stats["queries"] == len(subjects) and stats["pool_size"] <= 10


async def test_with_the_cache_off_every_lookup_is_its_own_query(build: Any) -> None:
    chain, stage = build()
    decisions = await asyncio.gather(*(chain.evaluate(f"user:u{i % 3}") for i in range(90)))
    assert [d.reason for d in decisions] == [expected(f"u{i % 3}") for i in range(90)]
    assert stage.stats()["queries"] == 90  # none took the answer of a read already in flight


async def test_with_the_cache_on_lookups_of_one_user_share_one_query(build: Any) -> None:
    chain, stage = build(cache_ttl=30, negative_ttl=5)
    decisions = await asyncio.gather(*(chain.evaluate("user:u3") for _ in range(50)))
    assert all(d.allowed for d in decisions)
    assert stage.stats()["queries"] == 1


INJECTIONS = ["x'; DROP TABLE {t}; --", "u1' OR '1'='1", "u1\\", 'u1"', "{u1,u2}", "NULL", "$1", " u1", "U1"]


async def test_injection_strings_looked_up_together_are_only_data(build: Any, users: UsersTable) -> None:
    chain, _ = build()
    subjects = [s.replace("{t}", users.name) for s in INJECTIONS] + ["u0", "u1", "u2"]
    decisions = await asyncio.gather(*(chain.evaluate(f"user:{s}") for s in subjects))
    assert [d.reason for d in decisions] == [expected(s) for s in subjects]
    con = await asyncpg.connect(users.dsn)
    try:
        assert await con.fetchval(f"SELECT count(*) FROM {users.name}") == len(MIX)
    finally:
        await con.close()


# -- failures while lookups are in flight ------------------------------------------------------------------------


class HeldLookups:
    """Holds lookups in flight inside the server: the table locked, lookups blocked on the lock."""

    def __init__(self, chain: VerifierChain, users: UsersTable, count: int) -> None:
        self.chain = chain
        self.users = users
        self.count = count
        self.admin: asyncpg.Connection | None = None
        self._lock: Any = None
        self.lookups: list[asyncio.Future[Any]] = []

    async def __aenter__(self) -> HeldLookups:
        self.admin = await asyncpg.connect(self.users.dsn)
        try:
            self._lock = self.admin.transaction()
            await self._lock.start()
            await self.admin.execute(f"LOCK TABLE {self.users.name} IN ACCESS EXCLUSIVE MODE")
            self.lookups = [asyncio.ensure_future(self.chain.evaluate(f"user:u{i}")) for i in range(self.count)]
            await self._wait_blocked()
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def _wait_blocked(self) -> None:
        sql = (
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND query LIKE 'SELECT active, banned FROM %' AND position($1 in query) > 0"
        )
        # Another connection: inside the locking transaction, pg_stat_activity would be a frozen snapshot.
        watcher = await asyncpg.connect(self.users.dsn)
        try:
            async with asyncio.timeout(DEADLINE):
                while await watcher.fetchval(sql, self.users.name) < self.count:  # noqa: ASYNC110 - polled
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
        for t in self.lookups:
            t.cancel()
        await asyncio.gather(*self.lookups, return_exceptions=True)
        if self.admin is not None:
            await self.release()
            await self.admin.close()


def unavailable(decisions: list[Any]) -> bool:
    return all((d.status, d.error, d.stage) == (503, "temporarily_unavailable", "user-status") for d in decisions)


async def test_a_server_error_fails_every_lookup_in_flight_transiently(
    build: Any, users: UsersTable, caplog: pytest.LogCaptureFixture
) -> None:
    chain, stage = build(timeout=DEADLINE, pool_max_size=5)
    async with HeldLookups(chain, users, 5) as held:
        await held.execute(f"ALTER TABLE {users.name} RENAME COLUMN banned TO banned_at")
        await held.release(commit=True)
        with caplog.at_level(logging.ERROR):
            decisions = await asyncio.gather(*held.lookups)
    assert unavailable(decisions)
    assert "user query failed on PostgreSQL" in caplog.text
    assert stage.stats()["failures"] == 5


async def test_a_timeout_fails_every_lookup_in_flight_then_lookups_recover(build: Any, users: UsersTable) -> None:
    chain, _ = build(timeout=0.5, pool_max_size=5)
    async with HeldLookups(chain, users, 5) as held:
        decisions = await asyncio.gather(*held.lookups)  # the lock outlasts every lookup's timeout
        assert unavailable(decisions)
        assert all(d.trace[1].error == "StoreUnavailable" for d in decisions)
        await held.release()
        after = await asyncio.gather(*(chain.evaluate(f"user:u{i}") for i in range(40)))
    assert [d.reason for d in after] == [expected(f"u{i}") for i in range(40)]


async def test_a_cut_connection_fails_every_lookup_in_flight_then_lookups_recover(
    build: Any, users: UsersTable, pg_proxy: TCPProxy
) -> None:
    dsn = users.dsn.replace("127.0.0.1:5432", f"127.0.0.1:{pg_proxy.port}")
    chain, _ = build(dsn=dsn, timeout=DEADLINE, pool_max_size=5)
    async with HeldLookups(chain, users, 5) as held:
        pg_proxy.cut()
        decisions = await asyncio.gather(*held.lookups)
        assert unavailable(decisions)
        await held.release()
    pg_proxy.restore()
    after = await asyncio.gather(*(chain.evaluate(f"user:u{i}") for i in range(40)))
    assert [d.reason for d in after] == [expected(f"u{i}") for i in range(40)]


# -- closing with lookups in flight --------------------------------------------------------------------------------


async def backends(dsn: str, app: str) -> int:
    con = await asyncpg.connect(dsn)
    try:
        n: int = await con.fetchval("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", app)
        return n
    finally:
        await con.close()


async def test_aclose_with_lookups_in_flight_closes_every_socket_and_opens_nothing_again(
    build: Any, users: UsersTable, pg_proxy: TCPProxy
) -> None:
    app = f"fa_{uuid.uuid4().hex[:10]}"
    dsn = f"postgresql://postgres@127.0.0.1:{pg_proxy.port}/test?application_name={app}"
    chain, stage = build(dsn=dsn, timeout=2.0, pool_max_size=5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        async with HeldLookups(chain, users, 5) as held:
            assert await backends(users.dsn, app) == 5
            async with asyncio.timeout(DEADLINE):
                await stage.aclose()
                decisions = await asyncio.gather(*held.lookups)
            assert unavailable(decisions)
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert stage.closed and len(pg_proxy._writers) == 0  # every socket through the proxy is closed
    dialled = pg_proxy.connections
    d = await chain.evaluate("user:u0")
    assert (d.status, d.error) == (503, "temporarily_unavailable")
    await stage.start()  # a closed stage opens nothing, not even from start()
    assert pg_proxy.connections == dialled
    async with asyncio.timeout(DEADLINE):
        while await backends(users.dsn, app):  # noqa: ASYNC110 - the server drops closed backends asynchronously
            await asyncio.sleep(0.02)
