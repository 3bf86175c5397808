"""DPoP for users' own tests: a client key pair, its thumbprint for a token's ``cnf.jkt``, and proofs.

```python
from fastapps_auth.testing.dpop import DPoPKey

key = DPoPKey.generate()                          # ES256 by default
token = mint("alice", claims={"cnf": key.cnf})    # the `mint` fixture: a token bound to the key
headers = key.headers("POST", "http://127.0.0.1:8000/mcp", token)
response = httpx.post("http://127.0.0.1:8000/mcp", headers=headers, json=...)
```

Proofs are signed with joserfc; each has a fresh ``jti`` and ``iat`` (override either, or any
claim or header member, to test a refusal).
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

from joserfc import jws
from joserfc.jwk import ECKey, Key, OKPKey, RSAKey
from joserfc.jws import JWSRegistry

Algorithm = Literal["ES256", "ES384", "ES512", "RS256", "PS256", "EdDSA", "Ed25519"]
_EC_CURVES = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}


def access_token_hash(token: str) -> str:
    """``ath``: base64url of the SHA-256 of the access token (RFC 9449 §4.2)."""
    return base64.urlsafe_b64encode(hashlib.sha256(token.encode("ascii")).digest()).rstrip(b"=").decode("ascii")


def _generate(alg: str) -> Key:
    if alg in _EC_CURVES:
        return ECKey.generate_key(_EC_CURVES[alg])
    if alg in ("RS256", "PS256"):
        return RSAKey.generate_key(2048)
    if alg in ("EdDSA", "Ed25519"):
        return OKPKey.generate_key("Ed25519")
    raise ValueError(f"unsupported DPoP algorithm {alg!r}")


@dataclass
class DPoPKey:
    """A client's DPoP key: ``jwk`` (public), ``jkt`` (its RFC 7638 thumbprint), ``cnf`` for a token."""

    alg: str
    key: Key = field(repr=False)

    @classmethod
    def generate(cls, alg: Algorithm = "ES256") -> DPoPKey:
        return cls(alg, _generate(alg))

    @property
    def jwk(self) -> dict[str, Any]:
        """The public JWK, as a proof's header carries it."""
        return dict(self.key.as_dict(private=False))

    @property
    def jkt(self) -> str:
        return self.key.thumbprint()

    @property
    def cnf(self) -> dict[str, str]:
        """The confirmation claim binding a token to this key: ``{"jkt": ...}``."""
        return {"jkt": self.jkt}

    def proof(
        self,
        method: str,
        url: str,
        access_token: str | None = None,
        *,
        nonce: str | None = None,
        iat: float | None = None,
        jti: str | None = None,
        header: dict[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        """A DPoP proof for ``method`` ``url`` (query and fragment dropped), with ``ath`` for ``access_token``.

        ``header`` and ``claims`` add or replace members of the proof (``None`` removes one).
        """
        protected: dict[str, Any] = {"typ": "dpop+jwt", "alg": self.alg, "jwk": self.jwk, **(header or {})}
        payload: dict[str, Any] = {
            "jti": jti or uuid.uuid4().hex,
            "htm": method,
            "htu": url.split("?", 1)[0].split("#", 1)[0],
            "iat": int(time.time() if iat is None else iat),
        }
        if access_token is not None:
            payload["ath"] = access_token_hash(access_token)
        if nonce is not None:
            payload["nonce"] = nonce
        payload.update(claims)
        protected = {k: v for k, v in protected.items() if v is not None}
        body = json.dumps({k: v for k, v in payload.items() if v is not None}, separators=(",", ":"))
        with warnings.catch_warnings():  # joserfc warns on every EdDSA signature (RFC 9864 prefers Ed25519)
            warnings.simplefilter("ignore")
            registry = JWSRegistry(algorithms=[protected.get("alg", self.alg)], strict_check_header=False)
            return jws.serialize_compact(protected, body, self.key, registry=registry)

    def headers(
        self, method: str, url: str, access_token: str, *, nonce: str | None = None, iat: float | None = None
    ) -> dict[str, str]:
        """``Authorization: DPoP <token>`` and a fresh ``DPoP`` proof, for an HTTP client's request."""
        return {
            "Authorization": f"DPoP {access_token}",
            "DPoP": self.proof(method, url, access_token, nonce=nonce, iat=iat),
        }


def bind(claims: dict[str, Any], key: DPoPKey) -> dict[str, Any]:
    """``claims`` with ``cnf.jkt`` set to ``key``'s thumbprint (a DPoP-bound token's claims)."""
    cnf = claims.get("cnf")
    return {**claims, "cnf": {**(cnf if isinstance(cnf, dict) else {}), "jkt": key.jkt}}
