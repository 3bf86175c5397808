"""The rate-limit stage on the real Redis: shared exact limits across processes, expiry, outages, Lua = Python."""

from __future__ import annotations

import asyncio
import multiprocessing
import uuid
from typing import Any

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.crc import key_slot

from fastapps_auth import Rejected, VerifierChain
from fastapps_auth.backends.ratelimit.algorithm import US, Rule, check
from fastapps_auth.backends.ratelimit.redis import RedisRateLimitBackend
from fastapps_auth.clock import ManualClock
from fastapps_auth.stages.rate_limit import RateLimitStage
from tests.support.rate_limit import verification
from tests.support.stages import TokenIsSubject
from tests.support.tcp_proxy import TCPProxy

pytestmark = pytest.mark.redis


@pytest.fixture
def prefix(redis_prefix: str) -> str:
    return redis_prefix


async def keys_of(redis_url: str, prefix: str) -> dict[str, tuple[int, int]]:
    """Every key under ``prefix`` with its stored TAT and its remaining time to live (ms)."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        out = {}
        async for k in client.scan_iter(match=f"{prefix}*"):
            tat = await client.get(k)
            assert tat is not None
            out[k] = (int(tat), await client.pttl(k))
        return out
    finally:
        await client.aclose()


async def test_admits_the_limit_then_429_with_retry_after(redis_url: str, prefix: str) -> None:
    chain = VerifierChain(
        TokenIsSubject(), RateLimitStage(limit=3, window=3600, backend=redis_url, prefix=prefix, timeout=2.0)
    )
    async with chain:
        results = [await chain.evaluate("user:alice") for _ in range(4)]
    assert [d.allowed for d in results] == [True, True, True, False]
    assert [d.rate_limit.remaining for d in results if d.rate_limit] == [2, 1, 0, 0]
    d = results[-1]
    assert (d.status, d.reason, d.stage) == (429, "rate_limited", "rate-limit")
    # server time moves between calls: the wait is one interval (1200 s) less the time since the burst
    assert d.retry_after is not None and 1190 < d.retry_after <= 1200


async def test_state_expires_when_it_stops_mattering_and_refusals_write_nothing(redis_url: str, prefix: str) -> None:
    clock = ManualClock()
    store = RedisRateLimitBackend(redis_url, prefix=prefix, timeout=2.0, clock=clock)
    rules = (Rule.make(2, 10.0),)
    try:
        assert (await store.hit("u", rules)).allowed
        assert (await store.hit("u", rules)).allowed
        before = await keys_of(redis_url, prefix)
        (tat, pttl), *_ = before.values()
        assert tat == round(clock.time() * US) + 10 * US  # two intervals of 5 s ahead
        assert 9_000 < pttl <= 10_000  # the key lives exactly as long as its state matters
        refused = await store.hit("u", rules)
        assert not refused.allowed and refused.wait == 5 * US
        after = await keys_of(redis_url, prefix)
        assert [v[0] for v in after.values()] == [tat]
        clock.advance(10)  # (client-clock mode lets the test move time; TTL is Redis's own)
        out = await store.hit("u", rules)
        assert out.allowed and out.remaining == 1
    finally:
        await store.aclose()


async def test_every_rule_key_of_a_user_is_in_one_cluster_slot(redis_url: str, prefix: str) -> None:
    stage = RateLimitStage(
        rules=[{"limit": 5, "window": 1}, {"limit": 50, "window": 60}, {"limit": 500, "window": 3600}],
        backend=redis_url,
        prefix=prefix,
        timeout=2.0,
    )
    chain = VerifierChain(TokenIsSubject(), stage)
    async with chain:
        assert (await chain.evaluate("user:we{ird}name")).allowed
        assert (await chain.evaluate("user:bob")).allowed
    keys = await keys_of(redis_url, prefix)
    assert len(keys) == 6
    slots: dict[str, set[int]] = {}
    for k in keys:
        slots.setdefault("bob" if "bob" in k else "weird", set()).add(key_slot(k.encode()))
    assert all(len(s) == 1 for s in slots.values())
    assert all(k.startswith(f"{prefix}:rate-limit:subject:{{") for k in keys)


def _hammer(url: str, prefix: str, key: str, n: int, start: Any) -> int:
    """One OS process: ``n`` checks of the same key, 8 at a time; returns how many were admitted."""

    async def run() -> int:
        store = RedisRateLimitBackend(url, prefix=prefix, timeout=5.0)
        rules = (Rule.make(200, 86_400.0),)
        await store.start()
        start.wait()
        try:
            sem = asyncio.Semaphore(8)

            async def one() -> bool:
                async with sem:
                    return (await store.hit(key, rules)).allowed

            return sum(await asyncio.gather(*(one() for _ in range(n))))
        finally:
            await store.aclose()

    return asyncio.run(run())


def test_four_processes_share_exactly_one_limit(redis_url: str, prefix: str) -> None:
    # fork: the children need no re-import (fast); each runs its own event loop and connections
    ctx = multiprocessing.get_context("fork")
    with ctx.Manager() as manager:
        start = manager.Event()
        with ctx.Pool(4) as pool:
            pending = [pool.apply_async(_hammer, (redis_url, prefix, "shared-user", 100, start)) for _ in range(4)]
            start.set()
            admitted = [p.get(timeout=120) for p in pending]
    # 400 attempts for 200 places, no process could take more than half: they competed for the same key
    assert sum(admitted) == 200, admitted


async def test_reconnects_after_an_outage_and_fails_open_meanwhile(
    redis_proxy: TCPProxy, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    host, port = redis_proxy.address
    url = f"redis://{host}:{port}/13"
    open_stage = RateLimitStage(limit=100, window=3600, backend=url, prefix=prefix, timeout=1.0)
    closed_stage = RateLimitStage(
        limit=100, window=3600, backend=url, prefix=prefix, timeout=1.0, on_error="deny", name="strict"
    )
    chain = VerifierChain(TokenIsSubject(), open_stage)
    strict = VerifierChain(TokenIsSubject(), closed_stage)
    async with chain, strict:
        assert (await chain.evaluate("user:alice")).allowed
        assert (await strict.evaluate("user:alice")).allowed
        redis_proxy.cut()
        for _ in range(20):
            d = await chain.evaluate("user:alice")
            assert d.allowed and list(d.failed_open) == ["rate-limit"]
            backend, stage = d.trace[-2:]
            assert (backend.stage, backend.outcome) == ("rate-limit/backend", "error-allowed")
            assert backend.reason == "failed-open"
            assert backend.error == "ConnectionError" and stage.outcome == "passed"
            d = await strict.evaluate("user:alice")
            assert (d.allowed, d.status, d.error, d.stage) == (False, 503, "temporarily_unavailable", "strict")
            assert d.trace[-2].outcome == d.trace[-1].outcome == "error-denied"
        redis_proxy.restore()
        d = await chain.evaluate("user:alice")
        assert d.allowed and not d.failed_open
        assert d.rate_limit is not None and d.rate_limit.remaining == 98  # the count survived the outage
        assert (await strict.evaluate("user:alice")).allowed
    # one warning per stage for the whole outage, not one per request; stats() counts every check
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 2, [r.getMessage() for r in warnings]
    assert "'strict'" in warnings[1].getMessage() and "refused with 503" in warnings[1].getMessage()
    stats = open_stage.stats()
    assert (stats["errors"], stats["failed_open"], stats["outages"], stats["outage_active"]) == (20, 20, 1, 1)
    assert closed_stage.stats()["denied_unavailable"] == 20


async def test_slower_than_timeout_applies_on_error(redis_proxy: TCPProxy, prefix: str) -> None:
    host, port = redis_proxy.address
    stage = RateLimitStage(limit=5, window=60, backend=f"redis://{host}:{port}/13", prefix=prefix, timeout=0.05)
    chain = VerifierChain(TokenIsSubject(), stage)
    async with chain:
        assert (await chain.evaluate("user:alice")).allowed
        redis_proxy.delay = 0.5
        d = await chain.evaluate("user:alice")
        assert d.allowed and list(d.failed_open) == ["rate-limit"]
        assert d.trace[-2].error == "TimeoutError"
        redis_proxy.restore()
        d = await chain.evaluate("user:alice")
        assert d.allowed and not d.failed_open


async def test_script_is_reloaded_after_a_script_flush(redis_url: str, prefix: str) -> None:
    store = RedisRateLimitBackend(redis_url, prefix=prefix, timeout=2.0)
    rules = (Rule.make(5, 60.0),)
    admin = aioredis.Redis.from_url(redis_url)
    try:
        assert (await store.hit("u", rules)).allowed
        await admin.script_flush()
        out = await store.hit("u", rules)
        assert out.allowed and out.remaining == 3
    finally:
        await admin.aclose()
        await store.aclose()
        await store.aclose()  # idempotent


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    params=st.lists(
        st.tuples(st.integers(1, 20), st.sampled_from([0.5, 1.0, 7.0, 3600.0]), st.integers(1, 20)),
        min_size=1,
        max_size=3,
    ),
    steps=st.lists(st.tuples(st.integers(0, 1_500_000), st.integers(1, 6)), min_size=1, max_size=12),
)
async def test_lua_script_matches_the_python_algorithm(
    redis_url: str, params: list[tuple[int, float, int]], steps: list[tuple[int, int]]
) -> None:
    rules = tuple(Rule.make(limit, window, min(burst, limit)) for limit, window, burst in params)
    clock = ManualClock()
    prefix = f"test-rl-{uuid.uuid4().hex[:12]}"
    store = RedisRateLimitBackend(redis_url, prefix=prefix, timeout=2.0, clock=clock)
    tats = [0] * len(rules)
    try:
        for advance_us, count in steps:
            clock.advance(advance_us / US)
            for _ in range(count):
                now = round(clock.time() * US)
                assert await store.hit("k", rules) == check(rules, tats, now)
    finally:
        client = aioredis.Redis.from_url(redis_url)
        keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()
        await store.aclose()


async def test_start_opens_the_connections_and_refusal_is_a_rejection(redis_url: str, prefix: str) -> None:
    clock = ManualClock()
    stage = RateLimitStage(limit=1, window=60, backend=redis_url, prefix=prefix, timeout=2.0, clock=clock)
    await stage.start()
    assert isinstance(stage.backend, RedisRateLimitBackend)
    assert stage.backend.peak == 0  # warming is not a check
    try:
        await stage(verification(clock))
        with pytest.raises(Rejected) as exc:
            await stage(verification(clock))
        assert exc.value.status == 429
    finally:
        await stage.aclose()


async def test_a_connection_broken_while_idle_is_replaced_without_failing(
    redis_proxy: TCPProxy, redis_url: str, prefix: str
) -> None:
    host, port = redis_proxy.address
    store = RedisRateLimitBackend(f"redis://{host}:{port}/13", prefix=prefix, timeout=2.0)
    rules = (Rule.make(100, 3600.0),)
    other = aioredis.Redis.from_url(redis_url)
    try:
        assert (await store.hit("u", rules)).allowed
        redis_proxy.cut()  # resets the pooled connection while nobody is using it (a restart, an idle timeout)
        redis_proxy.restore()
        # Round trips elsewhere let the event loop read the reset, as it has long done before a real next request;
        # redis-py's pool then sees the closed connection and dials a new one.
        for _ in range(3):
            await other.ping()
        out = await store.hit("u", rules)
        assert out.allowed and out.remaining == 98
        assert store.errors == 0
        assert redis_proxy.connections == 2
    finally:
        await other.aclose()
        await store.aclose()
