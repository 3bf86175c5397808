"""The rate-limit stage on the memory backend: rules, tiers, keys, 429s, fail-open, bounds."""

from __future__ import annotations

import logging
import sys
import tracemalloc
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from fastapps_auth import AccessToken, ConfigError, Rejected, RequestInfo, VerifierChain, request_context
from fastapps_auth.backends.ratelimit import DEFAULT_TIMEOUT, check_uri, open_rate_limit_backend
from fastapps_auth.backends.ratelimit.algorithm import US, Outcome, Rule
from fastapps_auth.backends.ratelimit.memory import MemoryRateLimitBackend
from fastapps_auth.clock import ManualClock
from fastapps_auth.config import chain_from_config
from fastapps_auth.stage import Verification
from fastapps_auth.stages.rate_limit import RateLimitStage
from tests.support.stages import TokenIsSubject


def token(
    subject: str = "alice", *, client_id: str = "app", scopes: list[str] | None = None, **claims: Any
) -> AccessToken:
    return AccessToken(
        token="t",
        client_id=client_id,
        scopes=scopes or [],
        subject=subject,
        claims={"sub": subject, **claims},
        expires_at=None,
    )


def verification(clock: ManualClock, at: AccessToken | None = None, request: RequestInfo | None = None) -> Verification:
    v = Verification("t", now=clock.time(), clock=clock, request=request)
    v.access_token = at if at is not None else token()
    return v


async def admitted(stage: RateLimitStage, clock: ManualClock, n: int, at: AccessToken | None = None) -> int:
    """How many of ``n`` back-to-back requests pass."""
    ok = 0
    for _ in range(n):
        try:
            await stage(verification(clock, at))
            ok += 1
        except Rejected:
            pass
    return ok


# -- the rule -----------------------------------------------------------------------------------


async def test_admits_the_burst_then_rejects_with_429_and_exact_retry_after(clock: ManualClock) -> None:
    stage = RateLimitStage(limit=5, window=10, clock=clock)
    assert await admitted(stage, clock, 5) == 5
    v = verification(clock)
    with pytest.raises(Rejected) as exc:
        await stage(v)
    r = exc.value
    assert (r.reason, r.error, r.status) == ("rate_limited", "rate_limited", 429)
    assert r.description == "rate limit exceeded (5 per 10s)"
    assert r.retry_after == pytest.approx(2.0)  # one request frees every 10/5 s
    assert v.rate_limit is not None
    assert (v.rate_limit.limit, v.rate_limit.remaining, v.rate_limit.reset) == (5, 0, r.retry_after)
    assert v.rate_limit.policy == "5;w=10"
    # retry_after is exact: a microsecond early is still refused, on time is admitted.
    assert r.retry_after is not None
    clock.advance(r.retry_after - 2e-6)
    assert await admitted(stage, clock, 1) == 0
    clock.advance(2e-6)
    assert await admitted(stage, clock, 1) == 1
    assert await admitted(stage, clock, 1) == 0


async def test_pass_exposes_remaining_and_reset_of_the_rule(clock: ManualClock) -> None:
    stage = RateLimitStage(limit=3, window=30, clock=clock)
    seen = []
    for _ in range(3):
        v = verification(clock)
        await stage(v)
        assert v.rate_limit is not None
        seen.append((v.rate_limit.remaining, v.rate_limit.reset))
    # object: each reset is a pytest.approx, which compares equal to the float it wraps
    expected: list[tuple[int, object]] = [(2, pytest.approx(10.0)), (1, pytest.approx(20.0)), (0, pytest.approx(30.0))]
    assert seen == expected


async def test_an_idle_key_gets_its_full_burst_back(clock: ManualClock) -> None:
    stage = RateLimitStage(limit=4, window=8, clock=clock)
    assert await admitted(stage, clock, 10) == 4
    clock.advance(8)
    assert await admitted(stage, clock, 10) == 4


async def test_burst_below_limit_spreads_requests(clock: ManualClock) -> None:
    stage = RateLimitStage(limit=10, window=10, burst=2, clock=clock)
    assert await admitted(stage, clock, 5) == 2
    clock.advance(1)
    assert await admitted(stage, clock, 5) == 1


async def test_window_accepts_duration_strings(clock: ManualClock) -> None:
    stage = RateLimitStage(limit=2, window="1h", clock=clock)
    assert stage.rules[0].window == 3600
    assert RateLimitStage(limit=2, window="250ms").rules[0].window == 0.25


