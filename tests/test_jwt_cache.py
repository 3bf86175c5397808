"""The verified-token cache (a cachetools LRUCache): bounded, least recently used evicted first, never
served at or past an entry's deadline (exp + leeway, capped by the TTL), checked on the caller's clock."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastapps_auth import AccessToken, ManualClock, Rejected, Verification, VerifierChain
from fastapps_auth.backends.token_cache import CachedVerification, VerifiedTokenCache
from fastapps_auth.fingerprint import token_digest
from fastapps_auth.stages.jwt import JWTVerifier
from tests.support.jwt_mint import claims, signing_key

ISS = "https://issuer.example/"
NOW = 1_800_000_000.0


def d(i: int) -> bytes:
    return hashlib.sha256(str(i).encode()).digest()


def at(tag: str = "at") -> AccessToken:
    return AccessToken(token=tag, client_id="c", scopes=[])


def tag(hit: CachedVerification | None) -> str | None:
    return None if hit is None else hit.access_token.token


def test_hit_until_the_deadline_then_dropped() -> None:
    cache = VerifiedTokenCache(10, ttl=300)
    cache.store(d(1), at(), (), now=NOW, expires=NOW + 100)
    assert tag(cache.lookup(d(1), NOW)) == "at"
    assert tag(cache.lookup(d(1), NOW + 99.999)) == "at"
    assert cache.lookup(d(1), NOW + 100) is None  # the deadline itself is past
    assert len(cache) == 0  # an expired entry is dropped on the lookup that finds it
    assert cache.lookup(d(1), NOW) is None  # and does not come back for an earlier clock


def test_ttl_caps_the_deadline() -> None:
    cache = VerifiedTokenCache(10, ttl=5)
    cache.store(d(1), at(), (), now=NOW, expires=NOW + 3600)
    assert tag(cache.lookup(d(1), NOW + 4.9)) == "at"
    assert cache.lookup(d(1), NOW + 5) is None


def test_already_expired_is_not_stored() -> None:
    cache = VerifiedTokenCache(10, ttl=5)
    cache.store(d(1), at(), (), now=NOW, expires=NOW)
    cache.store(d(2), at(), (), now=NOW, expires=NOW - 1)
    assert len(cache) == 0


def test_missing_scopes_are_kept_with_the_entry() -> None:
    cache = VerifiedTokenCache(10, ttl=5)
    cache.store(d(1), at(), ("admin",), now=NOW, expires=NOW + 60)
    hit = cache.lookup(d(1), NOW)
    assert hit is not None and hit.missing == ("admin",)


def test_bounded_least_recently_used_evicted_first() -> None:
    cache = VerifiedTokenCache(3, ttl=300)
    for i in range(5):
        cache.store(d(i), at(str(i)), (), now=NOW, expires=NOW + 100)
    assert len(cache) == 3
    assert [tag(cache.lookup(d(i), NOW)) for i in range(5)] == [None, None, "2", "3", "4"]
    cache.lookup(d(2), NOW)  # a hit makes it the most recently used: 3 goes next
    cache.store(d(5), at("5"), (), now=NOW, expires=NOW + 100)
    assert [tag(cache.lookup(d(i), NOW)) for i in (2, 3, 4, 5)] == ["2", None, "4", "5"]


def test_restoring_an_entry_replaces_it_without_evicting() -> None:
    cache = VerifiedTokenCache(2, ttl=300)
    cache.store(d(1), at("one"), (), now=NOW, expires=NOW + 100)
    cache.store(d(2), at("two"), (), now=NOW, expires=NOW + 100)
    cache.store(d(1), at("one again"), (), now=NOW + 1, expires=NOW + 200)
    assert len(cache) == 2
    cache.store(d(3), at("three"), (), now=NOW, expires=NOW + 100)  # evicts 2, now the least recently used
    assert cache.lookup(d(2), NOW) is None
    assert tag(cache.lookup(d(1), NOW + 150)) == "one again"


def test_clear() -> None:
    cache = VerifiedTokenCache(2, ttl=300)
    cache.store(d(1), at(), (), now=NOW, expires=NOW + 100)
    cache.clear()
    assert len(cache) == 0 and cache.lookup(d(1), NOW) is None


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
    cache = VerifiedTokenCache(size, ttl=30)
    now = NOW
    deadlines: dict[int, float] = {}
    for op, key, step, lifetime in ops:
        now += step
        if op == "put":
            cache.store(d(key), at(str(key)), (), now=now, expires=now + lifetime)
            if min(now + lifetime, now + 30) > now:  # stored (else the previous entry, if any, stays)
                deadlines[key] = min(now + lifetime, now + 30)
        else:
            hit = cache.lookup(d(key), now)
            if hit is not None:
                assert tag(hit) == str(key) and now < deadlines[key] and hit.until == deadlines[key]
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
