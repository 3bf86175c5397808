"""DPoP-bound tokens from the dev issuer (RFC 9449 §5, §8, §10), with proofs made by ``cryptography`` directly,
accepted by the dpop stage behind ``jwt`` and behind ``introspection``.

Every proof here comes from ``tests.support.dpop`` (``cryptography`` signatures, RFC 7638 thumbprints by
hand), not from the code under test; ``Flow(dpop=DPoPKey)`` (joserfc) is tested as the users' helper.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import KeySet, KeySetSerialization

from fastapps_auth import ManualClock, RequestInfo, VerifierChain
from fastapps_auth.dev_issuer import RunningIssuer
from fastapps_auth.stages.dpop import DPoPStage
from fastapps_auth.testing import issuer_chain, start_issuer
from fastapps_auth.testing.dpop import DPoPKey
from fastapps_auth.testing.flow import Flow, register
from tests.support.dpop import proof, public_jwk, thumbprint
from tests.support.introspection import stage as introspection_stage
from tests.support.jwt_mint import SigningKey, hs_token, signing_key

CLIENT = signing_key("ES256", 1)
OTHER = signing_key("ES256", 2)
JKT = thumbprint(public_jwk(CLIENT))


@pytest.fixture
def issuer(clock: ManualClock) -> Iterator[RunningIssuer]:
    running = start_issuer(clock=clock, users=["alice"])
    yield running
    running.stop()


def claims(issuer: RunningIssuer, token: str) -> dict[str, Any]:
    keys = KeySet.import_key_set(cast(KeySetSerialization, issuer.jwks()))
    return dict(jwt.decode(token, keys, algorithms=["RS256", "ES256"]).claims)


def dpop(issuer: RunningIssuer, key: SigningKey = CLIENT, **options: Any) -> dict[str, str]:
    """A ``DPoP`` header for the token endpoint, signed by ``key`` at the issuer's time."""
    options.setdefault("iat", issuer.clock.time())
    options.setdefault("htu", issuer.token_endpoint)
    return {"DPoP": proof(key, None, **options)}


def public(issuer: RunningIssuer) -> Flow:
    return Flow(issuer, register(issuer, token_endpoint_auth_method="none"))


def refused(response: httpx.Response, error: str = "invalid_dpop_proof") -> None:
    assert response.status_code == 400, response.text
    assert response.json()["error"] == error
    assert response.headers["cache-control"] == "no-store"
    assert "access_token" not in response.json()


def test_the_metadata_advertises_the_proof_algorithms(issuer: RunningIssuer) -> None:
    metadata = httpx.get(f"{issuer.url}/.well-known/oauth-authorization-server").json()
    assert metadata["dpop_signing_alg_values_supported"] == ["ES256", "ES384", "RS256", "PS256", "EdDSA"]


def test_a_code_redeemed_with_a_proof_gives_a_bound_token_and_a_bound_refresh_token(issuer: RunningIssuer) -> None:
    flow = public(issuer)
    response = flow.token(flow.code(), headers=dpop(issuer))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "DPoP"
    assert claims(issuer, body["access_token"])["cnf"] == {"jkt": JKT}
    introspected = issuer.introspect(body["access_token"])
    assert introspected["cnf"] == {"jkt": JKT} and introspected["token_type"] == "DPoP"
    assert issuer.introspect(body["refresh_token"])["cnf"] == {"jkt": JKT}

    refresh = body["refresh_token"]
    refused(flow.refresh(refresh))  # no proof: the refresh token is the key's
    refused(flow.refresh(refresh, headers=dpop(issuer, OTHER)), "invalid_grant")  # another key
    again = flow.refresh(refresh, headers=dpop(issuer))  # the refused attempts did not spend it
    assert again.status_code == 200, again.text
    assert again.json()["token_type"] == "DPoP"
    assert claims(issuer, again.json()["access_token"])["cnf"] == {"jkt": JKT}
    assert issuer.introspect(again.json()["refresh_token"])["cnf"] == {"jkt": JKT}


def test_without_a_proof_tokens_are_bearer_tokens(issuer: RunningIssuer) -> None:
    body = public(issuer).tokens()
    assert body["token_type"] == "Bearer"
    assert "cnf" not in claims(issuer, body["access_token"])
    assert "cnf" not in issuer.introspect(body["refresh_token"])


