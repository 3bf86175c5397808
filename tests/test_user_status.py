"""The user-status stage on a real SQLite file: the rules, the cache, config errors, failures."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastapps_auth import (
    ConfigError,
    ManualClock,
    VerifierChain,
    chain_from_config,
)
from fastapps_auth.backends.users import StoreUnavailable, UserStoreOptions
from fastapps_auth.backends.users.sqlite import (
    SqliteUserStore,
    create_demo_database,
    sqlite_path,
    to_sqlite_placeholders,
)
from fastapps_auth.stages.user_status import MAX_KEY_CHARS, UserStatusStage, verdict
from tests.support.stages import registered
from tests.support.user_status import TokenUser, UserStatusChains

# -- users shared with the PostgreSQL tests ----------------------------------------------------------


USERS: dict[str, tuple[Any, Any]] = {
    "alice": (True, False),
    "bob": (False, False),  # inactive
    "carol": (True, True),  # banned
    "dave": (None, None),  # NULL active counts as inactive
}


def make_sqlite(path: Path, users: Mapping[str, tuple[Any, Any]] = USERS, table: str = "users") -> Path:
    with sqlite3.connect(path) as db:
        db.execute(f"CREATE TABLE {table} (id TEXT PRIMARY KEY, active BOOLEAN, banned BOOLEAN)")
        db.executemany(f"INSERT INTO {table} VALUES (?, ?, ?)", [(k, a, b) for k, (a, b) in users.items()])
    return path


def set_user(path: Path, user: str, *, active: bool = True, banned: bool = False) -> None:
    with sqlite3.connect(path) as db:
        db.execute("INSERT OR REPLACE INTO users VALUES (?, ?, ?)", (user, active, banned))


def sqlite_store(path: Path, query: str = "SELECT active, banned FROM users WHERE id = $1") -> SqliteUserStore:
    return SqliteUserStore(UserStoreOptions(dsn=f"sqlite:///{path}", query=query))


class GatedStore:
    """Wraps a real store; every fetch waits for ``gate`` (to hold lookups in flight)."""

    notifies: ClassVar[bool] = False

    def __init__(self, inner: SqliteUserStore) -> None:
        self.inner = inner
        self.gate = asyncio.Event()
        self.started = 0
        self._arrived = asyncio.Condition()

    async def wait_started(self, n: int) -> None:
        async with self._arrived:
            await self._arrived.wait_for(lambda: self.started >= n)

    async def fetch(self, key: str) -> Mapping[str, Any] | None:
        async with self._arrived:
            self.started += 1
            self._arrived.notify_all()
        await self.gate.wait()
        return await self.inner.fetch(key)

    def listen(self, channel: str, on_key: Callable[[str], None], on_reset: Callable[[], None]) -> None:
        raise NotImplementedError

    async def wait_listening(self, within: float) -> bool:
        return False

    async def start(self) -> None:
        await self.inner.start()

    async def probe(self) -> None:
        await self.inner.probe()

    async def aclose(self) -> None:
        await self.inner.aclose()

    def stats(self) -> dict[str, float]:
        return self.inner.stats()


@pytest.fixture
def db_file(tmp_path: Path) -> Path:
    return make_sqlite(tmp_path / "users.db")


@pytest.fixture
async def chain_factory(db_file: Path, clock: ManualClock) -> AsyncIterator[UserStatusChains]:
    chains = UserStatusChains(clock, dsn=f"sqlite:///{db_file}")
    yield chains
    await chains.aclose()


def queries(stage: UserStatusStage) -> float:
    return stage.stats()["queries"]


# -- the rule ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        (None, "user_unknown"),
        ({"active": True, "banned": False}, None),
        ({"active": 1, "banned": 0}, None),
        ({"active": False, "banned": False}, "user_inactive"),
        ({"active": None, "banned": None}, "user_inactive"),
        ({"active": True, "banned": True}, "user_banned"),
        ({"active": False, "banned": True}, "user_banned"),
        ({"active": "t", "banned": "f"}, None),
        ({"active": "false"}, "user_inactive"),
        ({}, None),  # the query returned neither column: active, not banned
        ({"banned": False}, None),
        ({"active": True}, None),
        ({"banned": 1}, "user_banned"),
    ],
)
def test_verdict(row: Mapping[str, Any] | None, expected: str | None) -> None:
    assert verdict(row) == expected


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("user:bob", "user_inactive"),
        ("user:carol", "user_banned"),
        ("user:zed", "user_unknown"),
        ("user:dave", "user_inactive"),
    ],
)
async def test_rejections_are_401_with_a_client_safe_description(chain_factory: Any, token: str, reason: str) -> None:
    chain, _ = chain_factory()
    d = await chain.evaluate(token)
    assert not d.allowed
    assert (d.reason, d.status, d.error, d.stage) == (reason, 401, "invalid_token", "user-status")
    assert d.description == "account disabled"
    assert await chain.verify_token(token) is None


async def test_active_user_passes_with_its_token(chain_factory: Any) -> None:
    chain, _ = chain_factory()
    d = await chain.evaluate("user:alice")
    assert d.allowed and d.status == 200
    assert d.access_token is not None and d.access_token.subject == "alice"
    at = await chain.verify_token("user:alice")
    assert at is not None and at.subject == "alice"


async def test_columns_the_query_omits_count_as_active_and_not_banned(chain_factory: Any) -> None:
    chain, _ = chain_factory(query="SELECT 1 AS present FROM users WHERE id = $1")
    assert (await chain.evaluate("user:carol")).allowed  # banned in the table, but the query does not say so
    assert (await chain.evaluate("user:zed")).reason == "user_unknown"


async def test_only_banned_column(chain_factory: Any) -> None:
    chain, _ = chain_factory(query="SELECT banned FROM users WHERE id = $1")
    assert (await chain.evaluate("user:bob")).allowed  # inactive, but active is not selected
    assert (await chain.evaluate("user:carol")).reason == "user_banned"


@pytest.mark.parametrize(
    ("key", "column_value"),
    [("client_id", "client-erin"), ("claim:employee", "e-erin"), ("subject", "erin")],
)
async def test_key_option_picks_the_looked_up_value(
    chain_factory: Any, db_file: Path, key: str, column_value: str
) -> None:
    chain, _ = chain_factory(key=key)
    assert (await chain.evaluate("user:erin")).reason == "user_unknown"
    set_user(db_file, column_value)
    chain2, _ = chain_factory(key=key)
    assert (await chain2.evaluate("user:erin")).allowed


async def test_missing_claim_is_unknown_without_a_query(chain_factory: Any) -> None:
    chain, stage = chain_factory(key="claim:tenant")
    assert (await chain.evaluate("user:alice")).reason == "user_unknown"
    assert queries(stage) == 0


async def test_overlong_key_is_unknown_without_query_or_cache(chain_factory: Any) -> None:
    chain, stage = chain_factory()
    d = await chain.evaluate("user:" + "a" * (MAX_KEY_CHARS + 1))
    assert d.reason == "user_unknown"
    assert queries(stage) == 0 and stage.stats()["cache_entries"] == 0


async def test_sql_injection_is_only_data(chain_factory: Any, db_file: Path) -> None:
    chain, _ = chain_factory(cache_ttl=0, negative_ttl=0)
    for evil in ("x'; DROP TABLE users; --", "alice' OR '1'='1", "?1", "$1", 'a"; DELETE FROM users; --'):
        assert (await chain.evaluate(f"user:{evil}")).reason == "user_unknown"
    assert (await chain.evaluate("user:alice")).allowed
    with sqlite3.connect(db_file) as db:
        assert db.execute("SELECT count(*) FROM users").fetchone()[0] == len(USERS)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(subject=st.text(min_size=1, max_size=80).filter(lambda s: "\x00" not in s))
async def test_any_subject_is_answered_by_the_table_alone(tmp_path: Path, subject: str) -> None:
    path = tmp_path / f"h{abs(hash(subject))}.db"
    if not path.exists():
        make_sqlite(path, {**USERS, "alice": (True, False)})
    stage = UserStatusStage(dsn=f"sqlite:///{path}", cache_ttl=0, negative_ttl=0)
    chain = VerifierChain(TokenUser(), stage)
    try:
        d = await chain.evaluate(f"user:{subject}")
    finally:
        await chain.aclose()
    expected = verdict(None if subject not in USERS else dict(zip(("active", "banned"), USERS[subject], strict=True)))
    assert d.reason == expected
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM users").fetchone()[0] == len(USERS)


# -- the cache -------------------------------------------------------------------------------------------


async def test_allowed_answer_is_cached_for_cache_ttl(chain_factory: Any, db_file: Path, clock: ManualClock) -> None:
    chain, stage = chain_factory(cache_ttl=30)
    d1 = await chain.evaluate("user:alice")
    set_user(db_file, "alice", banned=True)
    d2 = await chain.evaluate("user:alice")
    assert d1.allowed and d2.allowed
    assert [d1.trace[1].cache_hit, d2.trace[1].cache_hit] == [False, True]
    assert queries(stage) == 1
    clock.advance(29.9)
    assert (await chain.evaluate("user:alice")).allowed
    clock.advance(0.2)
    assert (await chain.evaluate("user:alice")).reason == "user_banned"
    assert queries(stage) == 2


async def test_rejection_is_cached_for_negative_ttl(chain_factory: Any, db_file: Path, clock: ManualClock) -> None:
    chain, stage = chain_factory(negative_ttl=5)
    assert (await chain.evaluate("user:frank")).reason == "user_unknown"
    set_user(db_file, "frank")
    assert (await chain.evaluate("user:frank")).reason == "user_unknown"
    assert queries(stage) == 1
    clock.advance(5.01)
    assert (await chain.evaluate("user:frank")).allowed


async def test_cache_off_asks_every_time(chain_factory: Any) -> None:
    chain, stage = chain_factory(cache_ttl=0, negative_ttl=0)
    for _ in range(5):
        await chain.evaluate("user:alice")
        await chain.evaluate("user:bob")
    assert queries(stage) == 10
    assert stage.stats()["cache_entries"] == 0


async def test_cache_is_bounded(chain_factory: Any, db_file: Path) -> None:
    chain, stage = chain_factory(max_entries=3)
    for i in range(20):
        await chain.evaluate(f"user:u{i}")
        assert stage.stats()["cache_entries"] <= 3
    assert stage.stats()["cache_entries"] == 3


async def test_invalidate_drops_one_user(chain_factory: Any, db_file: Path) -> None:
    chain, stage = chain_factory(cache_ttl=60)
    seen: list[str | None] = []
    stage.on_invalidate(seen.append)
    await chain.evaluate("user:alice")
    await chain.evaluate("user:bob")
    set_user(db_file, "alice", banned=True)
    stage.invalidate("alice")
    assert (await chain.evaluate("user:alice")).reason == "user_banned"
    assert (await chain.evaluate("user:bob")).trace[1].cache_hit is True
    stage.invalidate_all()
    assert stage.stats()["cache_entries"] == 0
    assert seen == ["alice", None]


async def test_concurrent_lookups_of_one_user_share_one_query(db_file: Path, clock: ManualClock) -> None:
    gated = GatedStore(sqlite_store(db_file))
    stage = UserStatusStage(clock=clock, store=gated)
    chain = VerifierChain(TokenUser(), stage, clock=clock)
    tasks = [asyncio.ensure_future(chain.evaluate("user:alice")) for _ in range(50)]
    other = asyncio.ensure_future(chain.evaluate("user:bob"))
    await gated.wait_started(2)
    gated.gate.set()
    decisions = await asyncio.gather(*tasks)
    assert (await other).reason == "user_inactive"
    assert all(d.allowed for d in decisions)
    assert gated.started == 2 and gated.inner.queries == 2
    await chain.aclose()


async def test_invalidation_during_a_lookup_keeps_its_result_out_of_the_cache(
    db_file: Path, clock: ManualClock
) -> None:
    gated = GatedStore(sqlite_store(db_file))
    stage = UserStatusStage(clock=clock, store=gated, cache_ttl=60)
    chain = VerifierChain(TokenUser(), stage, clock=clock)
    first = asyncio.ensure_future(chain.evaluate("user:alice"))
    await gated.wait_started(1)
    stage.invalidate("alice")  # a ban notified while the read was in flight
    gated.gate.set()
    assert (await first).allowed
    assert stage.stats()["cache_entries"] == 0
    await chain.aclose()


# -- failures ----------------------------------------------------------------------------------------------


async def test_missing_file_is_a_transient_failure_named_in_the_log(
    tmp_path: Path, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    missing = tmp_path / "nope" / "users.db"
    stage = UserStatusStage(dsn=f"sqlite:///{missing}", clock=clock, retry_after=7)
    chain = VerifierChain(TokenUser(), stage, clock=clock)
    with caplog.at_level(logging.WARNING):
        d = await chain.evaluate("user:alice")
    assert (d.allowed, d.status, d.error, d.retry_after, d.stage) == (
        False,
        503,
        "temporarily_unavailable",
        7,
        "user-status",
    )
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("SQLite user database not found" in m and str(missing) in m for m in errors)
    assert not missing.exists()
    await chain.aclose()


async def test_missing_table_is_a_transient_failure_named_in_the_log(
    tmp_path: Path, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    stage = UserStatusStage(dsn=f"sqlite:///{empty}", clock=clock)
    chain = VerifierChain(TokenUser(), stage, clock=clock)
    with caplog.at_level(logging.WARNING):
        d = await chain.evaluate("user:alice")
    assert d.status == 503 and d.reason == "unavailable"
    assert any("no such table: users" in r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)
    await chain.aclose()


async def test_on_error_allow_passes_and_records_it(tmp_path: Path, clock: ManualClock) -> None:
    stage = UserStatusStage(dsn=f"sqlite:///{tmp_path}/none.db", clock=clock, on_error="allow")
    chain = VerifierChain(TokenUser(), stage, clock=clock)
    d = await chain.evaluate("user:alice")
    assert d.allowed and list(d.failed_open) == ["user-status"]
    assert d.trace[1].outcome == "error-allowed"
    await chain.aclose()


async def test_failures_are_not_cached(tmp_path: Path, clock: ManualClock) -> None:
    path = tmp_path / "later.db"
    stage = UserStatusStage(dsn=f"sqlite:///{path}", clock=clock)
    chain = VerifierChain(TokenUser(), stage, clock=clock)
    assert (await chain.evaluate("user:alice")).status == 503
    make_sqlite(path)
    assert (await chain.evaluate("user:alice")).allowed
    await chain.aclose()


async def test_aclose_is_idempotent_and_later_lookups_fail_transiently(chain_factory: Any) -> None:
    chain, stage = chain_factory()
    assert (await chain.evaluate("user:alice")).allowed
    await stage.aclose()
    await stage.aclose()
    stage.invalidate_all()
    assert (await chain.evaluate("user:alice")).status == 503


async def test_store_opens_lazily(chain_factory: Any) -> None:
    _, stage = chain_factory()
    assert stage.stats()["open"] == 0
    await stage.start()
    assert stage.stats()["open"] == 1


async def test_a_thousand_concurrent_users_are_all_answered_correctly(tmp_path: Path, clock: ManualClock) -> None:
    users = {f"u{i}": (i % 3 != 1, i % 3 == 2) for i in range(1000)}
    path = make_sqlite(tmp_path / "many.db", users)
    stage = UserStatusStage(dsn=f"sqlite:///{path}", clock=clock, timeout=30)
    chain = VerifierChain(TokenUser(), stage, clock=clock)
    decisions = await asyncio.gather(*(chain.evaluate(f"user:{u}") for u in users))
    expected = [verdict({"active": a, "banned": b}) for a, b in users.values()]
    assert [d.reason for d in decisions] == expected
    await chain.aclose()


# -- configuration ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dsn", "path"),
    [
        ("sqlite:///users.db", "users.db"),
        ("sqlite:///data/users.db", "data/users.db"),
        ("sqlite:////abs/path.db", "/abs/path.db"),
        ("sqlite:///:memory:", ":memory:"),
        ("SQLITE:///x.db", "x.db"),
        ("sqlite:///with%20space.db", "with space.db"),
    ],
)
def test_sqlite_dsn_parsing(dsn: str, path: str) -> None:
    assert sqlite_path(dsn) == path


@pytest.mark.parametrize("dsn", ["sqlite://", "sqlite:///", "sqlite://host/x.db", "sqlite:///x.db?mode=ro", "users.db"])
def test_bad_sqlite_dsn(dsn: str) -> None:
    with pytest.raises(ConfigError):
        sqlite_path(dsn)


def test_placeholders_are_translated_for_sqlite() -> None:
    assert (
        to_sqlite_placeholders("SELECT a FROM t WHERE id = $1 OR alt = $1")
        == "SELECT a FROM t WHERE id = ?1 OR alt = ?1"
    )


async def test_relative_sqlite_dsn_reads_the_file_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_sqlite(tmp_path / "rel.db")
    monkeypatch.chdir(tmp_path)
    chain = VerifierChain(TokenUser(), UserStatusStage(dsn="sqlite:///rel.db"))
    assert (await chain.evaluate("user:alice")).allowed
    await chain.aclose()


async def test_memory_dsn_has_no_table(clock: ManualClock) -> None:
    chain = VerifierChain(TokenUser(), UserStatusStage(dsn="sqlite:///:memory:"), clock=clock)
    assert (await chain.evaluate("user:alice")).status == 503
    await chain.aclose()


@pytest.mark.parametrize(
    ("options", "key", "fragment"),
    [
        ({"dsn": "mysql://db/users"}, "dsn", "unsupported DSN scheme"),
        ({"dsn": "sqlite://host/users.db"}, "dsn", "no host"),
        ({"query": "SELECT active FROM users WHERE id = 'x'"}, "query", "$1"),
        ({"query": "SELECT active FROM users WHERE id = $1 AND t = $2"}, "query", "only one parameter"),
        ({"notify_channel": "user_status"}, "notify_channel", "PostgreSQL"),
        ({"dsn": "postgresql://h/db", "notify_channel": "bad channel"}, "notify_channel", "channel name"),
        ({"key": "ip"}, "key", "not available"),
        ({"key": "email"}, "key", "unknown key"),
        ({"cache_ttl": -1}, "cache_ttl", "greater than or equal"),
        ({"timeout": 0}, "timeout", "greater than"),
        ({"pool_min_size": 5, "pool_max_size": 2}, None, "pool_min_size"),
        ({"pool_reset": "none"}, "pool_reset", "light"),
        ({"cache": 3}, "cache", "unknown option"),
    ],
)
def test_config_errors_name_stage_and_key(options: dict[str, Any], key: str | None, fragment: str) -> None:
    config = {"stages": [{"use": "user-status", **options}]}
    with pytest.raises(ConfigError) as info:
        chain_from_config(config)
    assert fragment in str(info.value)
    assert info.value.location.stage is not None and "user-status" in info.value.location.stage
    if key is not None:
        assert info.value.location.key == key


def test_dsn_is_not_echoed_in_errors() -> None:
    with pytest.raises(ConfigError) as info:
        chain_from_config({"stages": [{"use": "user-status", "dsn": "mysql://admin:hunter2@db/users"}]})
    assert "hunter2" not in str(info.value)


async def test_built_from_config_with_default_dsn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_sqlite(tmp_path / "users.db")
    monkeypatch.chdir(tmp_path)
    with registered(TokenUser):  # a chain needs a stage that authenticates
        chain = chain_from_config(
            {"stages": [{"use": "token-user"}, {"use": "user-status", "dsn": "${DATABASE_URL:-sqlite:///users.db}"}]},
            env={},
        )
    _, stage = chain.stages
    assert isinstance(stage, UserStatusStage)
    full = VerifierChain(TokenUser(), stage)
    assert (await full.evaluate("user:alice")).allowed
    assert (await full.evaluate("user:carol")).reason == "user_banned"
    await full.aclose()


async def test_store_unavailable_is_transient() -> None:
    store = SqliteUserStore(UserStoreOptions(dsn="sqlite:///:memory:", query="SELECT active FROM users WHERE id = $1"))
    with pytest.raises(StoreUnavailable):
        await store.fetch("alice")
    await store.aclose()


async def test_demo_database_helper(tmp_path: Path) -> None:
    path = create_demo_database(tmp_path / "demo.db")
    chain = VerifierChain(TokenUser(), UserStatusStage(dsn=f"sqlite:///{path}"))
    assert (await chain.evaluate("user:alice")).allowed
    assert (await chain.evaluate("user:bob")).reason == "user_inactive"
    assert (await chain.evaluate("user:mallory")).reason == "user_banned"
    await chain.aclose()


async def test_unreachable_postgres_is_transient_and_keeps_the_password_out_of_logs(
    clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    stage = UserStatusStage(dsn="postgresql://app:s3cr3t-pw@127.0.0.1:1/test", clock=clock, timeout=2)
    chain = VerifierChain(TokenUser(), stage, clock=clock)
    with caplog.at_level(logging.DEBUG):
        d = await chain.evaluate("user:alice")
    assert (d.status, d.error) == (503, "temporarily_unavailable")
    assert any("PostgreSQL is unreachable" in r.getMessage() for r in caplog.records)
    assert not any("s3cr3t" in r.getMessage() for r in caplog.records)
    await chain.aclose()


def test_a_chain_never_closed_does_not_keep_the_process_alive(tmp_path: Path) -> None:
    """aiosqlite's worker thread is a daemon: a script that forgets ``aclose()`` still exits."""
    import subprocess
    import sys

    db = make_sqlite(tmp_path / "users.db")
    script = f"""
import asyncio
from fastapps_auth import VerifierChain
from fastapps_auth.stages.user_status import UserStatusStage
from tests.support.stages import TokenIsSubject

async def main():
    chain = VerifierChain(TokenIsSubject(), UserStatusStage(dsn="sqlite:///{db}"))
    assert (await chain.evaluate("user:alice")).allowed  # the connection and its thread are open now

asyncio.run(main())
print("done")
"""
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout.strip()) == (0, "done"), proc.stderr
