"""Short-lived internal tokens, Oathkeeper-style: this server vouches for the user to services that trust it.

Instead of a token exchange at the authorization server, this server signs a JWT of its own with a
configured private key (joserfc): ``iss`` this server, ``sub`` the user, ``aud`` the internal
service, ``scope`` and ``client_id`` of the user's token, ``original_iss`` the issuer that
authenticated the user, a fresh ``jti``, and ``exp`` at most ``ttl`` seconds away and never after
the user's own token expires. The header is ``{alg, kid, typ: "at+jwt"}`` (RFC 9068), so a service
running fastapps-auth's ``jwt`` stage with ``jwks = InternalTokens.jwks()`` (or its URL) accepts it.
"""

from __future__ import annotations

import math
import secrets
import warnings
from collections.abc import Mapping
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, JWKRegistry, OKPKey, RSAKey

from fastapps_auth.access_token import SDKAccessToken
from fastapps_auth.clock import SYSTEM_CLOCK, Clock
from fastapps_auth.downstream.errors import NO_SUBJECT, SUBJECT_EXPIRED, DownstreamError

SigningKey = RSAKey | ECKey | OKPKey
#: Asymmetric only: the services that verify hold the public key, never a secret that could mint.
ALGORITHMS: dict[str, str] = {
    "RS256": "RSA",
    "RS384": "RSA",
    "RS512": "RSA",
    "PS256": "RSA",
    "PS384": "RSA",
    "PS512": "RSA",
    "ES256": "EC",
    "ES384": "EC",
    "ES512": "EC",
    "EdDSA": "OKP",
    "Ed25519": "OKP",
}
_DEFAULT_ALG = {"RSA": "RS256", "P-256": "ES256", "P-384": "ES384", "P-521": "ES512", "Ed25519": "EdDSA"}
MAX_TTL = 3600.0


def signing_key(key: SigningKey | Mapping[str, Any]) -> tuple[SigningKey, str]:
    """``(key, alg)`` of a private signing key given as a joserfc key or a private JWK; ``ValueError`` otherwise."""
    if isinstance(key, Mapping):
        try:
            imported = JWKRegistry.import_key(dict(key))
        except (JoseError, ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"not a usable JWK ({type(exc).__name__})") from None
        if not isinstance(imported, RSAKey | ECKey | OKPKey):
            raise ValueError("internal tokens are signed with an RSA, EC or OKP key (asymmetric)")
        key = imported
    if not isinstance(key, RSAKey | ECKey | OKPKey):
        raise ValueError("internal tokens are signed with an RSA, EC or OKP key (asymmetric)")
    if not key.is_private:
        raise ValueError("the internal signing key must be a private key")
    kty = key.key_type
    alg = key.alg or _DEFAULT_ALG.get(kty if kty == "RSA" else str(key.get("crv")), "")
    if ALGORITHMS.get(alg) != kty:
        raise ValueError(f"algorithm {alg or '(none)'!r} does not fit a {kty} key")
    return key, alg


class InternalTokens:
    """Signs internal tokens as ``issuer`` with ``key`` (a joserfc private key or a private JWK)."""

    def __init__(
        self,
        key: SigningKey | Mapping[str, Any] | None,
        *,
        issuer: str,
        clock: Clock = SYSTEM_CLOCK,
        max_ttl: float = MAX_TTL,
    ) -> None:
        if not issuer:
            raise ValueError("internal tokens need an issuer (this server's URL, the services' expected iss)")
        self.issuer = issuer
        self.clock = clock
        self.max_ttl = float(max_ttl)
        self._key = signing_key(key) if key is not None else None

    def __repr__(self) -> str:
        kid = self._key[0].kid if self._key is not None else None
        return f"InternalTokens(issuer={self.issuer!r}, kid={kid!r})"

    def jwks(self) -> dict[str, Any]:
        """The public JWKS of the configured key, for the services that verify the tokens."""
        if self._key is None:
            return {"keys": []}
        key, alg = self._key
        public = dict(key.as_dict(private=False))
        public.update(kid=_kid(key), alg=alg, use="sig")
        return {"keys": [public]}

    def mint(
        self,
        user: SDKAccessToken,
        *,
        audience: str,
        ttl: float = 60.0,
        key: SigningKey | Mapping[str, Any] | None = None,
    ) -> str:
        """A token for ``audience`` vouching for ``user`` (the request's verified access token)."""
        if not audience:
            raise ValueError("audience is required (the internal service the token is for)")
        if not (math.isfinite(ttl) and 0 < ttl <= self.max_ttl):
            raise ValueError(f"ttl must be within (0, {self.max_ttl:g}] seconds")
        signer, alg = signing_key(key) if key is not None else self._configured()
        now = int(self.clock.time())
        exp = now + max(1, int(ttl))
        if user.expires_at is not None:
            exp = min(exp, int(user.expires_at))
        if exp <= now:
            raise DownstreamError(SUBJECT_EXPIRED, "the user's access token has expired")
        original = user.claims if isinstance(user.claims, dict) else {}
        subject = user.subject or original.get("sub")
        if not isinstance(subject, str) or not subject:
            raise DownstreamError(NO_SUBJECT, "the request's access token names no subject")
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": subject,
            "aud": audience,
            "iat": now,
            "exp": exp,
            "jti": secrets.token_urlsafe(16),
            "client_id": user.client_id,
        }
        if user.scopes:
            claims["scope"] = " ".join(user.scopes)
        if isinstance(original.get("iss"), str):
            claims["original_iss"] = original["iss"]
        header = {"alg": alg, "kid": _kid(signer), "typ": "at+jwt"}
        with warnings.catch_warnings():  # joserfc warns on every EdDSA signature (RFC 9864 prefers Ed25519)
            warnings.simplefilter("ignore")
            return jwt.encode(header, claims, signer, algorithms=[alg])

    def _configured(self) -> tuple[SigningKey, str]:
        if self._key is None:
            raise ValueError("no internal signing key is configured: configure(internal_key=...) or pass key=")
        return self._key


def _kid(key: SigningKey) -> str:
    return str(key.kid) if key.kid else key.thumbprint()
