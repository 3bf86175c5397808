"""The verified-token cache (cachetools' TLRUCache on the injected clock): bounded, least recently used
evicted first, never served at or past an entry's deadline (exp + leeway, capped by the TTL)."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastapps_auth import AccessToken, ManualClock, Rejected, Verification, VerifierChain
from fastapps_auth.backends.token_cache import CachedVerification, verified_token_cache
from fastapps_auth.fingerprint import token_digest
from fastapps_auth.stages.jwt import JWTVerifier
from tests.support.jwt_mint import claims, signing_key

ISS = "https://issuer.example/"
NOW = 1_800_000_000.0


def d(i: int) -> bytes:
    return hashlib.sha256(str(i).encode()).digest()


def entry(expires: float, tag: str = "at") -> CachedVerification:
    return CachedVerification(AccessToken(token=tag, client_id="c", scopes=[]), (), expires)


def tag(hit: CachedVerification | None) -> str | None:
    return None if hit is None else hit.access_token.token


def test_hit_until_the_deadline_then_dropped() -> None:
    clock = ManualClock(NOW)
    cache = verified_token_cache(10, 300, clock.time)
    cache[d(1)] = entry(NOW + 100)
    assert tag(cache.get(d(1))) == "at"
    clock.advance(99.999)
    assert tag(cache.get(d(1))) == "at"
    clock.advance(0.001)
    assert cache.get(d(1)) is None  # the deadline itself is past
    assert len(cache) == 0  # and the entry is gone


def test_ttl_caps_the_deadline() -> None:
    clock = ManualClock(NOW)
    cache = verified_token_cache(10, 5, clock.time)
    cache[d(1)] = entry(NOW + 3600)
    clock.advance(4.9)
    assert tag(cache.get(d(1))) == "at"
    clock.advance(0.1)
    assert cache.get(d(1)) is None


def test_already_expired_is_not_stored() -> None:
    clock = ManualClock(NOW)
    cache = verified_token_cache(10, 5, clock.time)
    cache[d(1)] = entry(NOW)
    cache[d(2)] = entry(NOW - 1)
    assert len(cache) == 0


def test_bounded_least_recently_used_evicted_first() -> None:
    clock = ManualClock(NOW)
    cache = verified_token_cache(3, 300, clock.time)
    for i in range(5):
        cache[d(i)] = entry(NOW + 100, str(i))
    assert len(cache) == 3
    assert [tag(cache.get(d(i))) for i in range(5)] == [None, None, "2", "3", "4"]
    cache.get(d(2))  # a hit makes it the most recently used: 3 goes next
    cache[d(5)] = entry(NOW + 100, "5")
    assert [tag(cache.get(d(i))) for i in (2, 3, 4, 5)] == ["2", None, "4", "5"]


def test_restoring_an_entry_replaces_it_without_evicting() -> None:
    clock = ManualClock(NOW)
    cache = verified_token_cache(2, 300, clock.time)
    cache[d(1)] = entry(NOW + 100, "one")
    cache[d(2)] = entry(NOW + 100, "two")
    cache[d(1)] = entry(NOW + 200, "one again")
    assert len(cache) == 2
    cache[d(3)] = entry(NOW + 100, "three")  # evicts 2, now the least recently used
    assert cache.get(d(2)) is None
    clock.advance(150)
    assert tag(cache.get(d(1))) == "one again"


def test_clear() -> None:
    clock = ManualClock(NOW)
    cache = verified_token_cache(2, 300, clock.time)
    cache[d(1)] = entry(NOW + 100)
    cache.clear()
    assert len(cache) == 0 and cache.get(d(1)) is None


@pytest.mark.parametrize(("size", "ttl"), [(0, 1.0), (-1, 1.0), (1, 0.0), (1, -5.0), (1, float("nan"))])
def test_invalid_bounds(size: int, ttl: float) -> None:
    with pytest.raises(ValueError):
        verified_token_cache(size, ttl, ManualClock(NOW).time)


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
    clock = ManualClock(NOW)
    cache = verified_token_cache(size, 30, clock.time)
    deadlines: dict[int, float] = {}
    for op, key, step, lifetime in ops:
        clock.advance(step)
        now = clock.time()
        if op == "put":
            cache[d(key)] = entry(now + lifetime, str(key))
            deadlines[key] = min(now + lifetime, now + 30)
        else:
            hit = cache.get(d(key))
            if hit is not None:
                assert tag(hit) == str(key) and now < deadlines[key]
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


async def test_stage_cache_is_keyed_by_digest_and_rechecked_at_the_verifications_time(clock: ManualClock) -> None:
    """The cache holds the token's SHA-256, never the token; a hit is still checked against the ``now`` of
    the verification asking (a caller evaluating at a later time gets ``expired``, not the cached token)."""
    key = signing_key("EdDSA")
    st_ = JWTVerifier(jwks={"keys": [key.jwk()]}, algorithms=["EdDSA"], issuer_url=ISS, clock=clock, leeway=0)
    now = int(clock.time())
    token = key.token(claims(now, exp=now + 60, aud=None))
    await st_(Verification(token, now=clock.time(), clock=clock))
    assert list(st_._cache or ()) == [token_digest(token)]
    later = Verification(token, now=clock.time() + 60, clock=clock)
    with pytest.raises(Rejected) as info:
        await st_(later)
    assert info.value.reason == "expired"
