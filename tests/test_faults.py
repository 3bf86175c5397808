"""Fault injection: a TCP proxy between the chain and PostgreSQL, Redis and the JWKS endpoint.

For each dependency the proxy resets connections (``reset``), accepts and never answers (``drop``) or
slows every chunk (``delay``). Decisions follow each stage's ``on_error`` policy, nothing waits past
its timeout, connections and tasks return to their baseline, and service resumes within a second
of the fault clearing (checked by polling against that deadline, never by measuring).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from benchmarks.signing import claims, jwt_options, keys
from fastapps_auth.chain import VerifierChain
from fastapps_auth.decision import Decision
from fastapps_auth.stages.jwt import JWTVerifier
from fastapps_auth.stages.rate_limit import RateLimitStage
from fastapps_auth.stages.user_status import UserStatusStage
from tests.support.tcp_proxy import TCPProxy

FAULTS = ["reset", "drop", "delay"]
#: The issue's promise: service is back within a second of the fault clearing.
RESUME_WITHIN = 1.0
#: Generous bound on one decision during a fault: the stage's own timeout plus slack for a loaded machine.
#: Exceeding it means something waited past its timeout (a hang), not that the machine was slow.
HANG_SLACK = 3.0


def inject(proxy: TCPProxy, fault: str) -> None:
    """Start ``fault``: reset every connection, or silently drop new ones, or delay every chunk by 2s."""
    if fault == "reset":
        proxy.cut()
    elif fault == "drop":
        proxy.cut()  # existing connections go; new ones are accepted and never answered
        proxy.accepting = True
        proxy.blackhole = True
    elif fault == "delay":
        proxy.cut()
        proxy.accepting = True
        proxy.delay = 2.0
    else:
        raise ValueError(fault)


def open_connections(proxy: TCPProxy) -> int:
    """Sockets the proxy still holds open (client and upstream sides)."""
    return len(proxy._writers)


async def bounded(aw: Awaitable[Decision], stage_timeout: float) -> Decision:
    """Await a decision, failing the test if it takes longer than ``stage_timeout`` + slack (a hang)."""
    try:
        async with asyncio.timeout(stage_timeout + HANG_SLACK):
            return await aw
    except TimeoutError:
        pytest.fail(f"a decision waited past its {stage_timeout}s timeout (+{HANG_SLACK}s slack)")


async def resumes(check: Callable[[], Awaitable[bool]], *, within: float = RESUME_WITHIN) -> bool:
    """Poll ``check`` until it holds or ``within`` seconds have passed since the fault cleared."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.01, deadline - loop.time())):
                if await check():
                    return True
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(0.02)


