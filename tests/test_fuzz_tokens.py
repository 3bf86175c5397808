"""Fuzzing the token path (short version; the million-token run is ``python -m benchmarks.fuzz_long``).

Whatever the token, ``evaluate`` returns a Decision, nothing invalid is accepted, and garbage is a
401/403 rejection — never a 503, which with static keys could only be an exception inside the stage.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks import fuzz_long
from benchmarks.signing import AUDIENCE, ISSUER, b64, compact, keys
from fastapps_auth.chain import VerifierChain
from fastapps_auth.clock import ManualClock

NOW = fuzz_long.NOW
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
claim_names = st.sampled_from(["iss", "aud", "sub", "exp", "nbf", "iat", "scope", "client_id", "azp", "jti"])


FORGED = fuzz_long.forged_tokens(keys())


@pytest.fixture(scope="module")
def runner() -> Iterator[tuple[asyncio.Runner, VerifierChain]]:
    """One event loop and one chain for every example (hypothesis calls the test body many times)."""
    clock = ManualClock(NOW)
    chain = fuzz_long.build_chain(clock)
    with asyncio.Runner() as r:
        yield r, chain
        r.run(chain.aclose())


def decide(runner: tuple[asyncio.Runner, VerifierChain], token: Any) -> Any:
    r, chain = runner
    return r.run(chain.evaluate(token))


def assert_refused(d: Any) -> None:
    assert not d.allowed
    assert d.access_token is None
    assert d.status in (401, 403), (d.status, d.reason)


def test_valid_tokens_pass(runner: tuple[asyncio.Runner, VerifierChain]) -> None:
    # the control: the same chain accepts what it should, so the refusals below mean something
    for token in fuzz_long.valid_tokens(keys()):
        d = decide(runner, token)
        assert d.allowed, d.reason
        assert d.access_token is not None and d.access_token.token == token


@pytest.mark.parametrize("kind", sorted(FORGED))
def test_forged_tokens_are_refused(runner: tuple[asyncio.Runner, VerifierChain], kind: str) -> None:
    assert_refused(decide(runner, FORGED[kind]))


def test_duplicate_claims_are_refused_or_read_as_the_last_member(runner: tuple[asyncio.Runner, VerifierChain]) -> None:
    """RFC 7519 §4: reject duplicate claim names, or use the lexically last one — never the first."""
    payload = compact({"iss": ISSUER, "aud": AUDIENCE, "sub": "mallory", "exp": int(NOW) + 600})
    token = keys().sign_raw(compact({"alg": "ES256", "kid": "ec-1"}), payload[:-1] + b',"sub":"admin"}', alg="ES256")
    d = decide(runner, token)
    if d.allowed:
        assert d.subject == "admin"
    else:
        assert_refused(d)


def test_duplicate_header_members_are_refused(runner: tuple[asyncio.Runner, VerifierChain]) -> None:
    header = b'{"alg":"ES256","kid":"ec-1","alg":"none"}'
    payload = compact({"iss": ISSUER, "aud": AUDIENCE, "sub": "a", "exp": int(NOW) + 600})
    assert_refused(decide(runner, keys().sign_raw(header, payload, alg="ES256")))


@FUZZ
@given(token=st.text(max_size=300) | st.binary(max_size=300).map(lambda b: b.decode("latin-1")))
def test_arbitrary_text_is_refused(runner: tuple[asyncio.Runner, VerifierChain], token: str) -> None:
    assert_refused(decide(runner, token))


@FUZZ
@given(parts=st.lists(st.binary(max_size=120).map(b64), min_size=1, max_size=5))
def test_arbitrary_segments_are_refused(runner: tuple[asyncio.Runner, VerifierChain], parts: list[str]) -> None:
    assert_refused(decide(runner, ".".join(parts)))


@FUZZ
@given(seed=st.integers(0, 2**32 - 1), which=st.integers(0, 3))
def test_mutated_valid_tokens_are_refused_or_unchanged(
    runner: tuple[asyncio.Runner, VerifierChain], seed: int, which: int
) -> None:
    valid = fuzz_long.valid_tokens(keys())
    fuzz_long._POOL[:] = valid
    token = fuzz_long.mutate(random.Random(seed), valid[which])
    d = decide(runner, token)
    if token in valid:
        assert d.allowed
    else:
        assert_refused(d)


@FUZZ
@given(
    extra=st.dictionaries(claim_names | st.text(max_size=10), json_values, max_size=6),
    alg=st.sampled_from(["RS256", "ES256"]),
)
def test_validly_signed_arbitrary_claims_follow_the_policy(
    runner: tuple[asyncio.Runner, VerifierChain], extra: dict[str, Any], alg: str
) -> None:
    """A correctly signed token with arbitrary claims: accepted only if its claims satisfy every rule."""
    payload = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "exp": int(NOW) + 600, **extra}
    d = decide(runner, keys().sign(payload, alg=alg))
    if not d.allowed:
        assert_refused(d)
        return
    exp, aud = payload["exp"], payload["aud"]
    assert type(exp) in (int, float) and exp + 30 > NOW
    assert payload["iss"] == ISSUER
    assert aud == AUDIENCE or (type(aud) is list and AUDIENCE in aud)
    assert type(payload["sub"]) is str and payload["sub"]
    for claim in ("nbf", "iat"):
        if type(payload.get(claim)) in (int, float):
            assert payload[claim] <= NOW + 30
    assert d.access_token is not None and d.access_token.subject == payload["sub"]


@FUZZ
@given(header=st.dictionaries(st.sampled_from(["alg", "kid", "typ", "crit", "jku", "jwk", "x5u", "x5c"]), json_values))
def test_arbitrary_headers_never_choose_the_key(
    runner: tuple[asyncio.Runner, VerifierChain], header: dict[str, Any]
) -> None:
    """Signed by the real ES256 key under an arbitrary header: accepted only with alg ES256 and a usable kid."""
    token = keys().sign_raw(
        compact(header), compact({"iss": ISSUER, "aud": AUDIENCE, "sub": "a", "exp": NOW + 60}), alg="ES256"
    )
    d = decide(runner, token)
    if d.allowed:
        assert header.get("alg") == "ES256"
        assert header.get("kid") in (None, "ec-1")
        assert "crit" not in header
    else:
        assert_refused(d)


def test_short_mutation_run_keeps_every_invariant() -> None:
    report = asyncio.run(fuzz_long.run(3000, seed=7))
    assert report.ok, report.failures[:5]
    assert report.tokens == 3000 + len(fuzz_long.valid_tokens(keys())) + len(FORGED)
    assert report.allowed >= len(fuzz_long.valid_tokens(keys()))  # the valid controls were accepted
    assert set(report.statuses) <= {200, 401, 403}
