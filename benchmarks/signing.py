"""Static signing keys and fast token minting for benchmarks, fuzzing and the soak (no issuer, no network).

Signs with ``cryptography`` directly so that minting hundreds of thousands of tokens costs little, and
exposes the public half as an inline JWKS for the ``jwt`` stage.
"""

from __future__ import annotations

import base64
import functools
import json
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

ISSUER = "https://issuer.example.test"
AUDIENCE = "https://mcp.example.test"


def b64(data: bytes) -> str:
    """Unpadded base64url."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _int_b64(n: int, size: int | None = None) -> str:
    return b64(n.to_bytes(size or (n.bit_length() + 7) // 8, "big"))


def compact(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


class Keys:
    """An RSA-2048 key (RS256) and a P-256 key (ES256), with their JWKS and a signer per algorithm."""

    def __init__(self, *, rsa_kid: str = "rsa-1", ec_kid: str = "ec-1") -> None:
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.rsa_kid, self.ec_kid = rsa_kid, ec_kid

    def jwks(self) -> dict[str, Any]:
        rn = self.rsa.public_key().public_numbers()
        en = self.ec.public_key().public_numbers()
        return {
            "keys": [
                {
                    "kty": "RSA",
                    "kid": self.rsa_kid,
                    "alg": "RS256",
                    "use": "sig",
                    "n": _int_b64(rn.n),
                    "e": _int_b64(rn.e),
                },
                {
                    "kty": "EC",
                    "kid": self.ec_kid,
                    "alg": "ES256",
                    "use": "sig",
                    "crv": "P-256",
                    "x": _int_b64(en.x, 32),
                    "y": _int_b64(en.y, 32),
                },
            ]
        }

    def sign_input(self, alg: str, signing_input: bytes) -> bytes:
        """The raw JWS signature of ``signing_input`` (RS256 or ES256)."""
        if alg == "RS256":
            return self.rsa.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        if alg == "ES256":
            r, s = decode_dss_signature(self.ec.sign(signing_input, ec.ECDSA(hashes.SHA256())))
            return r.to_bytes(32, "big") + s.to_bytes(32, "big")
        raise ValueError(f"cannot sign {alg}")

    def sign(self, payload: dict[str, Any], *, alg: str = "ES256", header: dict[str, Any] | None = None) -> str:
        """A compact JWS of ``payload``; ``header`` replaces the default ``{alg, typ, kid}``."""
        if header is None:
            header = {"alg": alg, "typ": "JWT", "kid": self.rsa_kid if alg == "RS256" else self.ec_kid}
        return self.sign_raw(compact(header), compact(payload), alg=alg)

    def sign_raw(self, header: bytes, payload: bytes, *, alg: str) -> str:
        """A compact JWS of already-encoded header and payload bytes."""
        head = f"{b64(header)}.{b64(payload)}"
        return f"{head}.{b64(self.sign_input(alg, head.encode('ascii')))}"


@functools.cache
def keys() -> Keys:
    """One key pair per process (RSA generation is the slow part)."""
    return Keys()


def claims(subject: str, now: float, *, lifetime: float = 3600, **extra: Any) -> dict[str, Any]:
    """Standard access-token claims for ``subject``, valid from ``now`` for ``lifetime`` seconds."""
    return {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": subject,
        "iat": int(now),
        "exp": int(now + lifetime),
        "scope": "read write",
        **extra,
    }


def jwt_options(**overrides: Any) -> dict[str, Any]:
    """Options of a ``jwt`` stage that trusts ``keys()`` (inline JWKS, no network)."""
    opts: dict[str, Any] = {
        "issuer_url": ISSUER,
        "audience": AUDIENCE,
        "jwks": keys().jwks(),
        "algorithms": ["RS256", "ES256"],
    }
    opts.update(overrides)
    return opts
