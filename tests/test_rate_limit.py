"""The rate-limit stage on the memory backend: rules, tiers, 429s, configuration."""

from __future__ import annotations

from typing import Any

import pytest

from fastapps_auth import ConfigError, Rejected, VerifierChain
from fastapps_auth.backends.ratelimit import DEFAULT_TIMEOUT, check_uri, open_rate_limit_backend
from fastapps_auth.backends.ratelimit.algorithm import Rule
from fastapps_auth.backends.ratelimit.memory import MemoryRateLimitBackend
from fastapps_auth.clock import ManualClock
from fastapps_auth.config import chain_from_config
from fastapps_auth.stages.rate_limit import RateLimitStage
from tests.support.rate_limit import admitted, token, verification
from tests.support.stages import TokenIsSubject

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
