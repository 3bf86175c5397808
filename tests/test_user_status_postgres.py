"""The user-status stage against the real PostgreSQL: pool, NOTIFY invalidation, reconnect, outages."""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from fastapps_auth import ManualClock
from fastapps_auth.stages.user_status import UserStatusStage, verdict
from tests.support.tcp_proxy import TCPProxy
from tests.support.user_status import UserStatusChains
from tests.test_user_status import USERS

pytestmark = pytest.mark.postgres

DOC = Path(__file__).resolve().parent.parent / "docs" / "stages" / "user-status.md"
#: Bounded waits for events that should come in milliseconds; a hang guard, not a timing assertion.
DEADLINE = 10.0


class Table:
    """A uniquely named users table in database ``test``, dropped afterwards."""

    def __init__(self, dsn: str, name: str) -> None:
        self.dsn = dsn
        self.name = name
        self.channel = f"{name}_changes"
        self.query = f"SELECT active, banned FROM {name} WHERE id = $1"

    async def execute(self, sql: str, *args: Any) -> None:
        con = await asyncpg.connect(self.dsn)
        try:
            await con.execute(sql, *args)
        finally:
            await con.close()

    async def set_user(self, user: str, *, active: bool | None = True, banned: bool | None = False) -> None:
        await self.execute(
            f"INSERT INTO {self.name} (id, active, banned) VALUES ($1, $2, $3) "
            "ON CONFLICT (id) DO UPDATE SET active = EXCLUDED.active, banned = EXCLUDED.banned",
            user,
            active,
            banned,
        )

    async def notify(self, payload: str) -> None:
        await self.execute("SELECT pg_notify($1, $2)", self.channel, payload)


@pytest.fixture
async def table(postgres_dsn: str) -> AsyncIterator[Table]:
    t = Table(postgres_dsn, f"users_{uuid.uuid4().hex[:12]}")
    con = await asyncpg.connect(postgres_dsn)
    try:
        await con.execute(f"CREATE TABLE {t.name} (id text PRIMARY KEY, active boolean, banned boolean)")
        await con.executemany(f"INSERT INTO {t.name} VALUES ($1, $2, $3)", [(k, a, b) for k, (a, b) in USERS.items()])
        yield t
    finally:
        await con.execute(f"DROP TABLE IF EXISTS {t.name} CASCADE")
        await con.execute(f"DROP FUNCTION IF EXISTS {t.name}_notify() CASCADE")
        await con.execute(f"DROP FUNCTION IF EXISTS {t.name}_notify_all() CASCADE")
        await con.close()


@pytest.fixture
async def make(table: Table, clock: ManualClock) -> AsyncIterator[UserStatusChains]:
    chains = UserStatusChains(clock, dsn=table.dsn, query=table.query)
    yield chains
    await chains.aclose()


def proxied(dsn: str, proxy: TCPProxy) -> str:
    return dsn.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")


def recorder(stage: UserStatusStage) -> tuple[list[str | None], Callable[[Callable[[str | None], bool]], Any]]:
    """Invalidations seen by ``stage``, and a waiter for one that matches."""
    seen: list[str | None] = []
    changed = asyncio.Event()

    def hook(key: str | None) -> None:
        seen.append(key)
        changed.set()

    stage.on_invalidate(hook)

    async def wait_for(match: Callable[[str | None], bool]) -> None:
        async with asyncio.timeout(DEADLINE):
            while not any(match(k) for k in seen):
                changed.clear()
                await changed.wait()

    return seen, wait_for


# -- the rule, through the pool ----------------------------------------------------------------------------


async def test_rules_against_postgres(make: Any) -> None:
    chain, _ = make()
    for user, (active, banned) in USERS.items():
        d = await chain.evaluate(f"user:{user}")
        assert d.reason == verdict({"active": active, "banned": banned}), user
    d = await chain.evaluate("user:nobody")
    assert (d.reason, d.status, d.error, d.description) == ("user_unknown", 401, "invalid_token", "account disabled")