def test_a_confidential_clients_refresh_token_is_bound_to_its_credentials_not_the_key(issuer: RunningIssuer) -> None:
    flow = Flow(issuer, register(issuer))
    body = flow.token(flow.code(), headers=dpop(issuer)).json()
    assert body["token_type"] == "DPoP"
    assert "cnf" not in issuer.introspect(body["refresh_token"])  # RFC 9449 §5
    rotated = flow.refresh(body["refresh_token"], headers=dpop(issuer, OTHER)).json()
    assert claims(issuer, rotated["access_token"])["cnf"] == {"jkt": thumbprint(public_jwk(OTHER))}
    bearer = flow.refresh(rotated["refresh_token"]).json()
    assert bearer["token_type"] == "Bearer"


def test_client_credentials_and_token_exchange_with_a_proof_are_bound(issuer: RunningIssuer) -> None:
    service = Flow.configured(issuer)
    own = service.client_credentials(scope="read", headers=dpop(issuer))
    assert own.status_code == 200, own.text
    assert own.json()["token_type"] == "DPoP"
    assert claims(issuer, own.json()["access_token"])["cnf"] == {"jkt": JKT}

    subject = issuer.mint("alice", scopes=["read"])
    exchanged = service.exchange(subject, audience="https://calendar.example/", headers=dpop(issuer))
    assert exchanged.status_code == 200, exchanged.text
    body = exchanged.json()
    assert body["token_type"] == "DPoP" and body["issued_token_type"].endswith(":access_token")
    got = claims(issuer, body["access_token"])
    assert (got["sub"], got["aud"], got["cnf"]) == ("alice", "https://calendar.example/", {"jkt": JKT})


def test_opaque_tokens_carry_cnf_in_introspection(clock: ManualClock) -> None:
    with start_issuer(clock=clock, opaque=True) as issuer:  # started, and entering does not start it twice
        body = Flow.configured(issuer).client_credentials(headers=dpop(issuer)).json()
        assert body["token_type"] == "DPoP" and body["access_token"].count(".") == 0
        assert issuer.introspect(body["access_token"])["cnf"] == {"jkt": JKT}


@pytest.mark.parametrize(
    ("options", "description"),
    [
        ({"htm": "GET"}, "another HTTP method"),
        ({"htu": "http://127.0.0.1:1/token"}, "another URL"),
        ({"iat": 0}, "too old"),
        ({"header": {"typ": "JWT"}}, "typ"),
        ({"jti": None}, "no jti"),
    ],
)
def test_a_bad_proof_is_refused(issuer: RunningIssuer, options: dict[str, Any], description: str) -> None:
    if options.get("iat") == 0:
        options["iat"] = issuer.clock.time() - 400  # beyond max_age (300) and leeway (30)
    response = Flow.configured(issuer).client_credentials(headers=dpop(issuer, **options))
    refused(response)
    assert description in response.json()["error_description"]


def test_proofs_that_are_no_proofs_are_refused(issuer: RunningIssuer) -> None:
    service = Flow.configured(issuer)
    now = issuer.clock.time()
    payload = {"jti": "j-1", "htm": "POST", "htu": issuer.token_endpoint, "iat": int(now)}
    private = {**CLIENT.jwk(), "d": "AAAA"}
    good = dpop(issuer)["DPoP"]
    head, body, sig = good.split(".")
    for bad in (
        hs_token(b"k" * 32, payload, "HS256", typ="dpop+jwt", jwk=public_jwk(CLIENT)),
        f"{head}.{body}.{sig[:-2]}AA",  # the signature
        proof(CLIENT, None, iat=now, htu=issuer.token_endpoint, jwk=private),
        proof(CLIENT, None, iat=now, htu=issuer.token_endpoint, header={"alg": "none"}),
    ):
        refused(service.client_credentials(headers={"DPoP": bad}))


def test_a_replayed_proof_and_two_proofs_are_refused(issuer: RunningIssuer) -> None:
    service = Flow.configured(issuer)
    header = dpop(issuer)
    assert service.client_credentials(headers=header).status_code == 200
    refused(service.client_credentials(headers=header))
    two = httpx.post(
        issuer.token_endpoint,
        data={"grant_type": "client_credentials"},
        auth=service.auth,
        headers=[("DPoP", dpop(issuer)["DPoP"]), ("DPoP", dpop(issuer)["DPoP"])],
    )
    refused(two)


