"""Properties of the jwt stage: random and mutated tokens are never accepted and never raise."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastapps_auth import ManualClock, VerifierChain
from fastapps_auth.stages.jwt import JWTVerifier
from tests.support.jwt_mint import b64, b64json, signing_key

NOW = 1_800_000_000
ISS = "https://issuer.example/"
KEY = signing_key("EdDSA")  # cheap to sign, so hypothesis can mint many valid signatures
B64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
VALID = KEY.token({"iss": ISS, "sub": "u", "exp": NOW + 3600, "iat": NOW, "aud": "api", "scope": "a"})


@pytest.fixture(scope="module")
def world() -> Iterator[tuple[asyncio.AbstractEventLoop, VerifierChain]]:
    loop = asyncio.new_event_loop()
    clock = ManualClock(NOW)
    stage = JWTVerifier(jwks={"keys": [KEY.jwk()]}, algorithms=["EdDSA"], issuer_url=ISS, audience="api", clock=clock)
    yield loop, VerifierChain(stage, clock=clock)
    loop.close()


def run(world: tuple[asyncio.AbstractEventLoop, VerifierChain], token: str) -> Any:
    loop, chain = world
    return loop.run_until_complete(chain.evaluate(token))


def test_the_valid_token_is_accepted(world: Any) -> None:
    assert run(world, VALID).allowed


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=400))
def test_random_text_never_accepted(world: Any, text: str) -> None:
    d = run(world, text)
    assert not d.allowed
    assert d.status in (401, 403)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(st.text(alphabet=B64_ALPHABET, max_size=120), min_size=1, max_size=6),
)
def test_random_dotted_base64_never_accepted(world: Any, parts: list[str]) -> None:
    assert not run(world, ".".join(parts)).allowed


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_mutated_valid_token_never_accepted(world: Any, data: st.DataObject) -> None:
    token = VALID
    n = data.draw(st.integers(min_value=1, max_value=4))
    for _ in range(n):
        kind = data.draw(st.sampled_from(["replace", "insert", "delete"]))
        i = data.draw(st.integers(min_value=0, max_value=len(token) - 1))
        c = data.draw(st.sampled_from(B64_ALPHABET + ".=+/ \x00é"))
        if kind == "replace":
            token = token[:i] + c + token[i + 1 :]
        elif kind == "insert":
            token = token[:i] + c + token[i:]
        else:
            token = token[:i] + token[i + 1 :]
    if token == VALID:
        return
    d = run(world, token)
    assert not d.allowed


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
claim_values = st.one_of(
    json_values,
    st.integers(min_value=NOW - 10_000, max_value=NOW + 10_000),
    st.sampled_from([ISS, "api", "u", "a b", ["api"], NOW + 100]),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.dictionaries(
        st.sampled_from(["iss", "sub", "aud", "exp", "nbf", "iat", "scope", "scp", "permissions", "client_id", "x"]),
        claim_values,
        max_size=11,
    ),
    st.dictionaries(st.sampled_from(["typ", "kid", "crit", "cty", "x5c", "jku"]), json_values, max_size=3),
)
def test_validly_signed_random_claims_are_decided_consistently(
    world: Any, payload: dict[str, Any], extra_header: dict[str, Any]
) -> None:
    """Whatever the claims and header, a decision comes back; an acceptance implies every rule held."""
    header = {"alg": "EdDSA", "kid": KEY.kid, **extra_header}
    signing_input = f"{b64json(header)}.{b64json(payload)}"
    token = f"{signing_input}.{b64(KEY.sign_bytes(signing_input.encode()))}"
    d = run(world, token)
    if d.allowed:
        at = d.access_token
        assert payload["iss"] == ISS
        assert isinstance(payload["sub"], str) and payload["sub"]
        exp = payload["exp"]
        assert type(exp) in (int, float) and exp + 30 > NOW
        aud = payload["aud"]
        assert aud == "api" or (isinstance(aud, list) and "api" in aud)
        assert "crit" not in header
        assert at.subject == payload["sub"] and at.expires_at == int(exp)
    else:
        assert d.status in (401, 403)
        assert d.reason