async def test_sql_injection_is_only_data(make: Any, table: Table, postgres_dsn: str) -> None:
    chain, _ = make(cache_ttl=0, negative_ttl=0)
    assert (await chain.evaluate(f"user:x'; DROP TABLE {table.name}; --")).reason == "user_unknown"
    assert (await chain.evaluate("user:alice' OR '1'='1")).reason == "user_unknown"
    con = await asyncpg.connect(postgres_dsn)
    assert await con.fetchval(f"SELECT count(*) FROM {table.name}") == len(USERS)
    await con.close()


@pytest.mark.parametrize("reset", ["light", "full"])
async def test_one_pooled_connection_serves_many_lookups(
    make: Any, table: Table, pg_proxy: TCPProxy, reset: str
) -> None:
    chain, stage = make(dsn=proxied(table.dsn, pg_proxy), cache_ttl=0, negative_ttl=0, pool_reset=reset)
    assert pg_proxy.connections == 0  # nothing opens before first use
    for _ in range(30):
        assert (await chain.evaluate("user:alice")).allowed
        assert (await chain.evaluate("user:carol")).reason == "user_banned"
    assert pg_proxy.connections == 1
    assert stage.stats()["queries"] == 60


async def test_pool_closes_on_aclose(make: Any, table: Table, postgres_dsn: str) -> None:
    app = f"fa_{uuid.uuid4().hex[:10]}"
    chain, stage = make(dsn=f"{table.dsn}?application_name={app}", pool_min_size=2, pool_max_size=2)
    con = await asyncpg.connect(postgres_dsn)
    count = "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1"
    try:
        assert await con.fetchval(count, app) == 0
        assert (await chain.evaluate("user:alice")).allowed
        assert await con.fetchval(count, app) == 2  # the pool opened at first use, with pool_min_size connections
        await stage.start()
        assert await con.fetchval(count, app) == 2  # already open: start() opens nothing more
        await stage.aclose()
        async with asyncio.timeout(DEADLINE):
            while await con.fetchval(count, app):  # noqa: ASYNC110 - the server's view, polled
                await asyncio.sleep(0.02)
        await stage.aclose()  # idempotent
        assert (await chain.evaluate("user:bob")).status == 503
    finally:
        await con.close()


@pytest.mark.parametrize("ttl", [30.0, 0.0], ids=["cache-on", "cache-off"])
async def test_a_thousand_concurrent_users_are_all_answered_correctly(make: Any, table: Table, ttl: float) -> None:
    users = {f"m{i}": (i % 3 != 1, i % 3 == 2) for i in range(1000)}
    con = await asyncpg.connect(table.dsn)
    await con.executemany(f"INSERT INTO {table.name} VALUES ($1, $2, $3)", [(k, a, b) for k, (a, b) in users.items()])
    await con.close()
    # A generous per-lookup timeout: 1000 queued lookups on a shared 2-core machine are load, not an outage.
    chain, stage = make(timeout=30, pool_max_size=10, cache_ttl=ttl, negative_ttl=ttl)
    decisions = await asyncio.gather(*(chain.evaluate(f"user:{u}") for u in users))
    assert [d.reason for d in decisions] == [verdict({"active": a, "banned": b}) for a, b in users.values()]
    stats = stage.stats()
    assert stats["pool_size"] <= 10 and stats["lookups"] == 1000


async def test_missing_table_is_transient_and_named_in_the_log(
    make: Any, caplog: pytest.LogCaptureFixture, table: Table
) -> None:
    chain, _ = make(query="SELECT active, banned FROM users_missing_table_x WHERE id = $1")
    with caplog.at_level(logging.WARNING):
        d = await chain.evaluate("user:alice")
    assert (d.status, d.error) == (503, "temporarily_unavailable")
    logged = " ".join(r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)
    assert "users_missing_table_x" in logged and "does not exist" in logged