async def test_several_rules_all_apply_and_a_refusal_charges_none(clock: ManualClock) -> None:
    stage = RateLimitStage(rules=[{"limit": 2, "window": 1}, {"limit": 3, "window": 3600}], clock=clock)
    assert await admitted(stage, clock, 5) == 2  # the per-second rule binds
    v = verification(clock)
    with pytest.raises(Rejected) as exc:
        await stage(v)
    assert exc.value.retry_after == pytest.approx(0.5)
    assert v.rate_limit is not None and v.rate_limit.limit == 2
    clock.advance(1)
    assert await admitted(stage, clock, 5) == 1  # now the hourly rule (3) binds
    with pytest.raises(Rejected) as exc:
        await stage(verification(clock))
    assert exc.value.retry_after == pytest.approx(3600 / 3 - 1, abs=1e-3)  # one slot frees every 1200 s


async def test_pass_reports_the_tightest_rule(clock: ManualClock) -> None:
    stage = RateLimitStage(rules=[{"limit": 100, "window": 1}, {"limit": 3, "window": 3600}], clock=clock)
    v = verification(clock)
    await stage(v)
    assert v.rate_limit is not None
    assert (v.rate_limit.limit, v.rate_limit.remaining, v.rate_limit.window) == (3, 2, 3600)


async def test_keys_are_independent(clock: ManualClock) -> None:
    stage = RateLimitStage(limit=1, window=60, clock=clock)
    assert await admitted(stage, clock, 3, token("alice")) == 1
    assert await admitted(stage, clock, 3, token("bob")) == 1


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


# -- tiers --------------------------------------------------------------------------------------


async def test_tier_by_scope_inherits_the_window(clock: ManualClock) -> None:
    stage = RateLimitStage(limit=2, window=60, tiers=[{"scope": "premium", "limit": 5}], clock=clock)
    assert stage.tier_for(token(scopes=["premium"])) == (Rule.make(5, 60),)
    assert await admitted(stage, clock, 10, token("p", scopes=["read", "premium"])) == 5
    assert await admitted(stage, clock, 10, token("f", scopes=["read"])) == 2


async def test_tier_by_claim_value_first_match_wins(clock: ManualClock) -> None:
    stage = RateLimitStage(
        limit=1,
        window=60,
        tiers=[
            {"claim": "plan", "value": "pro", "rules": [{"limit": 3, "window": 60}]},
            {"claim": "roles", "value": "admin", "unlimited": True},
            {"claim": "plan", "value": "pro", "limit": 99},
        ],
        clock=clock,
    )
    assert await admitted(stage, clock, 10, token("a", plan="pro")) == 3
    assert await admitted(stage, clock, 10, token("b", roles=["user", "admin"])) == 10
    assert await admitted(stage, clock, 10, token("c", plan="free")) == 1
    assert await admitted(stage, clock, 10, token("d", plan=True)) == 1  # a bool is not the string "pro"


async def test_a_tier_keeps_its_own_count(clock: ManualClock) -> None:
    stage = RateLimitStage(limit=1, window=60, tiers=[{"scope": "premium", "limit": 2}], clock=clock)
    assert await admitted(stage, clock, 5, token("alice")) == 1
    assert await admitted(stage, clock, 5, token("alice", scopes=["premium"])) == 2


