"""The dpop stage behind a real jwt stage (static JWKS): proofs made by ``cryptography`` (tests/support/dpop.py).

Each test presents one request as the HTTP layer describes it (``RequestInfo``) and checks the
decision: allowed, or refused with the reason and the error RFC 9449 gives for that case.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from fastapps_auth import Decision, ManualClock
from tests.support.dpop import URL, Setup, ath, compact, public_jwk, request, thumbprint
from tests.support.jwt_mint import SigningKey, b64, b64json, signing_key


@pytest.fixture
def s(clock: ManualClock) -> Setup:
    return Setup(clock)


async def decide(s: Setup, token: str, *proofs: str, **req: object) -> Decision:
    return await s.chain.evaluate(token, request=request(*proofs, **req))  # type: ignore[arg-type]


def refused(d: Decision, reason: str, error: str = "invalid_dpop_proof", status: int = 401) -> None:
    assert not d.allowed, "the request was allowed"
    assert (d.stage, d.reason, d.error, d.status) == ("dpop", reason, error, status)


@pytest.mark.parametrize("alg", ["ES256", "ES384", "RS256", "PS256", "EdDSA"])
async def test_a_valid_proof_passes_for_every_default_algorithm(clock: ManualClock, alg: str) -> None:
    s = Setup(clock, client_alg=alg)
    token = s.token()
    d = await decide(s, token, s.proof(token))
    assert d.allowed, d.reason
    assert d.access_token is not None and d.access_token.claims is not None
    assert d.access_token.claims["cnf"] == {"jkt": s.jkt}
    assert [t.stage for t in d.trace] == ["jwt", "dpop"]


async def test_a_replayed_proof_is_refused_even_on_a_cached_token(s: Setup) -> None:
    token = s.token()
    proof = s.proof(token)
    assert (await decide(s, token, proof)).allowed
    d = await decide(s, token, proof)
    refused(d, "dpop_proof_replayed")
    assert d.trace[0].cache_hit is True  # the token came from the jwt stage's cache; the proof was still checked
    assert (await decide(s, token, s.proof(token))).allowed  # a fresh proof (new jti) passes


async def test_the_same_jti_from_another_key_is_not_a_replay(clock: ManualClock) -> None:
    a, b = Setup(clock), Setup(clock, client_alg="EdDSA")
    b.dpop = a.dpop  # one replay cache
    b.chain = type(a.chain)(b.jwt, a.dpop, clock=clock)
    ta, tb = a.token(), b.token()
    assert (await decide(a, ta, a.proof(ta, jti="same"))).allowed
    assert (await decide(b, tb, b.proof(tb, jti="same"))).allowed


async def test_wrong_method_url_and_token_hash_are_refused(s: Setup) -> None:
    token = s.token()
    refused(await decide(s, token, s.proof(token, htm="GET")), "dpop_proof_wrong_method")
    refused(await decide(s, token, s.proof(token, htm="post")), "dpop_proof_wrong_method")  # methods are case-sensitive
    refused(await decide(s, token, s.proof(token, htu="https://other.example/mcp")), "dpop_proof_wrong_url")
    refused(await decide(s, token, s.proof(token, htu=URL + "/")), "dpop_proof_wrong_url")
    refused(await decide(s, token, s.proof(token, htu="http://mcp.example/mcp")), "dpop_proof_wrong_url")
    refused(await decide(s, token, s.proof(s.token(sub="someone-else"))), "dpop_proof_wrong_token")
    refused(await decide(s, token, s.proof(None)), "dpop_proof_missing_claim")


@pytest.mark.parametrize(
    "htu",
    [
        "HTTPS://MCP.Example/mcp",
        "https://mcp.example:443/mcp",
        "https://mcp.example/./mcp",
        "https://mcp.example/x/../mcp",
        "https://mcp.example/%6Dcp",
        "https://mcp.example/mcp?session=1",
        "https://mcp.example/mcp#frag",
    ],
)
async def test_htu_is_compared_canonically_without_query_and_fragment(s: Setup, htu: str) -> None:
    token = s.token()
    assert (await decide(s, token, s.proof(token, htu=htu))).allowed


async def test_the_request_url_is_normalized_too(s: Setup) -> None:
    token = s.token()
    d = await decide(s, token, s.proof(token, htu="https://mcp.example/a%2Fb"), url="https://MCP.example:443/a%2fb")
    assert d.allowed, d.reason


async def test_iat_must_be_within_max_age_and_leeway(s: Setup, clock: ManualClock) -> None:
    token = s.token()
    now = clock.time()
    refused(await decide(s, token, s.proof(token, iat=now - 331)), "dpop_proof_expired")
    refused(await decide(s, token, s.proof(token, iat=now + 31)), "dpop_proof_in_future")
    assert (await decide(s, token, s.proof(token, iat=now - 329))).allowed
    assert (await decide(s, token, s.proof(token, iat=now + 29))).allowed


async def test_a_proof_stops_passing_once_its_window_is_over(s: Setup, clock: ManualClock) -> None:
    token = s.token()
    proof = s.proof(token)
    clock.advance(331)
    refused(await decide(s, token, proof), "dpop_proof_expired")


async def test_a_proof_signed_by_another_key_than_the_bound_one(s: Setup) -> None:
    token = s.token()
    other = signing_key("ES256", 7)
    d = await decide(s, token, s.proof(token, key=other))
    refused(d, "dpop_key_mismatch", error="invalid_token")


async def test_a_proof_whose_jwk_is_not_its_signer(s: Setup) -> None:
    token = s.token()
    forged = s.proof(
        token, key=signing_key("ES256", 7), jwk=public_jwk(s.client)
    )  # the bound key, someone else's signature
    refused(await decide(s, token, forged), "dpop_proof_bad_signature")


async def test_a_private_key_in_the_jwk_is_refused(s: Setup) -> None:
    token = s.token()
    assert isinstance(s.client.private, ec.EllipticCurvePrivateKey)
    d = s.client.private.private_numbers().private_value
    jwk = {**public_jwk(s.client), "d": b64(d.to_bytes(32, "big"))}
    refused(await decide(s, token, s.proof(token, jwk=jwk)), "dpop_proof_private_key")


async def test_alg_none_and_hs256_proofs_are_refused(s: Setup) -> None:
    token = s.token()
    header = {"typ": "dpop+jwt", "jwk": public_jwk(s.client)}
    payload = {"jti": "n1", "htm": "POST", "htu": URL, "iat": int(s.clock.time()), "ath": ath(token)}
    none = f"{b64json({**header, 'alg': 'none'})}.{b64json(payload)}."
    refused(await decide(s, token, none), "dpop_proof_malformed")  # no signature part at all
    none_sig = f"{b64json({**header, 'alg': 'none'})}.{b64json(payload)}.AAAA"
    refused(await decide(s, token, none_sig), "dpop_proof_algorithm")
    signing_input = f"{b64json({**header, 'alg': 'HS256'})}.{b64json(payload)}"
    mac = hmac.new(b"k" * 32, signing_input.encode(), hashlib.sha256).digest()
    refused(await decide(s, token, f"{signing_input}.{b64(mac)}"), "dpop_proof_algorithm")


async def test_an_algorithm_that_does_not_fit_the_key_is_refused(s: Setup) -> None:
    token = s.token()
    refused(await decide(s, token, s.proof(token, header={"alg": "RS256"})), "dpop_proof_bad_key")
    refused(await decide(s, token, s.proof(token, header={"alg": "ES384"})), "dpop_proof_bad_key")  # P-256 key


async def test_a_small_rsa_key_is_refused(clock: ManualClock) -> None:
    s = Setup(clock, client_alg="RS256")
    small = SigningKey("RS256", "small", rsa.generate_private_key(public_exponent=65537, key_size=1024))
    token = s.token(cnf={"jkt": thumbprint(public_jwk(small))})
    refused(await decide(s, token, s.proof(token, key=small)), "dpop_proof_bad_key")


async def test_two_dpop_headers_are_refused(s: Setup) -> None:
    token = s.token()
    refused(await decide(s, token, s.proof(token), s.proof(token)), "dpop_proof_multiple")


async def test_a_bound_token_sent_as_bearer_is_refused(s: Setup) -> None:
    token = s.token()
    d = await decide(s, token, s.proof(token), scheme="bearer")
    refused(d, "dpop_bound_as_bearer", error="invalid_token")
    refused(await decide(s, token, scheme="bearer"), "dpop_bound_as_bearer", error="invalid_token")


async def test_a_bound_token_without_a_proof_is_refused(s: Setup) -> None:
    token = s.token()
    refused(await decide(s, token), "dpop_proof_missing")
    refused(await decide(s, token, scheme=None), "dpop_proof_missing")  # a host that does not say its scheme


async def test_unbound_tokens_in_optional_and_required_mode(clock: ManualClock) -> None:
    s = Setup(clock)
    token = s.token(bound=False)
    assert (await decide(s, token, scheme="bearer")).allowed
    assert (await decide(s, token, scheme=None)).allowed
    refused(await decide(s, token, scheme="dpop"), "dpop_not_bound", error="invalid_token")
    refused(await decide(s, token, s.proof(token), scheme="bearer"), "dpop_proof_with_bearer", "invalid_request", 400)
    strict = Setup(clock, mode="required")
    refused(await decide(strict, strict.token(bound=False), scheme="bearer"), "dpop_required", error="invalid_token")
    bound = strict.token()
    assert (await decide(strict, bound, strict.proof(bound))).allowed


@pytest.mark.parametrize("cnf", ["jkt", ["x"], {"jkt": 5}, {"jkt": ""}, {"jkt": "x" * 200}])
async def test_a_malformed_binding_is_refused(s: Setup, cnf: object) -> None:
    d = await decide(s, s.token(cnf=cnf))
    refused(d, "dpop_bad_binding", error="invalid_token")


async def test_a_token_bound_another_way_is_not_dpop_bound(s: Setup) -> None:
    assert (await decide(s, s.token(cnf={"x5t#S256": "abc"}), scheme="bearer")).allowed


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ({"typ": "jwt"}, "dpop_proof_wrong_type"),
        ({"typ": None}, "dpop_proof_wrong_type"),
        ({"typ": 1}, "dpop_proof_wrong_type"),
        ({"jwk": None}, "dpop_proof_bad_key"),
        ({"jwk": "key"}, "dpop_proof_bad_key"),
        ({"jwk": {"kty": "oct", "x": "AA"}}, "dpop_proof_bad_key"),
        ({"jwk": {"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}}, "dpop_proof_bad_key"),
        ({"crit": ["exp"], "exp": 1}, "dpop_proof_unsupported_header"),
        ({"b64": False}, "dpop_proof_unsupported_header"),
        ({"b64": False, "crit": ["b64"]}, "dpop_proof_unsupported_header"),
        ({"alg": "ES512"}, "dpop_proof_algorithm"),  # supported, not configured
    ],
)
async def test_bad_headers(s: Setup, header: dict[str, object], reason: str) -> None:
    token = s.token()
    refused(await decide(s, token, s.proof(token, header=header)), reason)


async def test_application_dpop_jwt_typ_and_ignored_key_headers(s: Setup) -> None:
    token = s.token()
    ignored = {"typ": "application/dpop+jwt", "jku": "https://evil.example/jwks", "x5u": "https://evil.example/c"}
    assert (await decide(s, token, s.proof(token, header={**ignored, "kid": "k", "x5c": ["AAAA"]}))).allowed


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"jti": None}, "dpop_proof_missing_claim"),
        ({"htm": None}, "dpop_proof_missing_claim"),
        ({"htu": None}, "dpop_proof_missing_claim"),
        ({"iat": None}, "dpop_proof_missing_claim"),
        ({"jti": ""}, "dpop_proof_bad_claim"),
        ({"jti": 7}, "dpop_proof_bad_claim"),
        ({"jti": "j" * 257}, "dpop_proof_bad_claim"),
        ({"iat": "now"}, "dpop_proof_bad_claim"),
        ({"iat": True}, "dpop_proof_bad_claim"),
        ({"iat": 1e300}, "dpop_proof_bad_claim"),
        ({"ath": 5}, "dpop_proof_bad_claim"),
        ({"htu": "not a url"}, "dpop_proof_wrong_url"),
    ],
)
async def test_bad_claims(s: Setup, claims: dict[str, Any], reason: str) -> None:
    token = s.token()
    refused(await decide(s, token, s.proof(token, **claims)), reason)


async def test_malformed_proofs(s: Setup) -> None:
    token = s.token()
    good = s.proof(token)
    h, p, sig = good.split(".")
    duplicate = b64(b'{"typ":"dpop+jwt","typ":"dpop+jwt"}')
    nan = b64(b'{"a":NaN}')
    lone = b64(rb'{"typ":"dpop+jwt","x":"\ud800"}')  # a lone surrogate (fastapps_auth.strict_json)
    cases = {
        "dpop_proof_malformed": [
            f"{h}.{p}",
            f"{h}.{p}.{sig}.x.y",
            good + "=",
            f"{h}.{p}.{sig[:-1]}!",
            " " + good,
            f"{b64(b'[1]')}.{p}.{sig}",
            f"{duplicate}.{p}.{sig}",
            f"{nan}.{p}.{sig}",
            f"{lone}.{p}.{sig}",
            "é" + good,
        ],
        "dpop_proof_too_large": ["a" * 9000],
    }
    for reason, proofs in cases.items():
        for proof in proofs:
            refused(await decide(s, token, proof), reason)


async def test_a_payload_that_is_not_an_object_or_has_duplicates(s: Setup) -> None:
    token = s.token()
    header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": public_jwk(s.client)}
    proof = compact(header, {}, s.client)
    h = proof.split(".")[0]
    for payload in (b"[]", b'{"jti":"a","jti":"b"}', b'"x"'):
        signing_input = f"{h}.{b64(payload)}"
        raw = f"{signing_input}.{b64(s.client.sign_bytes(signing_input.encode()))}"
        refused(await decide(s, token, raw), "dpop_proof_malformed")
