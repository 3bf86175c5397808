"""Verification keys: JWKs, PEM keys and HMAC secrets turned into ready-to-call verifiers.

Each key is imported once into a ``cryptography`` public key and a per-algorithm
verify function is built up front, so the hot path only looks up ``kid`` and
``alg`` and calls. The algorithms a key may verify come from configuration and
the key's own ``kty``/``crv``/``alg``/``use``/``key_ops``, never from the token.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

#: A verify function: ``(signature, signing_input) -> bool``. Never raises for a bad signature.
Verify = Callable[[bytes, bytes], bool]

RSA_ALGS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
EC_ALGS = {"ES256": ("P-256", 32), "ES384": ("P-384", 48), "ES512": ("P-521", 66)}
HMAC_ALGS = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}
OKP_CURVES: dict[str, type[ed25519.Ed25519PublicKey] | type[ed448.Ed448PublicKey]] = {
    "Ed25519": ed25519.Ed25519PublicKey,
    "Ed448": ed448.Ed448PublicKey,
}
ASYMMETRIC_ALGS = frozenset({*RSA_ALGS, *EC_ALGS, "EdDSA"})
SUPPORTED_ALGS = frozenset({*ASYMMETRIC_ALGS, *HMAC_ALGS})
MIN_RSA_BITS = 2048
#: OpenSSL verifies with no larger modulus: a bigger key could never verify a signature.
MAX_RSA_BITS = 16384
#: Largest public exponent (FIPS 186-5: e < 2**256): a huge one makes every verification as costly as a signature.
MAX_RSA_EXPONENT_BITS = 256
#: Members holding the private half of an RSA, EC or OKP JWK (RFC 7518 §6.2.2, §6.3.2; RFC 8037).
PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth")
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}
_CURVES: dict[str, ec.EllipticCurve] = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1(), "P-521": ec.SECP521R1()}


class KeyImportError(ValueError):
    """A key that cannot be used (bad encoding, unsupported type, too weak)."""


@dataclass(frozen=True, slots=True)
class VerifyKey:
    """One usable key: its ``kid`` (``None`` for anonymous PEM keys and secrets) and a verifier per algorithm."""

    kid: str | None
    verifiers: Mapping[str, Verify]
    kind: str = field(default="")

    @property
    def algorithms(self) -> frozenset[str]:
        return frozenset(self.verifiers)


def b64url_decode(value: Any, what: str) -> bytes:
    """Strict base64url (no padding, canonical) as JWK members are written."""
    if not isinstance(value, str) or not value.isascii():
        raise KeyImportError(f"{what} must be a base64url string")
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise KeyImportError(f"{what} is not valid base64url") from None
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != value.rstrip("="):
        raise KeyImportError(f"{what} is not canonical base64url")
    return raw


# -- verify functions, one per (key, algorithm), built once -------------------------------------


def _rsa_verifier(key: rsa.RSAPublicKey, alg: str) -> Verify:
    h = _HASHES[alg[2:]]()
    pad: padding.AsymmetricPadding
    if alg.startswith("PS"):
        pad = padding.PSS(mgf=padding.MGF1(_HASHES[alg[2:]]()), salt_length=padding.PSS.DIGEST_LENGTH)
    else:
        pad = padding.PKCS1v15()
    size = (key.key_size + 7) // 8
    verify = key.verify

    def check(sig: bytes, data: bytes) -> bool:
        if len(sig) != size:
            return False
        try:
            verify(sig, data, pad, h)
        except InvalidSignature:
            return False
        return True

    return check


def _ec_verifier(key: ec.EllipticCurvePublicKey, alg: str) -> Verify:
    _, n = EC_ALGS[alg]
    scheme = ec.ECDSA(_HASHES[alg[2:]]())
    verify = key.verify
    from_bytes = int.from_bytes

    def check(sig: bytes, data: bytes) -> bool:
        # JWS carries raw r||s of exactly 2*n bytes (RFC 7518 §3.4); DER is what OpenSSL wants.
        if len(sig) != 2 * n:
            return False
        r, s = from_bytes(sig[:n], "big"), from_bytes(sig[n:], "big")
        if r == 0 or s == 0:  # psychic signatures (CVE-2022-21449): never valid
            return False
        try:
            verify(encode_dss_signature(r, s), data, scheme)
        except InvalidSignature:
            return False
        return True

    return check


def _okp_verifier(key: ed25519.Ed25519PublicKey | ed448.Ed448PublicKey) -> Verify:
    size = 64 if isinstance(key, ed25519.Ed25519PublicKey) else 114
    verify = key.verify

    def check(sig: bytes, data: bytes) -> bool:
        if len(sig) != size:
            return False
        try:
            verify(sig, data)
        except InvalidSignature:
            return False
        return True

    return check


def _hmac_verifier(secret: bytes, alg: str) -> Verify:
    digestmod = HMAC_ALGS[alg]
    new = hmac.new
    compare = hmac.compare_digest

    def check(sig: bytes, data: bytes) -> bool:
        return compare(new(secret, data, digestmod).digest(), sig)

    return check


# -- building keys --------------------------------------------------------------------------------


def algorithms_for(public_key: object) -> tuple[frozenset[str], str]:
    """The algorithms a public key's type allows, and a short label of its kind."""
    if isinstance(public_key, rsa.RSAPublicKey):
        if public_key.key_size < MIN_RSA_BITS:
            raise KeyImportError(f"RSA key of {public_key.key_size} bits is too small (minimum {MIN_RSA_BITS})")
        if public_key.key_size > MAX_RSA_BITS:
            raise KeyImportError(f"RSA key of {public_key.key_size} bits is too large (maximum {MAX_RSA_BITS})")
        if public_key.public_numbers().e.bit_length() > MAX_RSA_EXPONENT_BITS:
            raise KeyImportError(f"RSA public exponent is too large (maximum {MAX_RSA_EXPONENT_BITS} bits)")
        return RSA_ALGS, "RSA"
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        for alg, (crv, _) in EC_ALGS.items():
            if public_key.curve.name == _CURVES[crv].name:
                return frozenset({alg}), crv
        raise KeyImportError(f"unsupported elliptic curve {public_key.curve.name}")
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return frozenset({"EdDSA"}), "Ed25519"
    if isinstance(public_key, ed448.Ed448PublicKey):
        return frozenset({"EdDSA"}), "Ed448"
    raise KeyImportError(f"unsupported key type {type(public_key).__name__}")


