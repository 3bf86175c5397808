"""The dev issuer's logic, without HTTP: metadata, JWKS, and minting RFC 9068 access tokens."""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from joserfc import jwt

from fastapps_auth.clock import SYSTEM_CLOCK, Clock
from fastapps_auth.dev_issuer.keystore import KeyStore

DEFAULT_AUDIENCE = "fastapps-auth-dev"
DEFAULT_LIFETIME = 3600.0


@dataclass(frozen=True, slots=True)
class Client:
    """A ``client_credentials`` client: its secret and, if set, the scopes it may ask for."""

    client_id: str
    secret: str = field(repr=False)  # never in a log line or a test's failure output
    scopes: frozenset[str] | None = None

    def check_secret(self, secret: str) -> bool:
        return hmac.compare_digest(self.secret.encode(), secret.encode())


@dataclass(slots=True)
class DevIssuer:
    """Mints access tokens for ``issuer_url`` with keys from ``keys``.

    Every standard claim can be overridden through ``claims``; a claim set to
    ``None`` there is left out, so tests can build tokens that lack ``exp`` or ``aud``.
    """

    issuer_url: str
    keys: KeyStore
    audience: str | list[str] = DEFAULT_AUDIENCE
    lifetime: float = DEFAULT_LIFETIME
    clock: Clock = SYSTEM_CLOCK
    clients: dict[str, Client] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.issuer_url = self.issuer_url.rstrip("/")

    # -- discovery ---------------------------------------------------------------------------

    @property
    def jwks_uri(self) -> str:
        return f"{self.issuer_url}/jwks.json"

    @property
    def token_endpoint(self) -> str:
        return f"{self.issuer_url}/token"

    def metadata(self) -> dict[str, Any]:
        """OIDC discovery / RFC 8414 authorization server metadata."""
        algs = list(self.keys.algorithms)
        return {
            "issuer": self.issuer_url,
            "jwks_uri": self.jwks_uri,
            "token_endpoint": self.token_endpoint,
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "response_types_supported": ["token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": algs,
            "access_token_signing_alg_values_supported": algs,
        }

    def jwks(self) -> dict[str, Any]:
        return self.keys.jwks()

    # -- minting ---------------------------------------------------------------------------

    def claims_for(
        self,
        subject: str = "user-1",
        *,
        scopes: Iterable[str] = (),
        audience: str | list[str] | None = None,
        client_id: str | None = None,
        lifetime: float | None = None,
        issued_at: float | None = None,
        not_before: float | None = None,
        expires_at: float | None = None,
        claims: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The claim set ``mint`` would sign (RFC 9068 §2.2), before signing."""
        iat = int(self.clock.time() if issued_at is None else issued_at)
        exp = int(expires_at) if expires_at is not None else iat + int(self.lifetime if lifetime is None else lifetime)
        out: dict[str, Any] = {
            "iss": self.issuer_url,
            "sub": subject,
            "aud": self.audience if audience is None else audience,
            "iat": iat,
            "exp": exp,
            "jti": secrets.token_urlsafe(12),
            "client_id": client_id or subject,
        }
        scope_list = list(scopes)
        if scope_list:
            out["scope"] = " ".join(scope_list)
        if not_before is not None:
            out["nbf"] = int(not_before)
        for name, value in (claims or {}).items():
            if value is None:
                out.pop(name, None)
            else:
                out[name] = value
        return out

    def sign(self, claims: Mapping[str, Any], *, alg: str = "RS256", typ: str = "at+jwt") -> str:
        """Sign ``claims`` with the active ``alg`` key, header ``{alg, kid, typ}``."""
        key = self.keys.signing_key(alg)
        header = {"alg": alg, "kid": key.kid, "typ": typ}
        return jwt.encode(header, dict(claims), key)

    def mint(
        self,
        subject: str = "user-1",
        *,
        scopes: Iterable[str] = (),
        audience: str | list[str] | None = None,
        client_id: str | None = None,
        lifetime: float | None = None,
        issued_at: float | None = None,
        not_before: float | None = None,
        expires_at: float | None = None,
        claims: Mapping[str, Any] | None = None,
        alg: str = "RS256",
        typ: str = "at+jwt",
    ) -> str:
        """A signed ``at+jwt`` access token for ``subject`` with any scopes, claims and lifetime."""
        body = self.claims_for(
            subject,
            scopes=scopes,
            audience=audience,
            client_id=client_id,
            lifetime=lifetime,
            issued_at=issued_at,
            not_before=not_before,
            expires_at=expires_at,
            claims=claims,
        )
        return self.sign(body, alg=alg, typ=typ)

    def expired(self, subject: str = "user-1", *, ago: float = 300.0, **kwargs: Any) -> str:
        """A token that expired ``ago`` seconds before now (issued one lifetime earlier)."""
        now = self.clock.time()
        lifetime = float(kwargs.pop("lifetime", None) or self.lifetime)
        return self.mint(subject, issued_at=now - ago - lifetime, expires_at=now - ago, **kwargs)

    def not_yet_valid(self, subject: str = "user-1", *, starts_in: float = 300.0, **kwargs: Any) -> str:
        """A token whose ``nbf`` is ``starts_in`` seconds after now."""
        now = self.clock.time()
        return self.mint(subject, issued_at=now, not_before=now + starts_in, **kwargs)

    # -- the token endpoint --------------------------------------------------------------------

    def add_client(self, client_id: str, secret: str | None = None, scopes: Iterable[str] | None = None) -> Client:
        """Register a ``client_credentials`` client (a random secret when none is given)."""
        client = Client(
            client_id, secret or secrets.token_urlsafe(24), frozenset(scopes) if scopes is not None else None
        )
        self.clients[client_id] = client
        return client

    def authenticate_client(self, client_id: str, secret: str) -> Client | None:
        client = self.clients.get(client_id)
        if client is None or not client.check_secret(secret):
            return None
        return client
