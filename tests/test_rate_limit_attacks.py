"""The rate-limit stage against hostile or unusual keys and configurations, on memory and on the real Redis."""

from __future__ import annotations

import asyncio
import hashlib
import math
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

from fastapps_auth import AccessToken, ConfigError, Rejected, VerifierChain
from fastapps_auth.backends.ratelimit.memory import MemoryRateLimitBackend
from fastapps_auth.clock import ManualClock
from fastapps_auth.config import chain_from_config
from fastapps_auth.stage import Verification
from fastapps_auth.stages.rate_limit import MAX_KEY_CHARS, RateLimitStage
from tests.support.stages import TokenIsSubject


def verification(clock: ManualClock, subject: str, **claims: Any) -> Verification:
    v = Verification("t", now=clock.time(), clock=clock)
    v.access_token = AccessToken(
        token="t",
        client_id="app",
        scopes=[],
        subject=subject,
        claims={"sub": subject, **claims},
        expires_at=None,
    )
    return v


async def allowed(stage: RateLimitStage, clock: ManualClock, subject: str, **claims: Any) -> bool:
    try:
        await stage(verification(clock, subject, **claims))
    except Rejected:
        return False
    return True


#: A long key, and a short one spelling the digest the long one used to be stored under.
VICTIM = "v" * (MAX_KEY_CHARS + 1)
FORGED = hashlib.sha256(VICTIM.encode()).hexdigest()


# -- memory ----------------------------------------------------------------------------------------------


async def test_a_short_key_cannot_spell_the_digest_of_a_long_one(clock: ManualClock) -> None:
    stage = RateLimitStage(limit=1, window=3600, key="claim:org", clock=clock)
    assert await allowed(stage, clock, "mallory", org=FORGED)
    assert await allowed(stage, clock, "victim", org=VICTIM)  # not charged by mallory's request
    assert not await allowed(stage, clock, "victim", org=VICTIM)
    assert not await allowed(stage, clock, "mallory", org=FORGED)


@pytest.mark.parametrize(
    ("a", "b"),
    [("#" + FORGED, FORGED), ("", "#"), ("a}", "a"), ("}", ""), ("x" * MAX_KEY_CHARS, "x" * (MAX_KEY_CHARS + 1))],
)
async def test_distinct_keys_keep_distinct_counts(clock: ManualClock, a: str, b: str) -> None:
    stage = RateLimitStage(limit=1, window=3600, key="claim:org", clock=clock)
    assert await allowed(stage, clock, "a", org=a)
    assert await allowed(stage, clock, "b", org=b)
    assert not await allowed(stage, clock, "a", org=a)
    assert not await allowed(stage, clock, "b", org=b)


async def test_odd_keys_are_counted_not_crashed_on(clock: ManualClock) -> None:
    store = MemoryRateLimitBackend(clock=clock)
    stage = RateLimitStage(limit=1, window=60, key="claim:org", clock=clock, store=store)
    for odd in ("\ud800", "a\x00b", "é" * MAX_KEY_CHARS, "é" * (MAX_KEY_CHARS + 1), "\ud800" * (MAX_KEY_CHARS + 1)):
        assert await allowed(stage, clock, "u", org=odd)
        assert not await allowed(stage, clock, "u", org=odd)
    assert len(store) == 5


@pytest.mark.parametrize("window", [math.inf, -math.inf, math.nan])
def test_a_window_that_is_not_a_finite_number_is_a_config_error(window: float) -> None:
    with pytest.raises(ConfigError) as e:
        chain_from_config({"stages": [{"use": "rate-limit", "limit": 1, "window": window}]})
    assert "window" in str(e.value)
    with pytest.raises(ConfigError):
        chain_from_config(
            {"stages": [{"use": "rate-limit", "limit": 1, "window": 1, "tiers": [{"scope": "p", "window": window}]}]}
        )


# -- redis -----------------------------------------------------------------------------------------------


@pytest.fixture
def prefix(redis_prefix: str) -> str:
    return redis_prefix


async def redis_keys(redis_url: str, prefix: str) -> list[bytes]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        return [k async for k in client.scan_iter(match=f"{prefix}*")]
    finally:
        await client.aclose()


@pytest.mark.redis
async def test_on_redis_a_short_key_cannot_spell_the_digest_of_a_long_one(redis_url: str, prefix: str) -> None:
    stage = RateLimitStage(limit=1, window=3600, backend=redis_url, prefix=prefix, timeout=2.0, on_error="deny")
    chain = VerifierChain(TokenIsSubject(), stage)
    async with chain:
        assert (await chain.evaluate(f"user:{FORGED}")).allowed
        assert (await chain.evaluate(f"user:{VICTIM}")).allowed
        assert (await chain.evaluate(f"user:{VICTIM}")).status == 429


@pytest.mark.redis
@pytest.mark.parametrize("subject", ["}", "}evil", "a}b", "{}", "{", "\ud800}", "x" * (MAX_KEY_CHARS + 1)])
async def test_every_rule_key_of_any_subject_is_in_one_cluster_slot(redis_url: str, prefix: str, subject: str) -> None:
    # A hash tag that ends at once ("{}...") is no hash tag: Redis Cluster hashes the whole key, the rules of
    # one user land in different slots, and the script fails with CROSSSLOT there (fail open by default).
    stage = RateLimitStage(
        rules=[{"limit": 5, "window": 1}, {"limit": 50, "window": 60}],
        backend=redis_url,
        prefix=prefix,
        timeout=2.0,
        on_error="deny",
    )
    chain = VerifierChain(TokenIsSubject(), stage)
    async with chain:
        assert (await chain.evaluate(f"user:{subject}")).allowed
    keys = await redis_keys(redis_url, prefix)
    assert len(keys) == 2
    assert len({key_slot(k) for k in keys}) == 1
    tag = keys[0].split(b"{", 1)[1].split(b"}", 1)[0]
    assert tag, keys  # a non-empty hash tag


class GarbageRedis:
    """A TCP server on 127.0.0.1 that answers every command with the same (valid RESP, wrong) reply."""

    def __init__(self, reply: bytes) -> None:
        self.reply = reply
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> str:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while await reader.read(65536):
                writer.write(self.reply)
            writer.close()

        self.server = await asyncio.start_server(answer, "127.0.0.1", 0)
        host, port = self.server.sockets[0].getsockname()[:2]
        return f"redis://{host}:{port}/0"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


@pytest.mark.parametrize(
    "reply",
    [b"+OK\r\n", b":1\r\n", b"*4\r\n:1\r\n:7\r\n:0\r\n:0\r\n", b"*1\r\n:1\r\n", b"-ERR no\r\n", b"$-1\r\n"],
)
async def test_a_redis_answering_garbage_is_a_transient_failure_never_a_crash(reply: bytes) -> None:
    async with GarbageRedis(reply) as url:
        lenient = RateLimitStage(limit=5, window=60, backend=url, timeout=2.0)
        strict = RateLimitStage(limit=5, window=60, backend=url, timeout=2.0, on_error="deny", name="strict")
        async with VerifierChain(TokenIsSubject(), lenient) as chain, VerifierChain(TokenIsSubject(), strict) as hard:
            d = await chain.evaluate("user:alice")
            assert d.allowed and list(d.failed_open) == ["rate-limit"]
            d = await hard.evaluate("user:alice")
            assert (d.allowed, d.status) == (False, 503)
