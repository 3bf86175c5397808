"""The user-status stage against hostile or unusual user ids, tables and notifications (real SQLite and PostgreSQL)."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fastapps_auth import ManualClock
from tests.support.user_status import UserStatusChains
from tests.test_user_status import USERS, make_sqlite
from tests.test_user_status_postgres import DEADLINE, Table, recorder

#: Values no SQL text column can hold as a user id: PostgreSQL refuses NUL, and a lone surrogate is not UTF-8.
UNSTORABLE = ["a\x00b", "\x00", "carol\x00", "\ud800", "carol\udfff"]


@pytest.fixture
async def sqlite_chains(tmp_path: Path, clock: ManualClock) -> AsyncIterator[UserStatusChains]:
    chains = UserStatusChains(clock, dsn=f"sqlite:///{make_sqlite(tmp_path / 'users.db')}")
    yield chains
    await chains.aclose()


@pytest.fixture
async def table(postgres_dsn: str) -> AsyncIterator[Table]:
    """A users table of this test's own (``id text``), dropped afterwards."""
    t = Table(postgres_dsn, f"users_{uuid.uuid4().hex[:12]}")
    await t.execute(f"CREATE TABLE {t.name} (id text PRIMARY KEY, active boolean, banned boolean)")
    try:
        for user, (active, banned) in USERS.items():
            await t.set_user(user, active=active, banned=banned)
        yield t
    finally:
        await t.execute(f"DROP TABLE IF EXISTS {t.name}")


@pytest.fixture
async def pg_chains(table: Table, clock: ManualClock) -> AsyncIterator[UserStatusChains]:
    chains = UserStatusChains(clock, dsn=table.dsn, query=table.query)
    yield chains
    await chains.aclose()


# -- ids no store can hold -----------------------------------------------------------------------------------


@pytest.mark.parametrize("subject", UNSTORABLE)
@pytest.mark.parametrize("on_error", ["deny", "allow"])
async def test_an_unstorable_id_is_unknown_on_sqlite_never_a_failure(
    sqlite_chains: UserStatusChains, subject: str, on_error: str
) -> None:
    chain, stage = sqlite_chains(on_error=on_error)
    d = await chain.evaluate(f"user:{subject}")
    assert (d.allowed, d.status, d.reason, list(d.failed_open)) == (False, 401, "user_unknown", [])
    assert stage.stats()["failures"] == 0
    assert (await chain.evaluate("user:alice")).allowed


@pytest.mark.postgres
@pytest.mark.parametrize("subject", UNSTORABLE)
@pytest.mark.parametrize("on_error", ["deny", "allow"])
async def test_an_unstorable_id_is_unknown_on_postgres_never_a_failure(
    pg_chains: UserStatusChains, subject: str, on_error: str
) -> None:
    # Before: PostgreSQL refused the value, a 503 with on_error = "deny", and with "allow" a pass (fail open).
    chain, stage = pg_chains(on_error=on_error, cache_ttl=0, negative_ttl=0)
    d = await chain.evaluate(f"user:{subject}")
    assert (d.allowed, d.status, d.reason, list(d.failed_open)) == (False, 401, "user_unknown", [])
    assert stage.stats()["failures"] == 0
    assert (await chain.evaluate("user:alice")).allowed


# -- column names --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("columns", "query"),
    [
        ("Active BOOLEAN, Banned BOOLEAN", None),  # SQLite names the result column as the table declares it
        ("ACTIVE BOOLEAN, BANNED BOOLEAN", None),
        ("active BOOLEAN, banned BOOLEAN", "SELECT ACTIVE, BANNED FROM users WHERE id = $1"),
        ("Active BOOLEAN, Banned BOOLEAN", "SELECT * FROM users WHERE id = $1"),
    ],
)
async def test_a_banned_user_is_banned_whatever_the_case_of_the_column_names(
    tmp_path: Path, clock: ManualClock, columns: str, query: str | None
) -> None:
    path = tmp_path / "users.db"
    with sqlite3.connect(path) as db:
        db.execute(f"CREATE TABLE users (id TEXT PRIMARY KEY, {columns})")
        db.executemany(
            "INSERT INTO users VALUES (?, ?, ?)", [("alice", True, False), ("bob", False, False), ("carol", True, True)]
        )
    db.close()
    chains = UserStatusChains(clock, dsn=f"sqlite:///{path}", **({"query": query} if query else {}))
    try:
        chain, _ = chains()
        assert (await chain.evaluate("user:alice")).allowed
        assert (await chain.evaluate("user:bob")).reason == "user_inactive"
        assert (await chain.evaluate("user:carol")).reason == "user_banned"
    finally:
        await chains.aclose()


@pytest.mark.postgres
async def test_quoted_mixed_case_columns_on_postgres_count_too(table: Table, clock: ManualClock) -> None:
    await table.execute(f'ALTER TABLE {table.name} RENAME COLUMN banned TO "Banned"')
    chains = UserStatusChains(clock, dsn=table.dsn, query=f"SELECT * FROM {table.name} WHERE id = $1")
    try:
        chain, _ = chains()
        assert (await chain.evaluate("user:alice")).allowed
        assert (await chain.evaluate("user:carol")).reason == "user_banned"
    finally:
        await chains.aclose()


# -- NOTIFY ------------------------------------------------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.parametrize("user", [" mallory", "mallory ", "mallory\n", "\tmallory"])
async def test_a_notification_drops_an_id_with_surrounding_whitespace(
    pg_chains: UserStatusChains, table: Table, user: str
) -> None:
    # Before: the payload was stripped, so " mallory" dropped "mallory" and the ban waited for cache_ttl.
    chain, stage = pg_chains(cache_ttl=60, notify_channel=table.channel)
    assert await stage.wait_listening(DEADLINE)
    _, wait_for = recorder(stage)
    await table.set_user(user)
    assert (await chain.evaluate(f"user:{user}")).allowed
    await table.set_user(user, banned=True)
    await table.notify(user)
    await wait_for(lambda k: k == user)
    assert (await chain.evaluate(f"user:{user}")).reason == "user_banned"


@pytest.mark.postgres
async def test_a_padded_notification_still_drops_the_trimmed_id(pg_chains: UserStatusChains, table: Table) -> None:
    chain, stage = pg_chains(cache_ttl=60, notify_channel=table.channel)
    assert await stage.wait_listening(DEADLINE)
    _, wait_for = recorder(stage)
    assert (await chain.evaluate("user:alice")).allowed
    await table.set_user("alice", banned=True)
    await table.notify("alice\n")  # a trigger or a psql script that adds a newline
    await wait_for(lambda k: k == "alice")
    assert (await chain.evaluate("user:alice")).reason == "user_banned"
