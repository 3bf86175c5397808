"""Parsing and verifying one DPoP proof (RFC 9449 §4.2, §4.3) with joserfc, before any request is compared.

A proof is a compact JWS whose header carries its own public key (``jwk``). What this module checks:
the shape (three base64url parts, bounded sizes, JSON objects as ``fastapps_auth.strict_json`` reads
them: no duplicate members, ``NaN`` or lone surrogates), ``typ = dpop+jwt``, an ``alg`` from the
configured asymmetric list that fits the key (joserfc's ``check_key``: key type, curve, the key's
own ``use``/``alg``), a public key only (no private member), RSA keys of at least 2048 bits, the
signature, and the types of the claims. The
key comes from ``jwk`` alone: ``jku``, ``x5u``, ``x5c`` and ``kid`` are ignored; ``crit`` and
``b64`` (RFC 7797) are refused.

A client signs every proof with the same key, so a header repeats: what its checks found (the
algorithm, the imported key, its RFC 7638 thumbprint) is remembered per header segment in a bounded
LRU cache, and a repeated header costs a split, two strict base64url decodes and the signature
check through joserfc's algorithm model. joserfc's ``extract_compact``/``validate_compact`` would
parse the header's JSON and look the algorithm up again on every proof (warning on each ``EdDSA``
one): a tenth of a proof's cost, measured in benchmarks/bench_dpop.py.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from cachetools import LRUCache
from joserfc.errors import JoseError
from joserfc.jwa import JWSAlgModel
from joserfc.jwk import JWKRegistry, Key
from joserfc.jws import JWSRegistry
from joserfc.util import urlsafe_b64decode

from fastapps_auth.backends.dpop.htu import same_uri
from fastapps_auth.strict_json import Malformed, json_object

#: Algorithms a proof may be signed with: asymmetric only (never ``none``, never HS*).
SUPPORTED_ALGORITHMS = frozenset(
    {"ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "EdDSA", "Ed25519"}
)
DEFAULT_ALGORITHMS = ("ES256", "ES384", "RS256", "PS256", "EdDSA")
#: JWK members that hold private key material (RFC 7518 §6.2.2, §6.3.2, §6.4; RFC 8037 §2).
PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
MIN_RSA_BITS = 2048
MAX_RSA_BITS = 16384
#: Longest ``jti``, ``htm``, ``htu``, ``ath`` and ``nonce`` accepted, in characters.
MAX_CLAIM_CHARS = {"jti": 256, "htm": 32, "htu": 4096, "ath": 64, "nonce": 512}
#: Longest header (room for an RSA key), payload and signature segments, base64url characters.
MAX_HEADER_CHARS = 6144
MAX_PAYLOAD_CHARS = 4096
MAX_SIGNATURE_CHARS = 2048
#: Times beyond this either way are not times (a float would lose the seconds).
_MAX_TIME = 2**53
_COMPACT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")


class ProofError(ValueError):
    """A proof that is not acceptable: ``reason`` is a machine code, ``description`` client-safe."""

    def __init__(self, reason: str, description: str) -> None:
        super().__init__(description)
        self.reason = reason
        self.description = description


@dataclass(frozen=True, slots=True)
class Proof:
    """What a verified proof says: the thumbprint of its key and its claims, type-checked."""

    jkt: str
    jti: str
    htm: str
    htu: str
    iat: float
    ath: str | None
    nonce: str | None
    alg: str

    def check_request(self, method: str, url: str, now: float, *, window: float, leeway: float) -> float:
        """Whether this proof is for ``method`` ``url`` and recent (RFC 9449 §4.3 steps 8 to 11).

        ``window`` is ``max_age + leeway``; ``iat`` may be up to ``leeway`` ahead. Returns how long
        the ``jti`` must then be remembered (until the proof could no longer be accepted);
        ``ProofError`` otherwise. Shared by the ``dpop`` stage and the dev issuer's token endpoint.
        """
        if self.htm != method:
            raise ProofError("dpop_proof_wrong_method", "the DPoP proof is for another HTTP method")
        if not same_uri(self.htu, url):
            raise ProofError("dpop_proof_wrong_url", "the DPoP proof is for another URL")
        if self.iat > now + leeway:
            raise ProofError("dpop_proof_in_future", "the DPoP proof was issued in the future")
        if now - self.iat > window:
            raise ProofError("dpop_proof_expired", "the DPoP proof is too old")
        return max(self.iat + window - now, 0.001)


@dataclass(frozen=True, slots=True)
class _Header:
    """What a checked header yields: its algorithm's joserfc model, the imported key, the key's thumbprint."""

    alg: JWSAlgModel
    key: Key
    jkt: str


def strict_object(raw: bytes) -> dict[str, Any]:
    """A JSON object from UTF-8 ``raw`` by ``fastapps_auth.strict_json`` (no duplicate names, no ``NaN``)."""
    try:
        return json_object(raw)
    except Malformed:
        raise ProofError("dpop_proof_malformed", "the DPoP proof is not a well-formed JWT") from None


def _typ_is_dpop(typ: object) -> bool:
    if type(typ) is not str:
        return False
    t = typ.strip().lower()
    return t in ("dpop+jwt", "application/dpop+jwt")


class ProofVerifier:
    """Verifies proofs signed with one of ``algorithms``; ``ProofError`` says why one is refused.

    ``max_bytes`` bounds the whole proof; ``max_headers`` how many distinct checked headers (one
    per client key, in practice) are remembered.
    """

    def __init__(self, algorithms: Collection[str], *, max_bytes: int = 8192, max_headers: int = 1024) -> None:
        unknown = sorted(set(algorithms) - SUPPORTED_ALGORITHMS)
        if unknown or not algorithms:
            raise ValueError(
                f"unsupported DPoP algorithm(s) {', '.join(unknown) or '(none given)'} "
                f"(supported: {', '.join(sorted(SUPPORTED_ALGORITHMS))})"
            )
        self.algorithms: tuple[str, ...] = tuple(dict.fromkeys(algorithms))
        self._models: dict[str, JWSAlgModel] = {name: JWSRegistry.algorithms[name] for name in self.algorithms}
        self.max_bytes = max_bytes
        self._registry = JWSRegistry(algorithms=self.algorithms, strict_check_header=False)
        self._headers: LRUCache[str, _Header] = LRUCache(maxsize=max_headers)

    def verify(self, proof: str) -> Proof:
        """The proof's key thumbprint and claims, once its header, key and signature are acceptable."""
        if type(proof) is not str:
            raise ProofError("dpop_proof_malformed", "the DPoP proof is not a compact JWS")
        if len(proof) > self.max_bytes:
            raise ProofError("dpop_proof_too_large", "the DPoP proof is too large")
        if not _COMPACT.fullmatch(proof):
            raise ProofError("dpop_proof_malformed", "the DPoP proof is not a compact JWS")
        h64, p64, s64 = proof.split(".")
        header = self._headers.get(h64)
        if header is None:
            header = self._check_header(h64)
            self._headers[h64] = header
        if len(p64) > MAX_PAYLOAD_CHARS or len(s64) > MAX_SIGNATURE_CHARS:
            raise ProofError("dpop_proof_too_large", "the DPoP proof is too large")
        try:
            payload = urlsafe_b64decode(p64.encode("ascii"))
            sig = urlsafe_b64decode(s64.encode("ascii"))
        except ValueError:  # binascii.Error: not canonical base64url
            raise ProofError("dpop_proof_malformed", "the DPoP proof is not a well-formed JWT") from None
        try:
            valid = header.alg.verify(proof[: len(h64) + 1 + len(p64)].encode("ascii"), sig, header.key)
        except (JoseError, ValueError, TypeError):
            valid = False
        if not valid:
            raise ProofError("dpop_proof_bad_signature", "the DPoP proof's signature is invalid")
        return _claims(strict_object(payload), header)

    def _check_header(self, h64: str) -> _Header:
        """The algorithm, key and thumbprint of an acceptable protected header (parsed strictly, once)."""
        if len(h64) > MAX_HEADER_CHARS:
            raise ProofError("dpop_proof_too_large", "the DPoP proof's header is too large")
        try:
            raw = urlsafe_b64decode(h64.encode("ascii"))
        except ValueError:
            raise ProofError("dpop_proof_malformed", "the DPoP proof is not a well-formed JWT") from None
        header = strict_object(raw)
        if not _typ_is_dpop(header.get("typ")):
            raise ProofError("dpop_proof_wrong_type", "the DPoP proof's typ is not dpop+jwt")
        name = header.get("alg")
        model = self._models.get(name) if type(name) is str else None
        if model is None:  # also none, HS*, and anything not configured
            raise ProofError("dpop_proof_algorithm", "the DPoP proof's algorithm is not accepted")
        if "crit" in header or "b64" in header:
            raise ProofError("dpop_proof_unsupported_header", "the DPoP proof has a header this server does not know")
        key = _public_key(header.get("jwk"))
        try:
            self._registry.check_header(header)  # joserfc: the registered members have their types
        except JoseError:
            raise ProofError("dpop_proof_malformed", "the DPoP proof's header is malformed") from None
        try:
            model.check_key(key)
        except JoseError:
            raise ProofError("dpop_proof_bad_key", "the DPoP proof's key does not fit its algorithm") from None
        return _Header(model, key, key.thumbprint())

    def stats(self) -> dict[str, float]:
        return {"proof_headers": float(len(self._headers))}


