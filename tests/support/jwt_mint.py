"""Signing keys and token minting for JWT tests and benchmarks (real signatures via ``cryptography``)."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

_HASH: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    "256": hashes.SHA256,
    "384": hashes.SHA384,
    "512": hashes.SHA512,
}
_EC = {"ES256": (ec.SECP256R1, 32, "P-256"), "ES384": (ec.SECP384R1, 48, "P-384"), "ES512": (ec.SECP521R1, 66, "P-521")}


PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64json(obj: Any) -> str:
    return b64(json.dumps(obj, separators=(",", ":")).encode())


def _int_b64(n: int, size: int | None = None) -> str:
    size = size or (n.bit_length() + 7) // 8
    return b64(n.to_bytes(size, "big"))


@dataclass
class SigningKey:
    """A private key with its algorithm and kid; ``jwk()`` is the public JWK, ``pem()`` the public PEM."""

    alg: str
    kid: str
    private: PrivateKey  # of the kind ``alg`` names

    def sign_bytes(self, data: bytes) -> bytes:
        alg = self.alg
        key: PrivateKey = self.private
        if alg.startswith("RS"):
            assert isinstance(key, rsa.RSAPrivateKey)
            return key.sign(data, padding.PKCS1v15(), _HASH[alg[2:]]())
        if alg.startswith("PS"):
            assert isinstance(key, rsa.RSAPrivateKey)
            h = _HASH[alg[2:]]
            return key.sign(data, padding.PSS(mgf=padding.MGF1(h()), salt_length=h().digest_size), h())
        if alg.startswith("ES"):
            assert isinstance(key, ec.EllipticCurvePrivateKey)
            r, s = decode_dss_signature(key.sign(data, ec.ECDSA(_HASH[alg[2:]]())))
            n = _EC[alg][1]
            return r.to_bytes(n, "big") + s.to_bytes(n, "big")
        if alg == "EdDSA":
            assert isinstance(key, ed25519.Ed25519PrivateKey)
            return key.sign(data)
        raise ValueError(alg)

    def jwk(self, **extra: Any) -> dict[str, Any]:
        key: PrivateKey = self.private
        pub = key.public_key()
        out: dict[str, Any]
        if isinstance(pub, rsa.RSAPublicKey):
            rsa_nums = pub.public_numbers()
            out = {"kty": "RSA", "n": _int_b64(rsa_nums.n), "e": _int_b64(rsa_nums.e)}
        elif isinstance(pub, ec.EllipticCurvePublicKey):
            ec_nums = pub.public_numbers()
            size = _EC[self.alg][1]
            out = {"kty": "EC", "crv": _EC[self.alg][2], "x": _int_b64(ec_nums.x, size), "y": _int_b64(ec_nums.y, size)}
        else:
            raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            out = {"kty": "OKP", "crv": "Ed25519", "x": b64(raw)}
        out.update({"kid": self.kid, "use": "sig", "alg": self.alg})
        out.update(extra)
        return {k: v for k, v in out.items() if v is not None}

    def pem(self) -> str:
        key: PrivateKey = self.private
        return (
            key.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode()
        )

    def token(self, claims: dict[str, Any], **header: Any) -> str:
        """A signed compact JWS; ``header`` overrides/extends ``{"alg", "typ", "kid"}`` (None removes)."""
        h: dict[str, Any] = {"alg": self.alg, "typ": "JWT", "kid": self.kid}
        h.update(header)
        h = {k: v for k, v in h.items() if v is not None}
        signing_input = f"{b64json(h)}.{b64json(claims)}"
        return f"{signing_input}.{b64(self.sign_bytes(signing_input.encode()))}"


@functools.cache
def _private(alg: str, index: int) -> PrivateKey:
    if alg[:2] in ("RS", "PS"):
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if alg in _EC:
        return ec.generate_private_key(_EC[alg][0]())
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(alg)


def signing_key(alg: str = "RS256", index: int = 0, kid: str | None = None) -> SigningKey:
    """A memoized key per (alg family, index): RSA generation is slow, tests reuse keys."""
    family = "RS" if alg[:2] in ("RS", "PS") else alg
    return SigningKey(alg, kid or f"{alg.lower()}-{index}", _private(family, index))


def hs_token(secret: bytes, claims: dict[str, Any], alg: str = "HS256", **header: Any) -> str:
    h: dict[str, Any] = {"alg": alg, "typ": "JWT"}
    h.update(header)
    signing_input = f"{b64json(h)}.{b64json(claims)}"
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    return f"{signing_input}.{b64(hmac.new(secret, signing_input.encode(), digest).digest())}"


def claims(now: float, **overrides: Any) -> dict[str, Any]:
    """Typical access-token claims valid at ``now``; ``None`` values remove a claim."""
    c: dict[str, Any] = {
        "iss": "https://issuer.example/",
        "sub": "user-1",
        "aud": "api://mcp",
        "iat": int(now) - 10,
        "exp": int(now) + 3600,
        "scope": "read write",
        "client_id": "client-1",
    }
    c.update(overrides)
    return {k: v for k, v in c.items() if v is not None}