async def settle(predicate: Callable[[], bool], *, within: float = 5.0) -> bool:
    """Wait (bounded) for background cleanup, e.g. sockets closing after ``aclose``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not predicate():
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def token(subject: str) -> str:
    return keys().sign(claims(subject, _now()), alg="ES256")


def _now() -> float:
    import time

    return time.time()


# -- a JWKS endpoint ------------------------------------------------------------------------------------


class JWKSServer:
    """A minimal HTTP/1.1 server on 127.0.0.1 answering every GET with the test JWKS."""

    def __init__(self) -> None:
        self.body = json.dumps(keys().jwks()).encode()
        self.hits = 0
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> JWKSServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            self.hits += 1
            head = (
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(self.body)}\r\nCache-Control: max-age=600\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + self.body)
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@pytest.fixture
async def jwks_proxy() -> AsyncIterator[TCPProxy]:
    server = await JWKSServer().start()
    proxy = await TCPProxy("127.0.0.1", server.port).start()
    yield proxy
    await proxy.aclose()
    await server.aclose()


def remote_jwt(proxy: TCPProxy, **options: Any) -> JWTVerifier:
    """A ``jwt`` stage fetching its keys through ``proxy``; retries fast so recovery is quick."""
    opts = jwt_options(jwks=None, jwks_uri=f"http://127.0.0.1:{proxy.port}/jwks.json")
    opts.update(http_timeout=0.3, timeout=0.5, min_refresh_interval=0.0, max_refresh_backoff=0.05, **options)
    return JWTVerifier(**opts)


def static_jwt() -> JWTVerifier:
    return JWTVerifier(**jwt_options())


# -- JWKS -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", FAULTS)
async def test_jwks_fault_before_first_fetch_is_503_then_resumes(jwks_proxy: TCPProxy, fault: str) -> None:
    tasks_before = len(asyncio.all_tasks())
    chain = VerifierChain(remote_jwt(jwks_proxy))
    inject(jwks_proxy, fault)

    d = await bounded(chain.evaluate(token("alice")), 0.5)
    assert (d.allowed, d.status, d.stage, d.reason, d.error) == (
        False,
        503,
        "jwt",
        "unavailable",
        "temporarily_unavailable",
    )
    assert d.retry_after is not None and d.retry_after > 0  # never a 401: the client keeps its token

    jwks_proxy.restore()

    async def allowed() -> bool:
        return (await chain.evaluate(token("alice"))).allowed

    assert await resumes(allowed), "the jwt stage did not resume within a second of the JWKS endpoint returning"
    await chain.aclose()
    assert await settle(lambda: open_connections(jwks_proxy) == 0)
    assert await settle(lambda: len(asyncio.all_tasks()) <= tasks_before)


@pytest.mark.parametrize("fault", FAULTS)
async def test_jwks_fault_after_keys_are_cached(jwks_proxy: TCPProxy, fault: str) -> None:
    chain = VerifierChain(remote_jwt(jwks_proxy))
    assert (await chain.evaluate(token("alice"))).allowed  # keys fetched and cached
    inject(jwks_proxy, fault)

    # known keys keep verifying new tokens while the endpoint is failing (stale-if-error)
    d = await bounded(chain.evaluate(token("bob")), 0.5)
    assert d.allowed and d.subject == "bob"

    # an unknown kid cannot be checked against a failing endpoint: that is a 503, not a 401
    claims_ = claims("carol", _now())
    unknown = keys().sign(claims_, alg="ES256", header={"alg": "ES256", "kid": "rotated-in"})
    d = await bounded(chain.evaluate(unknown), 0.5)
    assert (d.status, d.reason) == (503, "unavailable")

    jwks_proxy.restore()

    async def unknown_kid_is_a_rejection_again() -> bool:
        return (await chain.evaluate(unknown)).reason == "unknown_key"

    assert await resumes(unknown_kid_is_a_rejection_again)
    await chain.aclose()
    assert await settle(lambda: open_connections(jwks_proxy) == 0)


# -- PostgreSQL -----------------------------------------------------------------------------------------


@pytest.fixture
async def users_table(postgres_dsn: str) -> AsyncIterator[str]:
    """A users table of its own (alice active, bob banned), dropped afterwards."""
    import asyncpg

    table = f"faults_users_{uuid.uuid4().hex[:10]}"
    con = await asyncpg.connect(postgres_dsn)
    try:
        await con.execute(f"CREATE TABLE {table} (id text PRIMARY KEY, active boolean, banned boolean)")
        await con.execute(f"INSERT INTO {table} VALUES ('alice', true, false), ('bob', true, true)")
        yield table
    finally:
        await con.execute(f"DROP TABLE IF EXISTS {table}")
        await con.close()


async def backend_connections(postgres_dsn: str, app: str) -> int:
    """Server-side count of connections opened under ``application_name`` ``app``."""
    import asyncpg

    con = await asyncpg.connect(postgres_dsn)
    try:
        n: int = await con.fetchval("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", app)
        return n
    finally:
        await con.close()


def user_status_through(proxy: TCPProxy, table: str, app: str, **options: Any) -> UserStatusStage:
    opts: dict[str, Any] = {
        "dsn": f"postgresql://postgres@127.0.0.1:{proxy.port}/test?application_name={app}",
        "query": f"SELECT active, banned FROM {table} WHERE id = $1",
        "timeout": 0.3,
        "cache_ttl": 0,  # every decision asks the database, so the fault is seen
        "negative_ttl": 0,
        "pool_max_size": 4,
    }
    opts.update(options)
    return UserStatusStage(**opts)


@pytest.mark.postgres
@pytest.mark.parametrize("fault", FAULTS)
async def test_postgres_fault_denies_with_503_then_resumes(
    pg_proxy: TCPProxy, users_table: str, postgres_dsn: str, fault: str
) -> None:
    app = f"fa-faults-{uuid.uuid4().hex[:8]}"
    tasks_before = len(asyncio.all_tasks())
    chain = VerifierChain(static_jwt(), user_status_through(pg_proxy, users_table, app))
    assert (await chain.evaluate(token("alice"))).allowed
    assert (await chain.evaluate(token("bob"))).reason == "user_banned"
    assert await backend_connections(postgres_dsn, app) >= 1

    inject(pg_proxy, fault)
    for subject in ("alice", "bob"):  # while the store is down, nobody is let in or called banned
        d = await bounded(chain.evaluate(token(subject)), 0.3)
        assert (d.allowed, d.status, d.stage, d.reason) == (False, 503, "user-status", "unavailable")

    pg_proxy.restore()

    async def back() -> bool:
        return (await chain.evaluate(token("alice"))).allowed

    assert await resumes(back), "user-status did not resume within a second of PostgreSQL returning"
    assert (await chain.evaluate(token("bob"))).reason == "user_banned"
    pool = chain.stats()
    assert pool["user-status.pool_size"] <= 4

    await chain.aclose()
    assert await settle(lambda: open_connections(pg_proxy) == 0)
    assert await settle(lambda: len(asyncio.all_tasks()) <= tasks_before)
    for _ in range(100):  # the server drops closed backends asynchronously
        if await backend_connections(postgres_dsn, app) == 0:
            break
        await asyncio.sleep(0.05)
    assert await backend_connections(postgres_dsn, app) == 0


@pytest.mark.postgres
async def test_postgres_fault_fails_open_when_configured(pg_proxy: TCPProxy, users_table: str) -> None:
    app = f"fa-faults-{uuid.uuid4().hex[:8]}"
    chain = VerifierChain(static_jwt(), user_status_through(pg_proxy, users_table, app, on_error="allow"))
    assert (await chain.evaluate(token("alice"))).allowed
    inject(pg_proxy, "reset")
    d = await bounded(chain.evaluate(token("alice")), 0.3)
    assert d.allowed and list(d.failed_open) == ["user-status"]
    assert [t.outcome for t in d.trace] == ["passed", "error-allowed"]
    await chain.aclose()


@pytest.mark.postgres
async def test_postgres_outage_is_covered_by_the_cache(pg_proxy: TCPProxy, users_table: str) -> None:
    app = f"fa-faults-{uuid.uuid4().hex[:8]}"
    chain = VerifierChain(static_jwt(), user_status_through(pg_proxy, users_table, app, cache_ttl=60))
    assert (await chain.evaluate(token("alice"))).allowed
    inject(pg_proxy, "drop")
    d = await bounded(chain.evaluate(token("alice")), 0.3)
    assert d.allowed and d.trace[1].cache_hit is True and not d.failed_open
    await chain.aclose()


# -- Redis ----------------------------------------------------------------------------------------------


def rate_limit_through(proxy: TCPProxy, **options: Any) -> RateLimitStage:
    opts: dict[str, Any] = {
        "limit": 1000,
        "window": 60,
        "backend": f"redis://127.0.0.1:{proxy.port}/13",
        "timeout": 0.2,
        "prefix": f"fa-faults:{uuid.uuid4().hex[:8]}",
    }
    opts.update(options)
    return RateLimitStage(**opts)


@pytest.mark.redis
@pytest.mark.parametrize("fault", FAULTS)
async def test_redis_fault_fails_open_by_default_then_resumes(redis_proxy: TCPProxy, fault: str) -> None:
    tasks_before = len(asyncio.all_tasks())
    chain = VerifierChain(static_jwt(), rate_limit_through(redis_proxy))
    d = await chain.evaluate(token("alice"))
    assert d.allowed and not d.failed_open and d.rate_limit is not None

    inject(redis_proxy, fault)
    d = await bounded(chain.evaluate(token("alice")), 0.2)
    assert d.allowed and list(d.failed_open) == ["rate-limit"]  # the default policy, recorded on the decision
    backend, own = d.trace[-2:]  # the stage applies on_error itself: its backend's failure has an entry of its own
    assert (backend.stage, backend.outcome, own.outcome) == ("rate-limit/backend", "error-allowed", "passed")

    redis_proxy.restore()

    async def counted_again() -> bool:
        d = await chain.evaluate(token("alice"))
        return d.allowed and not d.failed_open and d.rate_limit is not None

    assert await resumes(counted_again), "rate-limit did not resume within a second of Redis returning"
    await chain.aclose()
    assert await settle(lambda: open_connections(redis_proxy) == 0)
    assert await settle(lambda: len(asyncio.all_tasks()) <= tasks_before)


@pytest.mark.redis
@pytest.mark.parametrize("fault", FAULTS)
async def test_redis_fault_denies_when_configured(redis_proxy: TCPProxy, fault: str) -> None:
    chain = VerifierChain(static_jwt(), rate_limit_through(redis_proxy, on_error="deny"))
    assert (await chain.evaluate(token("alice"))).allowed
    inject(redis_proxy, fault)
    d = await bounded(chain.evaluate(token("alice")), 0.2)
    assert (d.allowed, d.status, d.stage, d.error) == (False, 503, "rate-limit", "temporarily_unavailable")
    redis_proxy.restore()

    async def back() -> bool:
        return (await chain.evaluate(token("alice"))).allowed

    assert await resumes(back)
    await chain.aclose()
