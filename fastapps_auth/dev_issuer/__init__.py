"""A local OAuth/OIDC issuer for development and tests (``fastapps-auth dev-issuer``).

Keys (RS256, ES256) live in a local folder; discovery, JWKS and a
``client_credentials`` token endpoint are served on loopback; tokens are RFC 9068
``at+jwt`` with any subject, scopes, claims and lifetime.
"""

from __future__ import annotations

from fastapps_auth.dev_issuer.issuer import DEFAULT_AUDIENCE, Client, DevIssuer
from fastapps_auth.dev_issuer.keystore import ALGORITHMS, KeyStore, generate_key
from fastapps_auth.dev_issuer.running import RunningIssuer

__all__ = ["ALGORITHMS", "DEFAULT_AUDIENCE", "Client", "DevIssuer", "KeyStore", "RunningIssuer", "generate_key"]