# -- NOTIFY invalidation ---------------------------------------------------------------------------------------


async def test_a_ban_takes_effect_at_once_despite_a_60s_cache(make: Any, table: Table) -> None:
    chain, stage = make(cache_ttl=60, notify_channel=table.channel)
    assert await stage.wait_listening(DEADLINE)
    _, wait_for = recorder(stage)
    assert (await chain.evaluate("user:alice")).allowed
    assert (await chain.evaluate("user:alice")).trace[1].cache_hit is True
    await table.set_user("alice", banned=True)
    await table.notify("alice")
    await wait_for(lambda k: k == "alice")
    d = await chain.evaluate("user:alice")
    assert d.reason == "user_banned" and d.trace[1].cache_hit is False


async def test_star_payload_drops_everything(make: Any, table: Table) -> None:
    chain, stage = make(cache_ttl=60, notify_channel=table.channel)
    assert await stage.wait_listening(DEADLINE)
    _, wait_for = recorder(stage)
    await chain.evaluate("user:alice")
    await chain.evaluate("user:bob")
    assert stage.stats()["cache_entries"] == 2
    await table.notify("*")
    await wait_for(lambda k: k is None)
    assert stage.stats()["cache_entries"] == 0


def documented_trigger(table: Table) -> str:
    """The trigger SQL from docs/stages/user-status.md, aimed at this test's table and channel."""
    text = DOC.read_text()
    block = re.search(r"```sql\n((?:(?!```).)*CREATE TRIGGER(?:(?!```).)*)```", text, re.S)
    assert block is not None, "docs/stages/user-status.md documents no trigger"
    sql = block.group(1)
    sql = sql.replace("notify_user_status", f"{table.name}_notify")
    sql = re.sub(r"\bON users\b", f"ON {table.name}", sql)
    return sql.replace("'user_status'", f"'{table.channel}'")


async def test_documented_trigger_notifies_on_update_and_delete(make: Any, table: Table) -> None:
    await table.execute(documented_trigger(table))
    chain, stage = make(cache_ttl=60, negative_ttl=60, notify_channel=table.channel)
    assert await stage.wait_listening(DEADLINE)
    seen, wait_for = recorder(stage)
    assert (await chain.evaluate("user:alice")).allowed
    assert (await chain.evaluate("user:bob")).reason == "user_inactive"
    await table.execute(f"UPDATE {table.name} SET banned = true WHERE id = 'alice'")
    await wait_for(lambda k: k == "alice")
    assert (await chain.evaluate("user:alice")).reason == "user_banned"
    await table.execute(f"UPDATE {table.name} SET active = true WHERE id = 'bob'")
    await wait_for(lambda k: k == "bob")
    assert (await chain.evaluate("user:bob")).allowed
    await table.execute(f"DELETE FROM {table.name} WHERE id = 'bob'")
    await wait_for(lambda k: seen.count("bob") >= 2)
    assert (await chain.evaluate("user:bob")).reason == "user_unknown"
    await table.set_user("newcomer")  # INSERT also notifies: a cached "unknown" does not outlive the row
    await wait_for(lambda k: k == "newcomer")


async def test_listener_reconnects_flushes_and_works_again(make: Any, table: Table, pg_proxy: TCPProxy) -> None:
    chain, stage = make(dsn=proxied(table.dsn, pg_proxy), cache_ttl=60, notify_channel=table.channel)
    assert await stage.wait_listening(DEADLINE)
    _, wait_for = recorder(stage)
    assert (await chain.evaluate("user:alice")).allowed
    assert stage.stats()["cache_entries"] == 1
    pg_proxy.cut()
    # The ban and its notification happen while the stage is cut off: it cannot hear them.
    await table.set_user("alice", banned=True)
    await table.notify("alice")
    async with asyncio.timeout(DEADLINE):
        while stage.stats()["listener_connected"]:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    assert (await chain.evaluate("user:alice")).allowed  # still the cached answer
    pg_proxy.restore()
    await wait_for(lambda k: k is None)  # reconnected: everything dropped
    assert stage.stats()["listener_connects"] == 2
    assert (await chain.evaluate("user:alice")).reason == "user_banned"  # the pool healed too
    await table.set_user("alice", banned=False)
    await table.notify("alice")
    await wait_for(lambda k: k == "alice")
    assert (await chain.evaluate("user:alice")).allowed