# -- configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "key", "words"),
    [
        ({}, "limit", "needs limit"),
        ({"limit": 10}, "window", "needs window"),
        ({"limit": 0, "window": 1}, "limit", "greater than or equal"),
        ({"limit": 10, "window": 0}, "window", "greater than"),
        ({"limit": 10, "window": "soon"}, "window", "duration"),
        ({"limit": 10, "window": 1, "burst": 11}, "burst", "between 1 and limit"),
        ({"limit": 10, "window": 1, "rules": [{"limit": 1, "window": 1}]}, "rules", "not both"),
        ({"rules": []}, "rules", "at least one rule"),
        ({"rules": [{"limit": 1}]}, "rules.0.window", "required"),
        ({"limit": 1, "window": 1, "key": "email"}, "key", "unknown key"),
        ({"limit": 1, "window": 1, "backend": "mysql://x"}, "backend", "unsupported backend"),
        ({"limit": 1, "window": 1, "backend": "redis://cache.internal:6379"}, "backend", "rediss://"),
        ({"limit": 1, "window": 1, "backend": "redis://:s3cret@127.0.0.1:port/0"}, "backend", "port must be a number"),
        ({"limit": 1, "window": 1, "backend": "redis://127.0.0.1:7000?cluster=true"}, "backend", "redis+cluster://"),
        ({"limit": 1, "window": 1, "backend": "redis://:s3cret@127.0.0.1?colour=red"}, "backend", "'colour'"),
        ({"limit": 1, "window": 1, "backend": "redis+sentinel://127.0.0.1:26379"}, "backend", "service name"),
        ({"limit": 1, "window": 1, "backend": "redis+cluster://127.0.0.1:7000/3"}, "backend", "only database 0"),
        ({"limit": 1, "window": 1, "backend": "redis+cluster://127.0.0.1:7000,10.0.0.2:7000"}, "backend", "rediss+"),
        ({"limit": 1, "window": 1, "backend": "redis://127.0.0.1,127.0.0.2"}, "backend", "names one server"),
        ({"limit": 1, "window": 1, "backend": "redis://127.0.0.1?ssl_ca_certs=x"}, "backend", "needs TLS"),
        ({"limit": 1, "window": 1, "backend": "memory://x"}, "backend", "nothing after"),
        ({"limit": 1, "window": 1, "local_share": 0.5}, "local_share", "on_error = 'local'"),
        ({"limit": 1, "window": 1, "on_error": "local", "local_share": 0}, "local_share", "greater than"),
        ({"limit": 1, "window": 1, "on_error": "maybe"}, "on_error", "'local'"),
        ({"limit": 1, "window": 1, "max_connections": 0}, "max_connections", "greater than or equal"),
        ({"limit": 1, "window": 1, "tiers": [{"limit": 5}]}, "tiers[0].scope", "exactly one"),
        ({"limit": 1, "window": 1, "tiers": [{"scope": "a", "claim": "b"}]}, "tiers[0].scope", "exactly one"),
        ({"limit": 1, "window": 1, "tiers": [{"claim": "plan", "limit": 5}]}, "tiers[0].value", "needs value"),
        ({"limit": 1, "window": 1, "tiers": [{"scope": "p"}]}, "tiers[0].limit", "needs limit"),
        ({"limit": 1, "window": 1, "tiers": [{"scope": "p", "unlimited": True, "limit": 3}]}, "tiers[0].unlimited", ""),
        (
            {"rules": [{"limit": 1, "window": 1}, {"limit": 9, "window": 9}], "tiers": [{"scope": "p", "limit": 3}]},
            "tiers[0].window",
            "needs window",
        ),
        ({"limit": 1, "window": 1, "max_keys": 1}, "max_keys", "greater than or equal"),
        ({"limit": 1, "window": 1, "colour": "red"}, "colour", "unknown option"),
    ],
)
def test_bad_configuration_is_named_at_construction(options: dict[str, Any], key: str, words: str) -> None:
    with pytest.raises(ConfigError) as exc:
        RateLimitStage(**options)
    assert "s3cret" not in str(exc.value)
    assert exc.value.location.key == key
    assert exc.value.location.stage == "rate-limit"
    assert words in exc.value.detail


def test_defaults_on_error_allow_timeout_and_connections() -> None:
    stage = RateLimitStage(limit=1, window=1)
    assert stage.on_error == stage.policy == "allow"
    assert (stage.options.timeout, stage.options.max_connections) == (DEFAULT_TIMEOUT, 32)


def test_backend_uris() -> None:
    assert check_uri("memory://") == "memory"
    assert check_uri("redis://127.0.0.1:6379/0") == "redis"
    assert check_uri("redis://localhost") == "redis"
    assert check_uri("rediss://cache.internal:6380") == "rediss"
    assert check_uri("redis://cache.internal", allow_plaintext=True) == "redis"
    with pytest.raises(ValueError, match="unsupported"):
        check_uri("http://x")
    assert isinstance(open_rate_limit_backend("memory://", max_keys=10), MemoryRateLimitBackend)
    stage = RateLimitStage(limit=1, window=1, backend="redis://cache.internal:6379", insecure_backend=True)
    assert type(stage.backend).__name__ == "RedisRateLimitBackend"


async def test_from_config_file_shape_through_the_chain(clock: ManualClock) -> None:
    from fastapps_auth import registry

    registry.register("token-is-subject", TokenIsSubject)
    try:
        chain = chain_from_config(
            {
                "stages": [
                    {"use": "token-is-subject"},
                    {"use": "rate-limit", "limit": 2, "window": 3600, "backend": "${RL_URL:-memory://}"},
                ]
            },
            clock=clock,
            env={},
        )
    finally:
        registry.unregister("token-is-subject")
    async with chain:
        first = await chain.evaluate("user:alice")
        assert first.allowed and first.rate_limit is not None and first.rate_limit.remaining == 1
        assert (await chain.evaluate("user:alice")).allowed
        d = await chain.evaluate("user:alice")
    assert (d.allowed, d.status, d.stage, d.reason, d.error) == (
        False,
        429,
        "rate-limit",
        "rate_limited",
        "rate_limited",
    )
    assert d.retry_after == pytest.approx(1800.0)
    assert d.rate_limit is not None and d.rate_limit.remaining == 0
    assert d.as_dict()["rate_limit"] == {"limit": 2, "remaining": 0, "reset": d.retry_after}


# -- memory backend bounds ----------------------------------------------------------------------


