"""The dev issuer's logic, without HTTP: metadata, minting RFC 9068 access tokens, and what it has issued."""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from joserfc import jws, jwt
from joserfc.errors import JoseError

from fastapps_auth.clock import SYSTEM_CLOCK, Clock
from fastapps_auth.dev_issuer.clients import AUTH_METHODS, GRANT_TYPES, Client, ClientRegistry, configured_client
from fastapps_auth.dev_issuer.dpop import TokenRequestProofs
from fastapps_auth.dev_issuer.keystore import KeyStore
from fastapps_auth.dev_issuer.registration import MetadataDocuments, is_metadata_url
from fastapps_auth.dev_issuer.tokens import TokenStore
from fastapps_auth.dev_issuer.users import ACR_VALUES, DEFAULT_USERS, DevUser, as_users

DEFAULT_AUDIENCE = "fastapps-auth-dev"
DEFAULT_LIFETIME = 3600.0
#: Advertised in the metadata; any other scope may be asked for too (RFC 8414 lets a list be partial).
DEFAULT_SCOPES: tuple[str, ...] = ("openid", "profile", "email")


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """An access token and the claims it carries (for a JWT, the claims it is signed over)."""

    token: str
    claims: dict[str, Any]
    token_type: str = "Bearer"  # "DPoP" once a token is bound to a proof's key


