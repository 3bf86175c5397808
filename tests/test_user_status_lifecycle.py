"""user-status lifecycle: removed options, start() with the store down, probe(), and a closed stage."""

from __future__ import annotations

import logging
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from fastapps_auth import ConfigError, ManualClock, VerifierChain, chain_from_config
from fastapps_auth.backends.users import StoreUnavailable
from fastapps_auth.stages import user_status
from fastapps_auth.stages.user_status import UserStatusStage
from tests.support.stages import registered
from tests.support.user_status import TokenUser
from tests.test_user_status import make_sqlite

DOWN = "postgresql://app:s3cr3t-pw@127.0.0.1:1/test"


# -- removed options -------------------------------------------------------------------------------------------


def test_removed_batching_options_warn_once_and_are_ignored(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(user_status, "_warned", set())
    users = {"use": "user-status", "batch_max_size": 1, "batch_inflight": 4, "name": "users"}
    config = {"stages": [{"use": "token-user"}, users]}
    with caplog.at_level(logging.WARNING, logger="fastapps_auth.user_status"), registered(TokenUser):
        chains = [chain_from_config(config) for _ in range(3)]
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 2  # one per removed option, however many chains name it
    assert all("is ignored" in m and "next release" in m and "'users'" in m for m in warned)
    assert {"batch_max_size", "batch_inflight"} == {m.split("option ")[1].split()[0] for m in warned}
    _, stage = chains[0].stages
    assert "batch_max_size" not in type(stage.options).model_fields


def test_an_unknown_option_is_still_an_error() -> None:
    with pytest.raises(ConfigError, match="unknown option") as info, registered(TokenUser):
        chain_from_config({"stages": [{"use": "token-user"}, {"use": "user-status", "batch_size": 1}]})
    assert info.value.location.key == "batch_size"


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"dsn": "postgresql://h/db", "listen_dsn": "mysql://h/db", "notify_channel": "c"}, "postgresql://"),
        ({"dsn": "postgresql://h/db", "listen_dsn": "postgresql://h/db"}, "set both"),
    ],
)
def test_listen_dsn_is_checked_by_the_postgres_store(options: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment) as info, registered(TokenUser):
        chain_from_config({"stages": [{"use": "token-user"}, {"use": "user-status", **options}]})
    assert info.value.location.key == "listen_dsn"


# -- start() never raises because the store is down -------------------------------------------------------------


async def test_start_with_postgres_down_logs_and_lookups_retry(
    clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    stage = UserStatusStage(dsn=DOWN, clock=clock, timeout=0.5)
    chain = VerifierChain(TokenUser(), stage, clock=clock)
    with caplog.at_level(logging.WARNING):
        await chain.start()
    assert any("will retry on use" in r.getMessage() for r in caplog.records)
    assert not any("s3cr3t" in r.getMessage() for r in caplog.records)
    assert (await chain.evaluate("user:alice")).status == 503
    await chain.aclose()


async def test_start_with_the_sqlite_file_missing_logs_and_the_next_lookup_finds_it(
    tmp_path: Path, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "later.db"
    stage = UserStatusStage(dsn=f"sqlite:///{path}", clock=clock)
    chain = VerifierChain(TokenUser(), stage, clock=clock)
    with caplog.at_level(logging.WARNING):
        await chain.start()
    assert any("SQLite user database not found" in r.getMessage() for r in caplog.records)
    make_sqlite(path)
    assert (await chain.evaluate("user:alice")).allowed
    await chain.aclose()


# -- probe() ------------------------------------------------------------------------------------------------------


async def probe_error(**options: Any) -> str:
    stage = UserStatusStage(timeout=2, **options)
    try:
        with pytest.raises(StoreUnavailable) as info:
            await stage.probe()
    finally:
        await stage.aclose()
    message = str(info.value)
    assert "\n" not in message
    return message


async def test_probe_names_postgres_down_without_the_password() -> None:
    message = await probe_error(dsn=DOWN)
    assert "PostgreSQL is unreachable" in message and "s3cr3t" not in message


async def test_probe_names_the_missing_sqlite_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.db"
    assert "SQLite user database not found" in await probe_error(dsn=f"sqlite:///{missing}")
    assert not missing.exists()


async def test_probe_names_a_missing_table_or_column_on_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "users.db"
    sqlite3.connect(path).close()
    assert "no such table: users" in await probe_error(dsn=f"sqlite:///{path}")
    make_sqlite(path)
    message = await probe_error(dsn=f"sqlite:///{path}", query="SELECT enabled FROM users WHERE id = $1")
    assert "no such column: enabled" in message


async def test_probe_passes_on_sqlite_whether_or_not_the_probe_row_exists(tmp_path: Path) -> None:
    stage = UserStatusStage(dsn=f"sqlite:///{make_sqlite(tmp_path / 'users.db')}")
    try:
        await stage.probe()
    finally:
        await stage.aclose()


@pytest.mark.postgres
async def test_probe_on_postgres_table_column_and_channel(postgres_dsn: str) -> None:
    table = f"users_{uuid.uuid4().hex[:12]}"
    message = await probe_error(dsn=postgres_dsn, query=f"SELECT active FROM {table} WHERE id = $1")
    assert f'relation "{table}" does not exist' in message and "create the users table" in message
    con = await asyncpg.connect(postgres_dsn)
    try:
        await con.execute(f"CREATE TABLE {table} (id text PRIMARY KEY, active boolean)")
        message = await probe_error(dsn=postgres_dsn, query=f"SELECT active, banned FROM {table} WHERE id = $1")
        assert 'column "banned" does not exist' in message
        query = f"SELECT active FROM {table} WHERE id = $1"
        stage = UserStatusStage(dsn=postgres_dsn, query=query, notify_channel=f"{table}_changes")
        try:
            await stage.probe()  # no row for the probe value, a listener that works: all is well
        finally:
            await stage.aclose()
    finally:
        await con.execute(f"DROP TABLE IF EXISTS {table}")
        await con.close()


# -- a closed stage --------------------------------------------------------------------------------------------------


async def test_a_closed_stage_refuses_and_opens_nothing_again(tmp_path: Path, clock: ManualClock) -> None:
    stage = UserStatusStage(dsn=f"sqlite:///{make_sqlite(tmp_path / 'users.db')}", clock=clock, on_error="allow")
    chain = VerifierChain(TokenUser(), stage, clock=clock)
    assert (await chain.evaluate("user:alice")).allowed
    await stage.aclose()
    assert stage.closed
    d = await chain.evaluate("user:alice")
    assert (d.allowed, d.status, d.error) == (False, 503, "temporarily_unavailable")  # refused, even failing open
    await stage.start()
    with pytest.raises(StoreUnavailable, match="closed"):
        await stage.probe()
    assert stage.stats()["open"] == 0
    await chain.aclose()
