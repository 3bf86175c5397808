"""The rate-limit stage when its backend fails: on_error (allow, deny, local with local_share), said once per outage."""

from __future__ import annotations

import logging

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from fastapps_auth import VerifierChain
from fastapps_auth.backends.ratelimit.algorithm import Outcome, Rule
from fastapps_auth.backends.ratelimit.memory import MemoryRateLimitBackend
from fastapps_auth.clock import ManualClock
from fastapps_auth.stages.rate_limit import RateLimitStage
from tests.support.stages import TokenIsSubject


async def test_on_error_local_enforces_a_share_of_the_rules_in_memory_and_says_so(
    clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    store = FlakyStore(clock)
    stage = RateLimitStage(limit=8, window=60, on_error="local", local_share=0.25, clock=clock, store=store)
    chain = VerifierChain(TokenIsSubject(), stage, clock=clock)
    assert (await chain.evaluate("user:alice")).allowed
    store.down = True
    decisions = [await chain.evaluate("user:alice") for _ in range(5)]
    assert [d.allowed for d in decisions] == [True, True, False, False, False]  # 8 x 0.25 = 2, in this process
    d = decisions[0]
    assert not d.failed_open  # enforced, not failed open
    backend, own = d.trace[-2:]
    assert (backend.stage, backend.outcome, backend.reason, backend.error) == (
        "rate-limit/backend",
        "error-allowed",
        "degraded-local",
        "ConnectionError",
    )
    assert own.outcome == "passed" and d.rate_limit is not None and d.rate_limit.limit == 2
    refused = decisions[-1]
    assert (refused.status, refused.reason) == (429, "rate_limited")
    assert refused.description == "rate limit exceeded (2 per 60s)"
    assert refused.trace[-2].reason == "degraded-local"
    stats = stage.stats()
    assert (stats["local_checks"], stats["outages"], stats["outage_active"], stats["local_keys"]) == (5, 1, 1, 1)
    assert len([r for r in caplog.records if r.levelname == "WARNING"]) == 1
    assert "x0.25" in caplog.text and "ConnectionError: redis is down" in caplog.text
    store.down = False
    d = await chain.evaluate("user:alice")  # the backend decides again, with its own count
    assert d.allowed and d.rate_limit is not None and d.rate_limit.remaining == 6 and len(d.trace) == 2
    clock.advance(10)  # quiet for 10 s: the outage is over, said once, and the local counts let go
    with caplog.at_level(logging.INFO, logger="fastapps_auth"):
        assert (await chain.evaluate("user:alice")).allowed
    assert "answers again" in caplog.text and "5 checks failed" in caplog.text
    assert stage.stats()["outage_active"] == 0 and stage.stats()["local_keys"] == 0


async def test_a_closed_stage_refuses_with_503_and_touches_nothing(clock: ManualClock) -> None:
    store = FlakyStore(clock)
    stage = RateLimitStage(limit=8, window=60, clock=clock, store=store)
    chain = VerifierChain(TokenIsSubject(), stage, clock=clock)
    assert (await chain.evaluate("user:alice")).allowed
    await stage.aclose()
    await stage.aclose()  # idempotent
    assert stage.closed and store.closes == 1
    d = await chain.evaluate("user:alice")
    assert (d.allowed, d.status, d.error, d.stage) == (False, 503, "temporarily_unavailable", "rate-limit")
    assert store.hits == 1


class FlakyStore(MemoryRateLimitBackend):
    """The memory backend, failing like an unreachable Redis while ``down``."""

    __slots__ = ("closes", "down", "hits")

    def __init__(self, clock: ManualClock) -> None:
        super().__init__(clock=clock)
        self.down = False
        self.hits = 0
        self.closes = 0

    async def hit(self, key: str, rules: tuple[Rule, ...]) -> Outcome:
        self.hits += 1
        if self.down:
            raise RedisConnectionError("redis is down")
        return self.hit_now(key, rules)

    async def aclose(self) -> None:
        self.closes += 1