def test_dpop_jkt_binds_the_code_to_a_key(issuer: RunningIssuer) -> None:
    flow = public(issuer)
    code = flow.code(dpop_jkt=JKT)
    refused(flow.token(code, headers=dpop(issuer, OTHER)))
    code = flow.code(dpop_jkt=JKT)
    refused(flow.token(code))  # no proof at all
    code = flow.code(dpop_jkt=JKT)
    assert flow.token(code, headers=dpop(issuer)).json()["token_type"] == "DPoP"
    bad = flow.authorize(dpop_jkt="not-a-thumbprint")
    assert "invalid_request" in bad.headers["location"]


async def test_flow_dpop_gets_a_token_the_dpop_stage_accepts(issuer: RunningIssuer, clock: ManualClock) -> None:
    key = DPoPKey.generate()
    body = Flow(issuer, register(issuer, token_endpoint_auth_method="none"), dpop=key).tokens()
    token = body["access_token"]
    assert body["token_type"] == "DPoP" and claims(issuer, token)["cnf"] == key.cnf
    chain = issuer_chain(issuer, DPoPStage(clock=clock), clock=clock)
    url = "https://mcp.example/mcp"

    def info(scheme: str, *proofs: str) -> RequestInfo:
        return RequestInfo(method="POST", path="/mcp", url=url, auth_scheme=scheme, dpop_proofs=proofs)

    try:
        ok = await chain.evaluate(token, request=info("dpop", key.proof("POST", url, token, iat=clock.time())))
        assert ok.allowed, ok.reason
        assert (await chain.evaluate(token, request=info("bearer"))).reason == "dpop_bound_as_bearer"
        thief = DPoPKey.generate().proof("POST", url, token, iat=clock.time())
        assert (await chain.evaluate(token, request=info("dpop", thief))).reason == "dpop_key_mismatch"
    finally:
        await chain.aclose()


def test_with_nonces_a_proof_needs_the_issuers_nonce(clock: ManualClock) -> None:
    with start_issuer(clock=clock, dpop_nonce=True) as issuer:
        service = Flow.configured(issuer)
        first = service.client_credentials(headers=dpop(issuer))
        refused(first, "use_dpop_nonce")
        nonce = first.headers["dpop-nonce"]
        stale = service.client_credentials(headers=dpop(issuer, nonce="x" * 32))
        refused(stale, "use_dpop_nonce")
        ok = service.client_credentials(headers=dpop(issuer, nonce=nonce))
        assert ok.status_code == 200 and ok.json()["token_type"] == "DPoP", ok.text
        assert ok.headers["dpop-nonce"] == nonce  # the current nonce comes with every answer
        clock.advance(2 * 300)  # two nonce lifetimes later the old nonce is refused
        refused(service.client_credentials(headers=dpop(issuer, nonce=nonce)), "use_dpop_nonce")
        assert service.client_credentials().status_code == 200  # no proof, no nonce needed: a Bearer token


def test_flow_retries_once_with_the_nonce_it_was_given(clock: ManualClock) -> None:
    with start_issuer(clock=clock, dpop_nonce=True) as issuer:
        key = DPoPKey.generate()
        flow = Flow(issuer, register(issuer, token_endpoint_auth_method="none"), dpop=key)
        body = flow.tokens()
        assert body["token_type"] == "DPoP" and claims(issuer, body["access_token"])["cnf"] == key.cnf
        assert flow.nonce is not None
        again = flow.refresh(body["refresh_token"])  # with the nonce it kept from the last answer
        assert again.status_code == 200, again.text


async def test_a_bound_opaque_token_passes_introspection_then_dpop(clock: ManualClock) -> None:
    with start_issuer(clock=clock, opaque=True) as issuer:
        body = Flow.configured(issuer).client_credentials(scope="read", headers=dpop(issuer)).json()
        token = body["access_token"]
        chain = VerifierChain(introspection_stage(issuer, clock=clock), DPoPStage(clock=clock), clock=clock)
        url = "https://mcp.example/mcp"

        def info(*proofs: str) -> RequestInfo:
            return RequestInfo(method="POST", path="/mcp", url=url, auth_scheme="dpop", dpop_proofs=proofs)

        try:
            ok = await chain.evaluate(token, request=info(proof(CLIENT, token, iat=clock.time(), htu=url)))
            assert ok.allowed, ok.reason  # cnf.jkt from the introspection response
            other = await chain.evaluate(token, request=info(proof(OTHER, token, iat=clock.time(), htu=url)))
            assert other.reason == "dpop_key_mismatch"
        finally:
            await chain.aclose()
