"""user-status in a fleet: lookups through PgBouncer, a listener that cannot LISTEN, a ban seen by 4 workers.

PgBouncer and the hot standby are real servers these tests start on free loopback ports
(tests/support/pg_servers.py); the workers are ``uvicorn --workers 4`` processes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import subprocess
import sys
import tomllib
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from fastapps_auth import ManualClock, chain_from_config
from fastapps_auth.backends.users import StoreUnavailable
from tests.support import pg_servers
from tests.support.stages import registered
from tests.support.user_status import TokenUser, UserStatusChains
from tests.test_user_status import USERS
from tests.test_user_status_postgres import DEADLINE, Table, recorder

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parent.parent
#: The claim: a ban reaches every worker within a second of its NOTIFY (polled against this deadline).
BAN_REACHES_WORKERS_WITHIN = 1.0


@pytest.fixture
async def table(postgres_dsn: str) -> AsyncIterator[Table]:
    t = Table(postgres_dsn, f"users_{uuid.uuid4().hex[:12]}")
    await t.execute(f"CREATE TABLE {t.name} (id text PRIMARY KEY, active boolean, banned boolean)")
    try:
        for user, (active, banned) in USERS.items():
            await t.set_user(user, active=active, banned=banned)
        yield t
    finally:
        await t.execute(f"DROP TABLE IF EXISTS {t.name}")


@pytest.fixture
async def chains(table: Table, clock: ManualClock) -> AsyncIterator[UserStatusChains]:
    made = UserStatusChains(clock, query=table.query, notify_channel=table.channel, cache_ttl=60, timeout=0.5)
    yield made
    await made.aclose()


@pytest.fixture(scope="module")
def transaction_pool() -> Iterator[int]:
    with pg_servers.pgbouncer("transaction") as port:
        yield port


def through(port: int) -> str:
    return f"postgresql://postgres@127.0.0.1:{port}/test"


def listen_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR and "LISTEN" in r.getMessage()]


def test_the_documented_pgbouncer_setup_builds() -> None:
    text = (ROOT / "docs" / "stages" / "user-status.md").read_text()
    block = re.search(r"```toml\n((?:(?!```).)*DATABASE_POOLER_URL(?:(?!```).)*)```", text, re.S)
    assert block is not None, "docs/stages/user-status.md shows no PgBouncer setup"
    env = {"DATABASE_POOLER_URL": "postgresql://app@pgbouncer/app", "DATABASE_DIRECT_URL": "postgresql://app@db/app"}
    config = tomllib.loads(block.group(1))
    config["stages"].insert(0, {"use": "token-user"})  # the page shows the user-status stage alone
    with registered(TokenUser):
        _, stage = chain_from_config(config, env=env).stages
    options = stage.options
    assert (options.dsn, options.listen_dsn) == (env["DATABASE_POOLER_URL"], env["DATABASE_DIRECT_URL"])
    assert options.statement_cache_size == 0


# -- PgBouncer in transaction mode ------------------------------------------------------------------------------


async def test_lookups_through_pgbouncer_in_transaction_mode_with_the_listener_direct(
    chains: UserStatusChains, table: Table, transaction_pool: int
) -> None:
    chain, stage = chains(dsn=through(transaction_pool), statement_cache_size=0, listen_dsn=table.dsn)
    assert await stage.wait_listening(DEADLINE)
    _, wait_for = recorder(stage)
    for user, (active, banned) in USERS.items():
        expected = "user_inactive" if not active else "user_banned" if banned else None
        assert (await chain.evaluate(f"user:{user}")).reason == expected
    assert (await chain.evaluate("user:alice")).trace[1].cache_hit is True
    await table.set_user("alice", banned=True)
    await table.notify("alice")
    await wait_for(lambda k: k == "alice")
    assert (await chain.evaluate("user:alice")).reason == "user_banned"
    assert stage.stats()["listener_refused"] == 0


async def test_a_listener_behind_pgbouncer_in_transaction_mode_is_reported_once_and_the_ttl_takes_over(
    chains: UserStatusChains, table: Table, transaction_pool: int, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    chain, stage = chains(dsn=table.dsn, listen_dsn=through(transaction_pool))
    with caplog.at_level(logging.WARNING):
        assert not await stage.wait_listening(DEADLINE)  # LISTEN "succeeds" there; notifications never arrive
        assert (await chain.evaluate("user:alice")).allowed
        await table.set_user("alice", banned=True)
        for _ in range(3):
            assert (await chain.evaluate("user:alice")).allowed  # cached; no listener restarted by lookups
        clock.advance(60.1)
        assert (await chain.evaluate("user:alice")).reason == "user_banned"  # the cache TTL bounds it instead
    (error,) = listen_errors(caplog)
    assert "PgBouncer in transaction or statement mode" in error and "cache_ttl" in error
    stats = stage.stats()
    assert (stats["listener_refused"], stats["listener_connected"], stats["listener_connects"]) == (1, 0, 0)
    with pytest.raises(StoreUnavailable, match="PgBouncer"):
        await stage.probe()


# -- a hot standby ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def standby() -> Iterator[tuple[int, int]]:
    with pg_servers.hot_standby() as ports:
        yield ports


async def test_a_listener_on_a_hot_standby_is_reported_once_and_lookups_go_on(
    standby: tuple[int, int], clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    primary, replica = (f"postgresql://postgres@127.0.0.1:{port}/postgres" for port in standby)
    con = await asyncpg.connect(primary)
    try:
        await con.execute("CREATE TABLE IF NOT EXISTS users (id text PRIMARY KEY, active boolean, banned boolean)")
        await con.execute("INSERT INTO users VALUES ('alice', true, false) ON CONFLICT DO NOTHING")
    finally:
        await con.close()
    chains = UserStatusChains(clock, dsn=primary, listen_dsn=replica, notify_channel="user_status", timeout=0.5)
    try:
        chain, stage = chains()
        with caplog.at_level(logging.WARNING):
            await stage.start()  # never raises: logs, and lookups go on
            assert not await stage.wait_listening(DEADLINE)
            assert (await chain.evaluate("user:alice")).allowed
            assert (await chain.evaluate("user:nobody")).reason == "user_unknown"
        (error,) = listen_errors(caplog)
        assert "cannot execute LISTEN during recovery" in error and "point listen_dsn at the primary" in error
        assert stage.stats()["listener_refused"] == 1
        with pytest.raises(StoreUnavailable, match="during recovery"):
            await stage.probe()
        working, _ = chains(listen_dsn=primary, name="on-primary")
        await working.stages[1].start()
        assert await working.stages[1].wait_listening(DEADLINE)  # type: ignore[attr-defined]
    finally:
        await chains.aclose()


# -- four worker processes -------------------------------------------------------------------------------------------


class Workers:
    """``uvicorn --workers 4`` serving tests/support/fleet_app.py, stopped by its pid."""

    def __init__(self, table: Table, count: int = 4) -> None:
        self.port = pg_servers.free_port()
        self.count = count
        env = {
            **os.environ,
            "FA_FLEET_DSN": table.dsn,
            "FA_FLEET_QUERY": table.query,
            "FA_FLEET_CHANNEL": table.channel,
        }
        args = ["--workers", str(count), "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning"]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", *args, "tests.support.fleet_app:app"], cwd=ROOT, env=env
        )
        # No keep-alive: every request is a new connection, which the kernel hands to any worker.
        self.client = httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{self.port}", limits=httpx.Limits(max_keepalive_connections=0), timeout=10
        )

    async def poll(self, path: str, token: str | None = None, n: int = 8) -> list[httpx.Response]:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        results = await asyncio.gather(
            *(self.client.get(path, headers=headers) for _ in range(n)), return_exceptions=True
        )
        return [r for r in results if isinstance(r, httpx.Response)]

    async def until_every_worker(self, path: str, token: str | None, done: str) -> None:
        """Poll until each of the workers has answered ``path`` with ``done`` true (a 200, or listening)."""
        seen: set[str] = set()
        async with asyncio.timeout(60):
            while len(seen) < self.count:
                for r in await self.poll(path, token):
                    if r.status_code == 200 and (done == "ok" or r.json().get(done)):
                        seen.add(r.headers["x-worker-pid"])

    async def aclose(self) -> None:
        await self.client.aclose()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)


async def test_a_ban_reaches_four_worker_processes_within_a_second(table: Table) -> None:
    await table.set_user("erin")
    workers = Workers(table)
    try:
        await workers.until_every_worker("/ready", None, "listening")
        await workers.until_every_worker("/who", "user:alice", "ok")  # every worker has alice cached, allowed
        await workers.until_every_worker("/who", "user:erin", "ok")  # and erin, who is banned below without a NOTIFY
        await table.set_user("erin", banned=True)
        await table.set_user("alice", banned=True)
        await table.notify("alice")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + BAN_REACHES_WORKERS_WITHIN
        refused: set[str] = set()
        allowed_after_refusal: list[str] = []
        while len(refused) < workers.count and loop.time() < deadline:
            for r in await workers.poll("/who", "user:alice"):
                pid = r.headers["x-worker-pid"]
                if r.status_code == 401:
                    refused.add(pid)
                elif pid in refused:
                    allowed_after_refusal.append(pid)
        assert len(refused) == workers.count, f"only {len(refused)} of {workers.count} workers refused within 1s"
        assert not allowed_after_refusal
        # erin was banned as well, but nobody said so: every worker still answers from its cache.
        erin = await workers.poll("/who", "user:erin", n=16)
        assert erin and all(r.status_code == 200 for r in erin)
    finally:
        await workers.aclose()