def _public_key(jwk: object) -> Key:
    """The public key of a proof's ``jwk`` header; ``ProofError`` for anything else (a private key above all)."""
    if type(jwk) is not dict or len(jwk) > 32:
        raise ProofError("dpop_proof_bad_key", "the DPoP proof carries no usable jwk")
    if not PRIVATE_MEMBERS.isdisjoint(jwk):
        raise ProofError("dpop_proof_private_key", "the DPoP proof's jwk contains a private key")
    kty = jwk.get("kty")
    if kty not in ("RSA", "EC", "OKP"):
        raise ProofError("dpop_proof_bad_key", "the DPoP proof's jwk is not an asymmetric public key")
    if kty == "RSA" and not MIN_RSA_BITS <= _modulus_bits(jwk.get("n")) <= MAX_RSA_BITS:
        raise ProofError("dpop_proof_bad_key", f"the DPoP proof's RSA key must have {MIN_RSA_BITS} bits or more")
    try:
        key = JWKRegistry.import_key(jwk)
        private = key.is_private
    except (JoseError, ValueError, TypeError, KeyError, AttributeError):
        raise ProofError("dpop_proof_bad_key", "the DPoP proof carries no usable jwk") from None
    if private:
        raise ProofError("dpop_proof_private_key", "the DPoP proof's jwk contains a private key")
    return key


