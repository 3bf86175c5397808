"""DPoP proofs made independently of the code under test: ``cryptography`` signatures (``jwt_mint``), RFC 7638 by hand.

Nothing here imports ``fastapps_auth.backends.dpop`` or joserfc: a proof the stage accepts was
made by other code than the code that checks it.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any, ClassVar

from fastapps_auth import AccessToken, ManualClock, RequestInfo, Stage, Verification, VerifierChain
from fastapps_auth.stages.dpop import DPoPStage
from fastapps_auth.stages.jwt import JWTVerifier
from tests.support.jwt_mint import SigningKey, b64, b64json, claims, signing_key

URL = "https://mcp.example/mcp"
#: The members RFC 7638 §3.2 hashes, per key type.
_THUMBPRINT_MEMBERS = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n"), "OKP": ("crv", "kty", "x")}


def public_jwk(key: SigningKey) -> dict[str, Any]:
    """The key's public JWK as a client puts it in a proof: key material only."""
    jwk = key.jwk()
    return {k: v for k, v in jwk.items() if k not in ("kid", "use", "alg")}


def thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638: base64url SHA-256 of the required members, sorted, no whitespace."""
    members = {k: jwk[k] for k in _THUMBPRINT_MEMBERS[jwk["kty"]]}
    return b64(hashlib.sha256(json.dumps(members, separators=(",", ":"), sort_keys=True).encode()).digest())


def ath(token: str) -> str:
    return b64(hashlib.sha256(token.encode("ascii")).digest())


def proof(
    key: SigningKey,
    token: str | None,
    *,
    iat: Any,
    htm: str = "POST",
    htu: str = URL,
    jwk: dict[str, Any] | None = None,
    header: dict[str, Any] | None = None,
    **claim_overrides: Any,
) -> str:
    """A DPoP proof signed by ``key``; ``header``/claim overrides replace or (with ``None``) remove members."""
    h: dict[str, Any] = {"typ": "dpop+jwt", "alg": key.alg, "jwk": jwk if jwk is not None else public_jwk(key)}
    h.update(header or {})
    payload: dict[str, Any] = {
        "jti": uuid.uuid4().hex,
        "htm": htm,
        "htu": htu,
        "iat": int(iat) if type(iat) is float else iat,
    }
    if token is not None:
        payload["ath"] = ath(token)
    payload.update(claim_overrides)
    return compact(
        {k: v for k, v in h.items() if v is not None}, {k: v for k, v in payload.items() if v is not None}, key
    )


def compact(header: dict[str, Any], payload: dict[str, Any], key: SigningKey) -> str:
    signing_input = f"{b64json(header)}.{b64json(payload)}"
    return f"{signing_input}.{b64(key.sign_bytes(signing_input.encode()))}"


class Setup:
    """An issuer key, a ``jwt`` stage with its static JWKS, a client key, and a chain ``jwt → dpop``."""

    def __init__(self, clock: ManualClock, client_alg: str = "ES256", **dpop_options: Any) -> None:
        self.clock = clock
        self.issuer = signing_key("RS256")
        self.client = signing_key(client_alg, 1)
        self.jkt = thumbprint(public_jwk(self.client))
        self.jwt = JWTVerifier(
            jwks={"keys": [self.issuer.jwk()]}, issuer_url="https://issuer.example/", audience="api://mcp", clock=clock
        )
        self.dpop = DPoPStage(clock=clock, **dpop_options)
        self.chain = VerifierChain(self.jwt, self.dpop, clock=clock)

    def token(self, *, bound: bool = True, **overrides: Any) -> str:
        if bound:
            overrides.setdefault("cnf", {"jkt": self.jkt})
        return self.issuer.token(claims(self.clock.time(), **overrides))

    def proof(self, token: str | None, key: SigningKey | None = None, **options: Any) -> str:
        options.setdefault("iat", self.clock.time())
        return proof(key or self.client, token, **options)


def request(*proofs: str, scheme: str | None = "dpop", method: str = "POST", url: str | None = URL) -> RequestInfo:
    return RequestInfo(method=method, path="/mcp", url=url, auth_scheme=scheme, dpop_proofs=tuple(proofs))


class Introspected(Stage[Any]):
    """Authenticates any token as an introspection stage would: the response's ``cnf`` lands in the claims."""

    authenticates: ClassVar[bool] = True

    def __init__(self, cnf: dict[str, str]) -> None:
        super().__init__()
        self.cnf = cnf

    async def __call__(self, v: Verification) -> None:
        v.access_token = AccessToken(
            token=v.token, client_id="c", scopes=[], subject="alice", claims={"active": True, "cnf": self.cnf}
        )