# -- outages ------------------------------------------------------------------------------------------------------


async def test_outage_denies_with_503_then_recovers(make: Any, table: Table, pg_proxy: TCPProxy) -> None:
    chain, _ = make(dsn=proxied(table.dsn, pg_proxy), retry_after=3)
    assert (await chain.evaluate("user:alice")).allowed
    pg_proxy.cut()
    d = await chain.evaluate("user:bob")
    assert (d.allowed, d.status, d.error, d.retry_after) == (False, 503, "temporarily_unavailable", 3)
    assert d.trace[1].outcome == "error-denied"
    assert (await chain.evaluate("user:alice")).allowed  # cached before the outage
    assert await chain.verify_token("user:carol") is None
    pg_proxy.restore()
    assert (await chain.evaluate("user:bob")).reason == "user_inactive"
    assert (await chain.evaluate("user:carol")).reason == "user_banned"


async def test_outage_before_first_use_then_recovery(make: Any, table: Table, pg_proxy: TCPProxy) -> None:
    pg_proxy.cut()
    chain, _ = make(dsn=proxied(table.dsn, pg_proxy))
    assert (await chain.evaluate("user:alice")).status == 503
    pg_proxy.restore()
    assert (await chain.evaluate("user:alice")).allowed


async def test_on_error_allow_fails_open_during_outage(make: Any, table: Table, pg_proxy: TCPProxy) -> None:
    pg_proxy.cut()
    chain, _ = make(dsn=proxied(table.dsn, pg_proxy), on_error="allow")
    d = await chain.evaluate("user:alice")
    assert d.allowed and list(d.failed_open) == ["user-status"]


async def test_slow_database_times_out_then_recovers(make: Any, table: Table, pg_proxy: TCPProxy) -> None:
    chain, _ = make(dsn=proxied(table.dsn, pg_proxy), timeout=0.2, cache_ttl=0, negative_ttl=0)
    assert (await chain.evaluate("user:alice")).allowed
    pg_proxy.delay = 1.0
    d = await chain.evaluate("user:alice")
    assert d.status == 503 and d.trace[1].error == "StoreUnavailable"
    pg_proxy.restore()
    assert (await chain.evaluate("user:alice")).allowed


async def test_hanging_database_times_out(make: Any, table: Table, pg_proxy: TCPProxy) -> None:
    pg_proxy.blackhole = True
    chain, _ = make(dsn=proxied(table.dsn, pg_proxy), timeout=0.3)
    assert (await chain.evaluate("user:alice")).status == 503
    pg_proxy.restore()  # the attempt that hangs may still be in flight: the next lookup makes its own
    assert (await chain.evaluate("user:alice")).allowed


async def test_dropped_pool_connection_is_replaced_without_a_failure(
    make: Any, table: Table, pg_proxy: TCPProxy
) -> None:
    chain, stage = make(dsn=proxied(table.dsn, pg_proxy), cache_ttl=0, pool_max_size=1)
    assert (await chain.evaluate("user:alice")).allowed
    pg_proxy.cut()  # as a server restart would: the pooled connection is reset
    pg_proxy.restore()
    assert (await chain.evaluate("user:alice")).allowed
    assert (await chain.evaluate("user:carol")).reason == "user_banned"
    assert pg_proxy.connections == 2 and stage.stats()["failures"] == 0