def build_key(public_key: object, kid: str | None, allowed: Iterable[str]) -> VerifyKey:
    """A ``VerifyKey`` for ``public_key`` limited to ``allowed`` (configured ∩ key's own) algorithms."""
    own, kind = algorithms_for(public_key)
    verifiers: dict[str, Verify] = {}
    for alg in sorted(own.intersection(allowed)):
        if isinstance(public_key, rsa.RSAPublicKey):
            verifiers[alg] = _rsa_verifier(public_key, alg)
        elif isinstance(public_key, ec.EllipticCurvePublicKey):
            verifiers[alg] = _ec_verifier(public_key, alg)
        elif isinstance(public_key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            verifiers[alg] = _okp_verifier(public_key)
    return VerifyKey(kid, verifiers, kind)


def hmac_key(secret: bytes, allowed: Iterable[str]) -> VerifyKey:
    """An anonymous HMAC key for the configured HS* algorithms."""
    verifiers = {alg: _hmac_verifier(secret, alg) for alg in sorted(set(allowed) & set(HMAC_ALGS))}
    return VerifyKey(None, verifiers, "oct")


def public_key_from_jwk(jwk: Mapping[str, Any]) -> object:
    """Import the public part of an RSA, EC or OKP JWK (``key_from_jwk`` refuses private members)."""
    kty = jwk.get("kty")
    if kty == "RSA":
        n = int.from_bytes(b64url_decode(jwk.get("n"), "n"), "big")
        e = int.from_bytes(b64url_decode(jwk.get("e"), "e"), "big")
        try:
            return rsa.RSAPublicNumbers(e, n).public_key()
        except ValueError as exc:
            raise KeyImportError(f"invalid RSA key: {exc}") from None
    if kty == "EC":
        crv = jwk.get("crv")
        if crv not in _CURVES:
            raise KeyImportError(f"unsupported EC curve {crv!r}")
        size = EC_ALGS[next(a for a, (c, _) in EC_ALGS.items() if c == crv)][1]
        xb, yb = b64url_decode(jwk.get("x"), "x"), b64url_decode(jwk.get("y"), "y")
        if len(xb) != size or len(yb) != size:
            raise KeyImportError("EC coordinates have the wrong length for the curve")
        try:
            return ec.EllipticCurvePublicNumbers(
                int.from_bytes(xb, "big"), int.from_bytes(yb, "big"), _CURVES[crv]
            ).public_key()
        except ValueError as exc:  # not a point on the curve
            raise KeyImportError(f"invalid EC key: {exc}") from None
    if kty == "OKP":
        crv = jwk.get("crv")
        if crv not in OKP_CURVES:
            raise KeyImportError(f"unsupported OKP curve {crv!r}")
        try:
            return OKP_CURVES[crv].from_public_bytes(b64url_decode(jwk.get("x"), "x"))
        except ValueError as exc:
            raise KeyImportError(f"invalid {crv} key: {exc}") from None
    raise KeyImportError(f"unsupported key type {kty!r}")


def key_from_jwk(jwk: Any, allowed: Iterable[str]) -> VerifyKey | None:
    """A ``VerifyKey`` for a JWK, or ``None`` when it may not verify (``use``/``key_ops``/``alg``).

    Raises ``KeyImportError`` for a key that is malformed or unsupported. Symmetric
    (``oct``) keys are never taken from a key set: HS* needs a configured secret.
    """
    if not isinstance(jwk, Mapping):
        raise KeyImportError("a key must be a JSON object")
    use = jwk.get("use")
    if use is not None and use != "sig":
        return None
    ops = jwk.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        return None
    kid = jwk.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise KeyImportError("kid must be a string")
    if jwk.get("kty") == "oct":
        return None
    leaked = next((m for m in PRIVATE_MEMBERS if m in jwk), None)
    if leaked is not None:  # a published private key: anyone can sign with it
        raise KeyImportError(f"the key holds private key material ({leaked!r}); publish only the public key")
    key = build_key(public_key_from_jwk(jwk), kid, allowed)
    alg = jwk.get("alg")
    if alg is not None:
        if not isinstance(alg, str):
            raise KeyImportError("alg must be a string")
        if alg in OKP_CURVES:  # RFC 9864's fully specified names for what JWS calls EdDSA
            alg = "EdDSA" if alg == key.kind else ""
        key = VerifyKey(kid, {a: f for a, f in key.verifiers.items() if a == alg}, key.kind)
    return key if key.verifiers else None


def public_key_from_pem(pem: bytes) -> object:
    """A public key from a PEM ``PUBLIC KEY`` or ``CERTIFICATE`` block."""
    try:
        if b"-----BEGIN CERTIFICATE-----" in pem:
            return x509.load_pem_x509_certificate(pem).public_key()
        return serialization.load_pem_public_key(pem)
    except ValueError as exc:
        raise KeyImportError(f"not a PEM public key or certificate: {exc}") from None
