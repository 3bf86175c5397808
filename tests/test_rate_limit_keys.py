"""What the rate-limit stage counts by: subject, client, claim values of every JSON type, IP (IPv6 by /64)."""

from __future__ import annotations

from typing import Any

import pytest

from fastapps_auth import Rejected, RequestInfo, VerifierChain, request_context
from fastapps_auth.backends.ratelimit.memory import MemoryRateLimitBackend
from fastapps_auth.clock import ManualClock
from fastapps_auth.stage import Verification
from fastapps_auth.stages.rate_limit import RateLimitStage
from tests.support.rate_limit import admitted, token, verification
from tests.support.stages import TokenIsSubject

# -- keys ---------------------------------------------------------------------------------------


async def test_key_client_id_and_claim(clock: ManualClock) -> None:
    by_client = RateLimitStage(limit=1, window=60, key="client_id", clock=clock)
    assert await admitted(by_client, clock, 1, token("alice", client_id="app")) == 1
    assert await admitted(by_client, clock, 1, token("bob", client_id="app")) == 0
    by_org = RateLimitStage(limit=1, window=60, key="claim:org", clock=clock)
    assert await admitted(by_org, clock, 1, token("alice", org="acme")) == 1
    assert await admitted(by_org, clock, 1, token("bob", org="acme")) == 0
    assert await admitted(by_org, clock, 1, token("carol", org="other")) == 1


async def test_key_ip_reads_the_request_context(clock: ManualClock) -> None:
    stage = RateLimitStage(limit=1, window=60, key="ip", clock=clock)
    await stage(verification(clock, token("alice"), RequestInfo(client_ip="10.0.0.1")))
    with pytest.raises(Rejected):
        await stage(verification(clock, token("bob"), RequestInfo(client_ip="10.0.0.1")))
    await stage(verification(clock, token("alice"), RequestInfo(client_ip="10.0.0.2")))


@pytest.mark.parametrize(
    ("first", "same", "other"),
    [
        # one subscriber holds a whole /64: any address in it is the same client
        ("2001:db8:1:2::1", "2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:3::1"),
        # a dual-stack listener's view of an IPv4 client is that IPv4 client, not one bucket for all of IPv4
        ("192.0.2.1", "::ffff:192.0.2.1", "::ffff:192.0.2.2"),
    ],
    ids=["ipv6-by-64", "ipv4-mapped"],
)
async def test_key_ip_groups_an_ipv6_subscriber(clock: ManualClock, first: str, same: str, other: str) -> None:
    stage = RateLimitStage(limit=1, window=60, key="ip", clock=clock)
    await stage(verification(clock, token("alice"), RequestInfo(client_ip=first)))
    with pytest.raises(Rejected):
        await stage(verification(clock, token("alice"), RequestInfo(client_ip=same)))
    await stage(verification(clock, token("alice"), RequestInfo(client_ip=other)))


async def test_key_ip_without_middleware_fails_open_by_default_and_says_why(
    clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    chain = VerifierChain(TokenIsSubject(), RateLimitStage(limit=1, window=60, key="ip"), clock=clock)
    d = await chain.evaluate("user:alice")
    assert d.allowed and list(d.failed_open) == ["rate-limit"]
    assert "request context" in caplog.text and "middleware" in caplog.text
    with request_context(RequestInfo(client_ip="10.1.1.1")):
        assert (await chain.evaluate("user:alice")).allowed
        d = await chain.evaluate("user:alice")
    assert (d.allowed, d.status, d.reason) == (False, 429, "rate_limited")


async def test_missing_claim_key_denies_with_503_when_on_error_is_deny(clock: ManualClock) -> None:
    chain = VerifierChain(
        TokenIsSubject(), RateLimitStage(limit=1, window=60, key="claim:org", on_error="deny"), clock=clock
    )
    d = await chain.evaluate("user:alice")
    assert (d.allowed, d.status, d.stage) == (False, 503, "rate-limit")


async def test_long_keys_are_hashed_so_memory_per_key_stays_bounded(clock: ManualClock) -> None:
    store = MemoryRateLimitBackend(clock=clock)
    stage = RateLimitStage(limit=1, window=60, clock=clock, store=store)
    long = "x" * 10_000
    await stage(verification(clock, token(long)))
    assert store.peek(long) is None
    assert len(store) == 1
    with pytest.raises(Rejected):
        await stage(verification(clock, token(long)))


# -- keys of every JSON type ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b"),
    [(1, "1"), (1, 2), (1.5, "1.5"), ("=1", 1), (10**200, "=" + "1" + "0" * 200), (True, "true")],
    ids=["int-vs-str", "ints", "float-vs-str", "str-spelling-a-number", "huge-int-vs-str", "bool-vs-str"],
)
async def test_claim_values_of_different_types_keep_different_counts(clock: ManualClock, a: Any, b: Any) -> None:
    stage = RateLimitStage(limit=1, window=3600, key="claim:org", clock=clock, on_error="deny")
    chain = VerifierChain(ClaimsAuth({"org": a}), stage, clock=clock)
    other = VerifierChain(ClaimsAuth({"org": b}), stage, clock=clock)
    first, second = await chain.evaluate("t"), await other.evaluate("t")
    if isinstance(a, bool):  # a boolean is no key: the stage says so (503 with deny), it never shares b's count
        assert (first.status, second.allowed) == (503, True)
        return
    assert first.allowed and second.allowed
    assert (await chain.evaluate("t")).status == (await other.evaluate("t")).status == 429


async def test_a_float_claim_is_a_key_and_an_integral_one_is_its_integer(clock: ManualClock) -> None:
    stage = RateLimitStage(limit=1, window=3600, key="claim:org", clock=clock, on_error="deny")
    assert (await VerifierChain(ClaimsAuth({"org": 7.5}), stage, clock=clock).evaluate("t")).allowed
    assert (await VerifierChain(ClaimsAuth({"org": 7.5}), stage, clock=clock).evaluate("t")).status == 429
    assert (await VerifierChain(ClaimsAuth({"org": 7}), stage, clock=clock).evaluate("t")).allowed
    assert (await VerifierChain(ClaimsAuth({"org": 7.0}), stage, clock=clock).evaluate("t")).status == 429


@pytest.mark.parametrize("value", [None, [1], {"a": 1}, float("inf"), float("nan")])
async def test_a_claim_that_is_no_key_is_said_so(clock: ManualClock, value: Any) -> None:
    stage = RateLimitStage(limit=1, window=3600, key="claim:org", clock=clock, on_error="deny")
    d = await VerifierChain(ClaimsAuth({"org": value}), stage, clock=clock).evaluate("t")
    assert (d.status, d.stage) == (503, "rate-limit")


class ClaimsAuth(TokenIsSubject):
    """Authenticates any token with fixed claims."""

    def __init__(self, claims: dict[str, Any]) -> None:
        super().__init__()
        self.claims = claims

    async def __call__(self, v: Verification) -> None:
        v.access_token = token("alice", **self.claims)
