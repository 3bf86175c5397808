"""The verified-token cache: bounded, oldest evicted first, every hit rechecked against its deadline."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastapps_auth import ManualClock, VerifierChain
from fastapps_auth.backends.token_cache import VerifiedTokenCache
from fastapps_auth.stages.jwt import JWTVerifier
from tests.support.jwt_mint import claims, signing_key

ISS = "https://issuer.example/"
NOW = 1_800_000_000.0


def d(i: int) -> bytes:
    return hashlib.sha256(str(i).encode()).digest()


def test_hit_until_the_deadline_then_dropped() -> None:
    cache: VerifiedTokenCache[str] = VerifiedTokenCache(10, ttl=300)
    cache.put(d(1), "at", now=NOW, expires=NOW + 100)
    assert cache.get(d(1), NOW) == "at"
    assert cache.get(d(1), NOW + 99.999) == "at"
    assert cache.get(d(1), NOW + 100) is None  # the deadline itself is past
    assert len(cache) == 0  # an expired entry is dropped on the hit that finds it
    assert cache.get(d(1), NOW) is None  # and does not come back for an earlier clock


def test_ttl_caps_the_deadline() -> None:
    cache: VerifiedTokenCache[str] = VerifiedTokenCache(10, ttl=5)
    cache.put(d(1), "at", now=NOW, expires=NOW + 3600)
    assert cache.get(d(1), NOW + 4.9) == "at"
    assert cache.get(d(1), NOW + 5) is None


def test_already_expired_is_not_stored() -> None:
    cache: VerifiedTokenCache[str] = VerifiedTokenCache(10, ttl=5)
    cache.put(d(1), "at", now=NOW, expires=NOW)
    cache.put(d(2), "at", now=NOW, expires=NOW - 1)
    assert len(cache) == 0


def test_bounded_oldest_evicted_first() -> None:
    cache: VerifiedTokenCache[int] = VerifiedTokenCache(3, ttl=300)
    for i in range(5):
        cache.put(d(i), i, now=NOW, expires=NOW + 100)
    assert len(cache) == 3
    assert [cache.get(d(i), NOW) for i in range(5)] == [None, None, 2, 3, 4]


def test_restoring_an_entry_makes_it_newest_without_evicting() -> None:
    cache: VerifiedTokenCache[str] = VerifiedTokenCache(2, ttl=300)
    cache.put(d(1), "one", now=NOW, expires=NOW + 100)
    cache.put(d(2), "two", now=NOW, expires=NOW + 100)
    cache.put(d(1), "one again", now=NOW + 1, expires=NOW + 200)
    assert len(cache) == 2
    cache.put(d(3), "three", now=NOW, expires=NOW + 100)  # evicts 2, now the oldest
    assert cache.get(d(2), NOW) is None
    assert cache.get(d(1), NOW + 150) == "one again"


def test_clear() -> None:
    cache: VerifiedTokenCache[str] = VerifiedTokenCache(2, ttl=300)
    cache.put(d(1), "one", now=NOW, expires=NOW + 100)
    cache.clear()
    assert len(cache) == 0 and cache.get(d(1), NOW) is None


@pytest.mark.parametrize(("size", "ttl"), [(0, 1.0), (-1, 1.0), (1, 0.0), (1, -5.0), (1, float("nan"))])
def test_invalid_bounds(size: int, ttl: float) -> None:
    with pytest.raises(ValueError):
        VerifiedTokenCache(size, ttl=ttl)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(min_value=1, max_value=8),
    st.lists(
        st.tuples(st.sampled_from(["put", "get"]), st.integers(0, 12), st.floats(0, 50), st.floats(-10, 100)),
        max_size=60,
    ),
)
def test_never_larger_than_bound_never_past_deadline(size: int, ops: list[tuple[str, int, float, float]]) -> None:
    """Whatever the sequence, the size bound holds and no hit is at or past its entry's deadline."""
    cache: VerifiedTokenCache[tuple[int, float]] = VerifiedTokenCache(size, ttl=30)
    now = NOW
    for op, key, step, lifetime in ops:
        now += step
        if op == "put":
            cache.put(d(key), (key, min(now + lifetime, now + 30)), now=now, expires=now + lifetime)
        else:
            hit = cache.get(d(key), now)
            if hit is not None:
                assert hit[0] == key and now < hit[1]
        assert len(cache) <= size


# -- through the stage, with an injected clock ------------------------------------------------------------


async def test_stage_cache_rechecks_exp_on_every_hit(clock: ManualClock) -> None:
    key = signing_key("EdDSA")
    st_ = JWTVerifier(jwks={"keys": [key.jwk()]}, algorithms=["EdDSA"], issuer_url=ISS, clock=clock, leeway=10)
    chain = VerifierChain(st_, clock=clock)
    now = int(clock.time())
    token = key.token(claims(now, exp=now + 60, aud=None))
    assert (await chain.evaluate(token)).trace[0].cache_hit is False
    clock.advance(69)  # exp + leeway not yet reached
    d1 = await chain.evaluate(token)
    assert d1.allowed and d1.trace[0].cache_hit is True
    clock.advance(1)
    d2 = await chain.evaluate(token)
    assert (d2.allowed, d2.reason) == (False, "expired")
    assert st_.stats()["cached_tokens"] == 0


async def test_stage_cache_bounded_under_distinct_tokens(clock: ManualClock) -> None:
    key = signing_key("EdDSA")
    st_ = JWTVerifier(
        jwks={"keys": [key.jwk()]}, algorithms=["EdDSA"], issuer_url=ISS, clock=clock, max_cached_tokens=4
    )
    chain = VerifierChain(st_, clock=clock)
    tokens = [key.token(claims(clock.time(), aud=None, jti=str(i))) for i in range(10)]
    for t in tokens:
        assert (await chain.evaluate(t)).allowed
        assert st_.stats()["cached_tokens"] <= 4
    hits = [(await chain.evaluate(t)).trace[0].cache_hit for t in tokens[6:]]
    assert hits == [True, True, True, True]
