"""Introspection answers reused: the in-process cache, single flight, and the Redis cache workers share."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from fastapps_auth import VerifierChain
from fastapps_auth.dev_issuer import RunningIssuer
from fastapps_auth.stages.introspection import IntrospectionStage
from tests.support.introspection import evaluate, now_clock, opaque_issuer, requests, stage
from tests.support.jwks_server import JWKSServer


@pytest.fixture
def issuer() -> Iterator[RunningIssuer]:
    with opaque_issuer() as running:
        yield running


async def test_a_repeated_token_is_answered_from_the_cache(issuer: RunningIssuer) -> None:
    st = stage(issuer, introspection_url=issuer.introspection_endpoint)
    token = issuer.mint_opaque("alice")
    first = await evaluate(st, token)
    again = [await evaluate(st, token) for _ in range(5)]
    assert first.trace[0].cache_hit is False and all(d.allowed and d.trace[0].cache_hit for d in again)
    assert again[0].access_token is first.access_token
    assert requests(st) == 1
    await st.aclose()


async def test_the_cache_lasts_cache_ttl(issuer: RunningIssuer) -> None:
    clock = now_clock()
    st = stage(issuer, clock=clock, introspection_url=issuer.introspection_endpoint, cache_ttl=10)
    token = issuer.mint_opaque("alice")
    await evaluate(st, token, clock)
    clock.advance(9.9)
    await evaluate(st, token, clock)
    assert requests(st) == 1
    clock.advance(0.1)
    await evaluate(st, token, clock)
    assert requests(st) == 2
    await st.aclose()


async def test_inactive_answers_are_cached_for_negative_ttl(issuer: RunningIssuer) -> None:
    clock = now_clock()
    st = stage(issuer, clock=clock, introspection_url=issuer.introspection_endpoint, negative_ttl=5)
    for _ in range(3):
        assert (await evaluate(st, "unknown", clock)).reason == "inactive"
    assert requests(st) == 1
    clock.advance(5)
    assert (await evaluate(st, "unknown", clock)).trace[0].cache_hit is False
    assert requests(st) == 2
    await st.aclose()


@pytest.mark.parametrize(
    ("option", "active"),
    [("negative_ttl", False), ("max_entries", False), ("cache_ttl", True), ("max_entries", True)],
)
async def test_zero_turns_caching_off(issuer: RunningIssuer, option: str, active: bool) -> None:
    zero: dict[str, Any] = {option: 0}
    st = stage(issuer, introspection_url=issuer.introspection_endpoint, **zero)
    token = issuer.mint_opaque("alice") if active else "unknown"
    for _ in range(3):
        assert (await evaluate(st, token)).allowed is active
    assert requests(st) == 3
    await st.aclose()


async def test_the_cache_is_bounded_by_max_entries(issuer: RunningIssuer) -> None:
    st = stage(issuer, introspection_url=issuer.introspection_endpoint, max_entries=2)
    tokens = [issuer.mint_opaque(f"user-{i}") for i in range(3)]
    for t in tokens:
        await evaluate(st, t)
    assert st.stats()["cached_answers"] == 2
    await evaluate(st, tokens[0])  # the least recently used was evicted: asked again
    assert requests(st) == 4
    await st.aclose()


async def test_300_concurrent_lookups_of_one_token_send_one_request(issuer: RunningIssuer) -> None:
    st = stage(issuer, introspection_url=issuer.introspection_endpoint)
    chain = VerifierChain(st)
    token = issuer.mint_opaque("alice")
    decisions = await asyncio.gather(*(chain.evaluate(token) for _ in range(300)))
    assert all(d.allowed for d in decisions)
    assert requests(st) == 1
    assert st.stats()["introspections_in_flight"] == 0
    await chain.aclose()


async def test_concurrent_lookups_share_a_failure_too() -> None:
    with JWKSServer() as srv:
        srv.set_raw("/introspect", b"garbage")
        srv.delay = 0.2
        st = stage_at(srv)
        chain = VerifierChain(st)
        decisions = await asyncio.gather(*(chain.evaluate("tok") for _ in range(300)))
        await chain.aclose()
        assert srv.count("/introspect") == 1
    assert {d.status for d in decisions} == {503}


async def test_a_cancelled_waiter_does_not_cancel_the_request_others_wait_for() -> None:
    with JWKSServer() as srv:
        srv.set_json("/introspect", {"active": True, "sub": "alice"})
        srv.delay = 0.3
        st = stage_at(srv)
        chain = VerifierChain(st)
        first = asyncio.create_task(chain.evaluate("tok"))
        await asyncio.sleep(0.05)  # bounded: only lets the first request start
        second = asyncio.create_task(chain.evaluate("tok"))
        await asyncio.sleep(0.05)
        first.cancel()
        d = await asyncio.wait_for(second, 5)
        await chain.aclose()
        assert srv.count("/introspect") == 1
    assert d.allowed
    assert first.cancelled()


def stage_at(srv: JWKSServer) -> IntrospectionStage:
    return IntrospectionStage(introspection_url=srv.url + "/introspect", client_id="rs", client_secret="s")


# -- the shared cache --------------------------------------------------------------------------------


@pytest.mark.redis
async def test_two_workers_share_answers_through_redis(
    issuer: RunningIssuer, redis_url: str, redis_prefix: str
) -> None:
    clock = now_clock()
    options = {"introspection_url": issuer.introspection_endpoint, "cache": redis_url, "cache_prefix": redis_prefix}
    a, b = stage(issuer, clock=clock, **options), stage(issuer, clock=clock, **options)
    token = issuer.mint_opaque("alice", scopes=["read"])
    assert (await evaluate(a, token, clock)).allowed
    assert (await evaluate(a, "unknown", clock)).reason == "inactive"
    d = await evaluate(b, token, clock)
    assert d.allowed and d.access_token is not None and d.access_token.scopes == ["read"]
    assert (await evaluate(b, "unknown", clock)).reason == "inactive"
    assert requests(b) == 0 and b.stats()["shared_cache_hits"] == 2
    await a.aclose()
    await b.aclose()


@pytest.mark.redis
async def test_a_shared_answer_keeps_its_first_deadline(
    issuer: RunningIssuer, redis_url: str, redis_prefix: str
) -> None:
    clock = now_clock()
    options = {
        "introspection_url": issuer.introspection_endpoint,
        "cache": redis_url,
        "cache_prefix": redis_prefix,
        "cache_ttl": 10,
    }
    a, b = stage(issuer, clock=clock, **options), stage(issuer, clock=clock, **options)
    token = issuer.mint_opaque("alice")
    await evaluate(a, token, clock)
    issuer.revoke(token)
    clock.advance(8)
    assert (await evaluate(b, token, clock)).allowed  # from Redis, deadline 2 s away
    clock.advance(2)
    d = await evaluate(b, token, clock)  # b's copy ends with a's deadline, not 10 s after it read it
    assert (d.allowed, d.reason) == (False, "inactive")
    assert requests(b) == 1
    await a.aclose()
    await b.aclose()


@pytest.mark.redis
async def test_redis_holds_the_answer_under_the_digest_never_the_token(
    issuer: RunningIssuer, redis_url: str, redis_prefix: str
) -> None:
    import redis.asyncio as aioredis

    st = stage(issuer, introspection_url=issuer.introspection_endpoint, cache=redis_url, cache_prefix=redis_prefix)
    token = issuer.mint_opaque("alice")
    await evaluate(st, token)
    client = aioredis.Redis.from_url(redis_url)
    try:
        keys = [k async for k in client.scan_iter(match=f"{redis_prefix}*")]
        assert len(keys) == 1
        value = await client.get(keys[0])
        ttl = await client.pttl(keys[0])
    finally:
        await client.aclose()
    assert token not in keys[0].decode() and value is not None and token.encode() not in value
    assert 0 < ttl <= 60_000
    await st.aclose()


async def test_a_redis_outage_falls_back_to_the_endpoint_with_one_warning(
    issuer: RunningIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    st = stage(
        issuer, introspection_url=issuer.introspection_endpoint, cache=f"redis://127.0.0.1:{port}", max_entries=0
    )
    with caplog.at_level(logging.WARNING, logger="fastapps_auth.introspection"):
        for _ in range(3):
            assert (await evaluate(st, issuer.mint_opaque("alice"))).allowed
    assert sum("shared cache failed" in r.getMessage() for r in caplog.records) == 1
    assert requests(st) == 3
    await st.aclose()


async def test_an_answer_in_flight_when_the_stage_is_bound_is_not_cached() -> None:
    with JWKSServer() as srv:
        srv.set_json("/introspect", {"active": True, "sub": "alice", "aud": "another-api"})
        srv.delay = 0.3
        st = stage_at(srv)
        chain = VerifierChain(st)
        lookup = asyncio.create_task(chain.evaluate("tok"))
        await asyncio.sleep(0.1)  # bounded: lets the request start
        st.bind_resource("https://mcp.example.com/mcp")
        first = await asyncio.wait_for(lookup, 5)
        srv.delay = 0.0
        second = await chain.evaluate("tok")
        await chain.aclose()
        assert srv.count("/introspect") == 2, "the answer in flight at the binding was not kept"
    assert (first.reason, second.reason) == ("wrong_audience", "wrong_audience")  # judged on arrival, bound
    assert second.trace[0].cache_hit is False
