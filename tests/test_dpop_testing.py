"""``fastapps_auth.testing.dpop``: the proofs users make in their own tests are real proofs.

They are checked twice: by ``cryptography`` and RFC 7638 by hand (tests/support/dpop.py), so the
helper is not only agreeing with the stage, and by the stage behind a real jwt stage.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from fastapps_auth import ManualClock, VerifierChain
from fastapps_auth.dev_issuer import RunningIssuer
from fastapps_auth.stages.dpop import DPoPStage
from fastapps_auth.testing.dpop import DPoPKey, access_token_hash, bind
from fastapps_auth.testing.issuer import Minter, issuer_chain
from tests.support.dpop import URL, Introspected, Setup, ath, request, thumbprint
from tests.support.jwt_mint import claims


def _part(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def test_an_es256_proof_verifies_with_cryptography_and_says_what_it_should() -> None:
    key = DPoPKey.generate()
    proof = key.proof("POST", URL + "?q=1#f", "the-token", nonce="n-1", iat=1_800_000_000)
    h64, p64, s64 = proof.split(".")
    header, payload = json.loads(_part(h64)), json.loads(_part(p64))
    assert header["typ"] == "dpop+jwt" and header["alg"] == "ES256"
    assert "d" not in header["jwk"] and thumbprint(header["jwk"]) == key.jkt
    assert {k: payload[k] for k in ("htm", "htu", "iat", "ath", "nonce")} == {
        "htm": "POST",
        "htu": URL,
        "iat": 1_800_000_000,
        "ath": ath("the-token"),
        "nonce": "n-1",
    }
    jwk = header["jwk"]
    public = ec.EllipticCurvePublicNumbers(
        int.from_bytes(_part(jwk["x"]), "big"), int.from_bytes(_part(jwk["y"]), "big"), ec.SECP256R1()
    ).public_key()
    sig = _part(s64)
    der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    public.verify(der, f"{h64}.{p64}".encode(), ec.ECDSA(hashes.SHA256()))  # raises if it does not verify
    assert access_token_hash("the-token") == ath("the-token")


def test_bind_sets_cnf_jkt_and_keeps_other_confirmations() -> None:
    key = DPoPKey.generate()
    assert bind({"sub": "a"}, key) == {"sub": "a", "cnf": {"jkt": key.jkt}}
    assert bind({"cnf": {"x5t#S256": "t"}}, key)["cnf"] == {"x5t#S256": "t", "jkt": key.jkt}
    assert key.cnf == {"jkt": key.jkt}


@pytest.mark.parametrize("alg", ["ES256", "ES384", "RS256", "PS256", "EdDSA", "Ed25519"])
async def test_the_stage_accepts_the_helpers_proofs(clock: ManualClock, alg: Any) -> None:
    s = Setup(clock, algorithms=[alg])
    key = DPoPKey.generate(alg)
    token = s.issuer.token(bind(claims(clock.time()), key))
    headers = key.headers("POST", URL, token, iat=clock.time())
    assert headers["Authorization"] == f"DPoP {token}"
    d = await s.chain.evaluate(token, request=request(headers["DPoP"]))
    assert d.allowed, d.reason


async def test_overrides_make_the_refusals_a_user_wants_to_test(clock: ManualClock) -> None:
    s = Setup(clock)
    key = DPoPKey.generate()
    token = s.issuer.token(bind(claims(clock.time()), key))
    now = clock.time()
    cases = {
        "dpop_proof_wrong_method": key.proof("GET", URL, token, iat=now),
        "dpop_proof_expired": key.proof("POST", URL, token, iat=now - 3600),
        "dpop_proof_wrong_type": key.proof("POST", URL, token, iat=now, header={"typ": "jwt"}),
        "dpop_proof_missing_claim": key.proof("POST", URL, token, iat=now, jti=None, htm=None),
    }
    for reason, proof in cases.items():
        assert (await s.chain.evaluate(token, request=request(proof))).reason == reason


async def test_a_bound_token_from_an_introspection_like_stage(clock: ManualClock) -> None:
    key = DPoPKey.generate()
    chain = VerifierChain(Introspected(key.cnf), DPoPStage(clock=clock), clock=clock)
    token = "opaque-token-value"
    assert (await chain.evaluate(token, request=request(key.proof("POST", URL, token, iat=clock.time())))).allowed


async def test_the_documented_flow_with_the_dev_issuer_fixtures(mint: Minter, dev_issuer: RunningIssuer) -> None:
    """What docs/stages/dpop.md tells users: ``mint(..., claims={"cnf": key.cnf})`` and ``key.headers``."""
    from fastapps_auth.testing import DPoPKey as Exported

    assert Exported is DPoPKey
    key = DPoPKey.generate()
    token = mint("alice", claims={"cnf": key.cnf})
    chain = issuer_chain(dev_issuer, DPoPStage())
    try:
        proof = key.headers("POST", URL, token)["DPoP"]
        assert (await chain.evaluate(token, request=request(proof))).allowed
        stolen = mint("alice", claims={"cnf": DPoPKey.generate().cnf})
        d = await chain.evaluate(stolen, request=request(key.proof("POST", URL, stolen)))
        assert d.reason == "dpop_key_mismatch"
    finally:
        await chain.aclose()