class DevIssuer:
    """Mints access tokens for ``issuer_url`` with keys from ``keys``, and remembers what it issued.

    Every standard claim can be overridden through ``claims``; a claim set to ``None`` there is
    left out, so tests can build tokens that lack ``exp`` or ``aud``. ``opaque=True`` makes the
    token endpoint issue opaque tokens (random strings, known only to introspection).
    ``dpop_nonce=True`` makes every DPoP proof at the token endpoint carry a nonce it issued.
    """

    def __init__(
        self,
        issuer_url: str,
        keys: KeyStore,
        audience: str | list[str] = DEFAULT_AUDIENCE,
        lifetime: float = DEFAULT_LIFETIME,
        clock: Clock = SYSTEM_CLOCK,
        clients: Iterable[Client] = (),
        *,
        users: Iterable[str | DevUser] = DEFAULT_USERS,
        scopes_supported: Iterable[str] = DEFAULT_SCOPES,
        opaque: bool = False,
        auto_login: str | None = None,
        code_lifetime: float = 60.0,
        refresh_lifetime: float = 86400.0,
        metadata_documents: MetadataDocuments | None = None,
        dpop_nonce: bool = False,
    ) -> None:
        self.issuer_url = issuer_url.rstrip("/")
        self.keys = keys
        self.audience = audience
        self.lifetime = lifetime
        self.clock = clock
        self.users: dict[str, DevUser] = as_users(users)
        if auto_login is not None and auto_login not in self.users:
            raise ValueError(f"--auto-login {auto_login!r} is not one of the users ({', '.join(self.users)})")
        self.auto_login = auto_login
        self.scopes_supported = tuple(scopes_supported)
        self.opaque = opaque
        self.code_lifetime = code_lifetime
        self.refresh_lifetime = refresh_lifetime
        self.registry = ClientRegistry()
        for client in clients:
            self.registry.add(client)
        self.documents = metadata_documents or MetadataDocuments(clock=clock)
        self.tokens = TokenStore(clock)
        #: The DPoP proofs of token requests (RFC 9449 §5): checked, remembered, their key's thumbprint.
        self.dpop = TokenRequestProofs(clock, nonce=dpop_nonce)

    def __repr__(self) -> str:
        return f"DevIssuer({self.issuer_url!r}, {len(self.registry.all())} clients, opaque={self.opaque})"

    # -- discovery -----------------------------------------------------------------------------

    @property
    def jwks_uri(self) -> str:
        return f"{self.issuer_url}/jwks.json"

    @property
    def token_endpoint(self) -> str:
        return f"{self.issuer_url}/token"

    @property
    def authorization_endpoint(self) -> str:
        return f"{self.issuer_url}/authorize"

    @property
    def registration_endpoint(self) -> str:
        return f"{self.issuer_url}/register"

    @property
    def introspection_endpoint(self) -> str:
        return f"{self.issuer_url}/introspect"

    @property
    def revocation_endpoint(self) -> str:
        return f"{self.issuer_url}/revoke"

    def metadata(self) -> dict[str, Any]:
        """RFC 8414 authorization server metadata, also served as OIDC discovery."""
        algs = list(self.keys.algorithms)
        secret_methods = [m for m in AUTH_METHODS if m != "none"]
        return {
            "issuer": self.issuer_url,
            "authorization_endpoint": self.authorization_endpoint,
            "token_endpoint": self.token_endpoint,
            "registration_endpoint": self.registration_endpoint,
            "introspection_endpoint": self.introspection_endpoint,
            "revocation_endpoint": self.revocation_endpoint,
            "jwks_uri": self.jwks_uri,
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": list(GRANT_TYPES),
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": list(AUTH_METHODS),
            "introspection_endpoint_auth_methods_supported": secret_methods,
            "revocation_endpoint_auth_methods_supported": list(AUTH_METHODS),
            "scopes_supported": list(self.scopes_supported),
            "client_id_metadata_document_supported": True,
            "authorization_response_iss_parameter_supported": True,
            "acr_values_supported": list(ACR_VALUES),
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": algs,
            "access_token_signing_alg_values_supported": algs,
            "dpop_signing_alg_values_supported": list(self.dpop.algorithms),
        }

    def jwks(self) -> dict[str, Any]:
        return self.keys.jwks()

    # -- minting -------------------------------------------------------------------------------

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

    def mint(self, subject: str = "user-1", *, alg: str = "RS256", typ: str = "at+jwt", **kwargs: Any) -> str:
        """A signed ``at+jwt`` access token for ``subject``; keywords are ``claims_for``'s."""
        return self.sign(self.claims_for(subject, **kwargs), alg=alg, typ=typ)

    def mint_opaque(self, subject: str = "user-1", **kwargs: Any) -> str:
        """An opaque access token with the claims ``claims_for`` builds, known to introspection only."""
        token = secrets.token_urlsafe(32)
        self.tokens.put_opaque(token, self.claims_for(subject, **kwargs))
        return token

    def expired(self, subject: str = "user-1", *, ago: float = 300.0, **kwargs: Any) -> str:
        """A token that expired ``ago`` seconds before now (issued one lifetime earlier)."""
        now = self.clock.time()
        lifetime = float(kwargs.pop("lifetime", None) or self.lifetime)
        return self.mint(subject, issued_at=now - ago - lifetime, expires_at=now - ago, **kwargs)

    def not_yet_valid(self, subject: str = "user-1", *, starts_in: float = 300.0, **kwargs: Any) -> str:
        """A token whose ``nbf`` is ``starts_in`` seconds after now."""
        now = self.clock.time()
        return self.mint(subject, issued_at=now, not_before=now + starts_in, **kwargs)

    def issue(
        self,
        subject: str,
        *,
        scopes: Iterable[str],
        audience: str | list[str] | None,
        client_id: str,
        lifetime: float | None = None,
        claims: Mapping[str, Any] | None = None,
        family: str | None = None,
        confirmation: Mapping[str, Any] | None = None,
    ) -> IssuedToken:
        """An access token from a grant: a JWT, or opaque in ``opaque`` mode; remembered in ``family``.

        ``confirmation`` is the RFC 7800 ``cnf`` of a sender-constrained token (DPoP's ``{"jkt": ...}``).
        """
        body = self.claims_for(
            subject, scopes=scopes, audience=audience, client_id=client_id, lifetime=lifetime, claims=claims
        )
        if confirmation is not None:
            body["cnf"] = dict(confirmation)
        if self.opaque:
            token = secrets.token_urlsafe(32)
            self.tokens.put_opaque(token, body)
        else:
            token = self.sign(body)
        if family is not None:
            self.tokens.record_access(family, body["jti"], body["exp"])
        return IssuedToken(token, body, "DPoP" if confirmation is not None else "Bearer")

    # -- what was issued -----------------------------------------------------------------------------

    def decode(self, token: str) -> dict[str, Any] | None:
        """The claims of an access token this issuer signed or issued opaque, unchecked for time or revocation."""
        if token.count(".") != 2:
            return self.tokens.opaque_claims(token)
        try:
            header = jws.extract_compact(token.encode("ascii")).protected
            key = self.keys.key(str(header.get("kid")))
            if key is None or header.get("alg") != key.alg or header.get("typ") != "at+jwt":
                return None
            claims = dict(jwt.decode(token, key, algorithms=[str(key.alg)]).claims)
        except (JoseError, ValueError, UnicodeError):
            return None
        return claims if claims.get("iss") == self.issuer_url else None

    def active_claims(self, token: str) -> dict[str, Any] | None:
        """The claims of ``token`` if it is an access token of this issuer that is valid now and not revoked."""
        claims = self.decode(token)
        if claims is None:
            return None
        now = self.clock.time()
        exp, nbf = claims.get("exp"), claims.get("nbf")
        if isinstance(exp, int | float) and exp <= now:
            return None
        if isinstance(nbf, int | float) and nbf > now:
            return None
        return None if self.tokens.is_revoked(claims.get("jti")) else claims

    def revoke(self, token: str, *, client_id: str | None = None) -> bool:
        """Revoke an access or refresh token of this issuer (RFC 7009); False if it is not one.

        With ``client_id``, only a token issued to that client (``PermissionError`` otherwise).
        """
        record = self.tokens.refresh_record(token)
        if record is not None:
            if client_id is not None and record.login.client_id != client_id:
                raise PermissionError("the token was issued to another client")
            self.tokens.revoke_family(record.login.family)
            return True
        claims = self.decode(token)
        if claims is None or not isinstance(claims.get("jti"), str):
            return False
        if client_id is not None and claims.get("client_id") != client_id:
            raise PermissionError("the token was issued to another client")
        exp = claims.get("exp")
        self.tokens.revoke_jti(claims["jti"], float(exp) if isinstance(exp, int | float) else None)
        return True

    # -- clients ----------------------------------------------------------------------------------

    @property
    def clients(self) -> dict[str, Client]:
        """Configured and registered clients by id (a copy)."""
        return {c.client_id: c for c in self.registry.all()}

    def add_client(
        self,
        client_id: str,
        secret: str | None = None,
        scopes: Iterable[str] | None = None,
        *,
        redirect_uris: Iterable[str] = (),
        grant_types: Iterable[str] | None = None,
    ) -> Client:
        """Configure a confidential client (a random secret when none is given; see ``configured_client``)."""
        return self.registry.add(
            configured_client(client_id, secret, scopes, redirect_uris=redirect_uris, grant_types=grant_types)
        )

    def authenticate_client(self, client_id: str, secret: str) -> Client | None:
        return self.registry.authenticate(client_id, secret)

    async def find_client(self, client_id: str) -> Client | None:
        """A configured or registered client, or the one its client ID metadata document describes."""
        client = self.registry.get(client_id)
        if client is None and is_metadata_url(client_id):
            return await self.documents.client(client_id)
        return client
