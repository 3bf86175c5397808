"""The introspection stage composed: revocation checks after jwt, any-of with jwt, the bound audience, dpop."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

from fastapps_auth import AnyOf, ConfigError, RequestInfo, VerifierChain, chain_from_config
from fastapps_auth.dev_issuer import RunningIssuer
from fastapps_auth.stages.dpop import DPoPStage
from fastapps_auth.stages.introspection import IntrospectionStage
from fastapps_auth.testing.dpop import DPoPKey
from fastapps_auth.testing.issuer import jwt_stage, start_issuer, tamper
from tests.support.introspection import evaluate, now_clock, opaque_issuer, requests, stage

URL = "https://mcp.example.com/mcp"


@pytest.fixture
def issuer() -> Iterator[RunningIssuer]:
    """An issuer of JWTs (``mint``) and opaque tokens (``mint_opaque``), both known to its introspection."""
    running = start_issuer()
    yield running
    running.stop()


def introspection(issuer: RunningIssuer, **options: Any) -> IntrospectionStage:
    return stage(issuer, introspection_url=issuer.introspection_endpoint, **options)


# -- mode = "check" ----------------------------------------------------------------------------------


async def test_check_mode_keeps_the_jwt_stages_token_and_refuses_it_once_revoked(issuer: RunningIssuer) -> None:
    clock = now_clock()
    check = introspection(issuer, clock=clock, mode="check", cache_ttl=5)
    chain = VerifierChain(jwt_stage(issuer, clock=clock), check, clock=clock)
    token = issuer.mint("alice", scopes=["read"])
    d = await chain.evaluate(token)
    assert d.allowed and d.access_token is not None
    assert d.access_token.claims is not None and "active" not in d.access_token.claims  # the JWT's own claims
    assert [t.stage for t in d.trace] == ["jwt", "introspection"]
    issuer.revoke(token)
    assert (await chain.evaluate(token)).allowed  # the cached answer, for at most cache_ttl
    clock.advance(5)
    d = await chain.evaluate(token)
    assert (d.allowed, d.status, d.reason, d.stage) == (False, 401, "inactive", "introspection")
    await chain.aclose()


async def test_check_mode_does_not_check_the_audience_the_jwt_stage_already_did(issuer: RunningIssuer) -> None:
    check = introspection(issuer, mode="check", audience="some-other-api")
    check.bind_resource(URL)
    chain = VerifierChain(jwt_stage(issuer), check)
    assert (await chain.evaluate(issuer.mint("alice"))).allowed
    await chain.aclose()


def test_a_chain_with_only_a_check_mode_stage_is_a_config_error(issuer: RunningIssuer) -> None:
    entry = {
        "use": "introspection",
        "mode": "check",
        "introspection_url": issuer.introspection_endpoint,
        "client_id": issuer.client.client_id,
        "client_secret": issuer.client.secret,
    }
    with pytest.raises(ConfigError, match="no stage authenticates"):
        chain_from_config({"stages": [entry]})


async def test_a_check_mode_stage_before_any_authentication_refuses(issuer: RunningIssuer) -> None:
    chain = VerifierChain(introspection(issuer, mode="check"), jwt_stage(issuer))
    d = await chain.evaluate(issuer.mint("alice"))
    assert (d.allowed, d.reason, d.stage) == (False, "unauthenticated", "introspection")
    await chain.aclose()


async def test_check_mode_may_run_in_shadow_mode(issuer: RunningIssuer) -> None:
    chain = VerifierChain(jwt_stage(issuer), introspection(issuer, mode="check", enforce=False))
    token = issuer.mint("alice")
    issuer.revoke(token)
    d = await chain.evaluate(token)
    assert d.allowed and d.shadowed == (("introspection", "inactive"),)
    await chain.aclose()


# -- any-of(jwt, introspection) --------------------------------------------------------------------


async def test_any_of_serves_jwts_and_opaque_tokens_of_one_issuer(issuer: RunningIssuer) -> None:
    intro = introspection(issuer)
    chain = VerifierChain(AnyOf(jwt_stage(issuer), intro))
    assert (await chain.evaluate(issuer.mint("alice"))).allowed
    assert requests(intro) == 0, "a JWT that verifies is not introspected"
    d = await chain.evaluate(issuer.mint_opaque("bob"))
    assert d.allowed and d.access_token is not None and d.access_token.subject == "bob"
    assert requests(intro) == 1
    await chain.aclose()


async def test_a_jwt_whose_signature_fails_is_not_sent_to_introspection_by_default(issuer: RunningIssuer) -> None:
    intro = introspection(issuer)
    chain = VerifierChain(AnyOf(jwt_stage(issuer), intro))
    d = await chain.evaluate(tamper(issuer.mint("alice")))
    assert not d.allowed and d.status == 401
    assert [(t.stage, t.reason) for t in d.trace] == [
        ("jwt", "bad_signature"),
        ("introspection", "jwt_signature_failed"),
    ]
    assert requests(intro) == 0
    await chain.aclose()


async def test_introspect_on_jwt_failure_sends_it(issuer: RunningIssuer) -> None:
    intro = introspection(issuer, introspect_on_jwt_failure=True)
    chain = VerifierChain(AnyOf(jwt_stage(issuer), intro))
    d = await chain.evaluate(tamper(issuer.mint("alice")))
    assert not d.allowed and [t.reason for t in d.trace] == ["bad_signature", "inactive"]
    assert requests(intro) == 1
    await chain.aclose()


async def test_alone_the_stage_introspects_jwts_too(issuer: RunningIssuer) -> None:
    intro = introspection(issuer)
    assert (await evaluate(intro, issuer.mint("alice"))).allowed  # a Keycloak-style JWT checked only remotely
    await intro.aclose()


# -- the audience bound to the server --------------------------------------------------------------


@pytest.mark.parametrize("aud", ["https://MCP.Example.com:443/mcp/", "https://mcp.example.com/mcp", ["x", URL + "/"]])
async def test_bound_to_the_resource_url_the_audience_is_compared_canonically(aud: str | list[str]) -> None:
    with opaque_issuer() as issuer:
        st = stage(issuer, audience=None)
        VerifierChain(st).bind_resource(URL)
        d = await evaluate(st, issuer.mint_opaque("alice", audience=aud))
        refused = await evaluate(st, issuer.mint_opaque("alice", audience="https://mcp.example.com/other"))
        await st.aclose()
    assert d.allowed, d.reason
    assert (refused.allowed, refused.reason) == (False, "wrong_audience")


async def test_binding_forgets_answers_cached_before_it(issuer: RunningIssuer) -> None:
    st = introspection(issuer, audience=None)
    token = issuer.mint_opaque("alice", audience="another-api")
    assert (await evaluate(st, token)).allowed
    st.bind_resource(URL)
    assert (await evaluate(st, token)).reason == "wrong_audience"
    await st.aclose()


async def test_an_explicit_audience_wins_over_the_binding(issuer: RunningIssuer) -> None:
    st = introspection(issuer, audience="api")
    st.bind_resource(URL)
    assert (await evaluate(st, issuer.mint_opaque("alice", audience="api"))).allowed
    assert (await evaluate(st, issuer.mint_opaque("alice", audience=URL))).reason == "wrong_audience"
    await st.aclose()


async def test_a_bound_stage_does_not_warn(issuer: RunningIssuer, caplog: pytest.LogCaptureFixture) -> None:
    st = introspection(issuer, audience=None)
    st.bind_resource(URL)
    with caplog.at_level(logging.WARNING, logger="fastapps_auth.introspection"):
        await st.start()
    assert not any("checks no audience" in r.getMessage() for r in caplog.records)
    await st.aclose()


# -- dpop after introspection -----------------------------------------------------------------------


async def test_dpop_checks_the_cnf_of_an_opaque_token(issuer: RunningIssuer) -> None:
    key, other = DPoPKey.generate(), DPoPKey.generate()
    chain = VerifierChain(introspection(issuer), DPoPStage())
    token = issuer.mint_opaque("alice", claims={"cnf": key.cnf})

    def request(proof_key: DPoPKey | None) -> RequestInfo:
        proofs = (proof_key.proof("POST", URL, token),) if proof_key is not None else ()
        return RequestInfo(method="POST", url=URL, auth_scheme="dpop", dpop_proofs=proofs)

    d = await chain.evaluate(token, request=request(key))
    assert d.allowed, d.reason
    wrong = await chain.evaluate(token, request=request(other))
    missing = await chain.evaluate(token, request=request(None))
    assert (wrong.allowed, wrong.stage, missing.allowed, missing.stage) == (False, "dpop", False, "dpop")
    await chain.aclose()
