"""A local OAuth 2.1 authorization server for development and tests (``fastapps-auth dev-issuer``).

Loopback only, never for production. RFC 8414 / OIDC metadata, authorization code with PKCE
(S256) and a login page listing dev users (or ``login_hint`` for scripts), dynamic client
registration and client ID metadata documents, refresh tokens with rotation, client
credentials, token exchange (RFC 8693), introspection (RFC 7662) and revocation (RFC 7009).
Tokens are RFC 9068 ``at+jwt`` signed with keys from a local folder (RS256, ES256), or opaque.
"""

from __future__ import annotations

from fastapps_auth.dev_issuer.clients import Client
from fastapps_auth.dev_issuer.issuer import DEFAULT_AUDIENCE, DevIssuer, IssuedToken
from fastapps_auth.dev_issuer.keystore import ALGORITHMS, KeyStore, generate_key
from fastapps_auth.dev_issuer.running import RunningIssuer
from fastapps_auth.dev_issuer.users import DevUser

__all__ = [
    "ALGORITHMS",
    "DEFAULT_AUDIENCE",
    "Client",
    "DevIssuer",
    "DevUser",
    "IssuedToken",
    "KeyStore",
    "RunningIssuer",
    "generate_key",
]