def _modulus_bits(n: object) -> int:
    """Bits of an RSA ``n`` member (0 if it is not base64url), checked before joserfc imports the key."""
    if type(n) is not str or len(n) > 4 * MAX_RSA_BITS // 24 + 4:
        return 0
    try:
        return int.from_bytes(urlsafe_b64decode(n.encode("ascii")), "big").bit_length()
    except (ValueError, UnicodeEncodeError):
        return 0


def _text(claims: dict[str, Any], name: str) -> str:
    value = claims.get(name)
    if type(value) is not str or not value:
        if value is None:
            raise ProofError("dpop_proof_missing_claim", f"the DPoP proof has no {name} claim")
        raise ProofError("dpop_proof_bad_claim", f"the DPoP proof's {name} claim is not a non-empty string")
    if len(value) > MAX_CLAIM_CHARS[name]:
        raise ProofError("dpop_proof_bad_claim", f"the DPoP proof's {name} claim is too long")
    return value


def _optional_text(claims: dict[str, Any], name: str) -> str | None:
    return None if claims.get(name) is None else _text(claims, name)


def _claims(claims: dict[str, Any], header: _Header) -> Proof:
    """The typed claims of a proof whose signature verified."""
    iat = claims.get("iat")
    if iat is None:
        raise ProofError("dpop_proof_missing_claim", "the DPoP proof has no iat claim")
    t = type(iat)
    if not (t is int or t is float) or not math.isfinite(iat) or not -_MAX_TIME <= iat <= _MAX_TIME:
        raise ProofError("dpop_proof_bad_claim", "the DPoP proof's iat claim is not a time (a number of seconds)")
    return Proof(
        jkt=header.jkt,
        jti=_text(claims, "jti"),
        htm=_text(claims, "htm"),
        htu=_text(claims, "htu"),
        iat=float(iat),
        ath=_optional_text(claims, "ath"),
        nonce=_optional_text(claims, "nonce"),
        alg=header.alg.name,
    )