def test_memory_keys_never_exceed_max_keys_and_active_keys_survive(clock: ManualClock) -> None:
    store = MemoryRateLimitBackend(max_keys=1000, clock=clock)
    rules = (Rule.make(1, 3600),)
    assert store.hit_now("hot", rules).allowed
    for i in range(20_000):
        store.hit_now(f"user-{i}", rules)
        assert len(store) <= 1000
        if i % 100 == 0:  # the hot user keeps coming back: it is never forgotten, so stays limited
            assert not store.hit_now("hot", rules).allowed
    assert store.rotations > 0 and store.dropped > 0
    assert store.stats()["keys"] == len(store)


def test_memory_forgets_idle_keys_first(clock: ManualClock) -> None:
    store = MemoryRateLimitBackend(max_keys=10, clock=clock)
    rules = (Rule.make(1, 3600),)
    store.hit_now("idle", rules)
    for i in range(10):
        store.hit_now(f"k{i}", rules)
    assert store.peek("idle") is None  # forgotten after max_keys/2 newer keys arrived twice over
    assert store.peek("k9") is not None


def _deep_size(store: MemoryRateLimitBackend) -> int:
    """Bytes held by the store's dicts, keys and values, rounded to pymalloc's 16-byte blocks."""
    total = 0
    for d in (store._young, store._old):
        total += sys.getsizeof(d)
        for k, v in d.items():
            total += -(-sys.getsizeof(k) // 16) * 16 + -(-sys.getsizeof(v) // 16) * 16
    return total


def test_memory_per_key_is_at_most_150_bytes_over_a_million_keys(clock: ManualClock) -> None:
    store = MemoryRateLimitBackend(max_keys=1_000_000, clock=clock)
    rules = (Rule.make(10_000, 3600),)
    hit = store.hit_now
    for i in range(1_000_000):
        hit(f"user-{i:07d}", rules)  # 12-character keys, like short subjects
    assert len(store) == 1_000_000
    per_key = _deep_size(store) / 1_000_000
    assert per_key <= 150, per_key


def test_tracemalloc_agrees_with_the_size_accounting(clock: ManualClock) -> None:
    """What the allocator really handed out (keys included), on a sample small enough to trace quickly."""
    store = MemoryRateLimitBackend(max_keys=1_000_000, clock=clock)
    rules = (Rule.make(10_000, 3600),)
    n = 60_000
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(n):
            store.hit_now(f"user-{i:07d}", rules)
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert used / n <= 150, used / n
    assert abs(used - _deep_size(store)) / used < 0.1


def test_tats_are_integer_microseconds_of_the_injected_clock(clock: ManualClock) -> None:
    store = MemoryRateLimitBackend(clock=clock)
    rules = (Rule.make(4, 2),)
    start = store.now()
    assert start == round(clock.monotonic() * US)  # to the nearest microsecond
    store.hit_now("a", rules)
    assert store.peek("a") == start + 500_000


async def test_a_key_cannot_spell_another_tiers_key(clock: ManualClock) -> None:
    store = MemoryRateLimitBackend(clock=clock)
    stage = RateLimitStage(
        limit=1, window=60, key="claim:org", tiers=[{"scope": "p", "limit": 1}], clock=clock, store=store
    )
    assert await admitted(stage, clock, 1, token("a", org="x", scopes=["p"])) == 1
    assert await admitted(stage, clock, 1, token("b", org="t0:x")) == 1  # not tier 0's "x"
    assert sorted(store._young) == ["d:t0:x", "t0:x"]


async def test_the_decision_reports_the_tightest_of_several_stages(clock: ManualClock) -> None:
    per_user = RateLimitStage(limit=10, window=60, name="per-user")
    per_client = RateLimitStage(limit=3, window=60, key="client_id", name="per-client")
    chain = VerifierChain(TokenIsSubject(), per_user, per_client, clock=clock)
    d = await chain.evaluate("user:alice")
    assert d.rate_limit is not None and (d.rate_limit.limit, d.rate_limit.remaining) == (3, 2)
    reversed_chain = VerifierChain(TokenIsSubject(), per_client, per_user, clock=clock)
    d = await reversed_chain.evaluate("user:bob")
    assert d.rate_limit is not None and (d.rate_limit.limit, d.rate_limit.remaining) == (3, 1)
    assert per_user.stats()["keys"] == 2 and per_client.stats()["keys"] == 1


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


# -- when the backend fails: on_error, stated once ------------------------------------------------


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


class ClaimsAuth(TokenIsSubject):
    """Authenticates any token with fixed claims."""

    def __init__(self, claims: dict[str, Any]) -> None:
        super().__init__()
        self.claims = claims

    async def __call__(self, v: Verification) -> None:
        v.access_token = token("alice", **self.claims)
