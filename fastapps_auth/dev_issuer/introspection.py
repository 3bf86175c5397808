"""Token introspection (RFC 7662): what the dev issuer knows about a token, for a resource server."""

from __future__ import annotations

from typing import Any

from fastapps_auth.dev_issuer.issuer import DevIssuer

#: Claims an active access token's introspection response repeats (RFC 7662 §2.2, RFC 9068, RFC 8693).
CLAIMS = ("scope", "client_id", "sub", "exp", "iat", "nbf", "iss", "aud", "jti", "cnf", "acr", "auth_time", "act")
INACTIVE: dict[str, Any] = {"active": False}


def _access(issuer: DevIssuer, token: str) -> dict[str, Any] | None:
    claims = issuer.active_claims(token)
    if claims is None:
        return None
    body: dict[str, Any] = {"active": True}
    body.update((name, claims[name]) for name in CLAIMS if claims.get(name) is not None)
    body["token_type"] = "DPoP" if isinstance(claims.get("cnf"), dict) else "Bearer"
    return body


def _refresh(issuer: DevIssuer, token: str) -> dict[str, Any] | None:
    record = issuer.tokens.refresh_record(token)
    if record is None:
        return None
    login = record.login
    body: dict[str, Any] = {
        "active": True,
        "token_type": "refresh_token",
        "client_id": login.client_id,
        "sub": login.subject,
        "exp": int(record.expires_at),
        "iss": issuer.issuer_url,
    }
    if login.scopes:
        body["scope"] = " ".join(login.scopes)
    if login.jkt is not None:
        body["cnf"] = {"jkt": login.jkt}  # a public client's refresh token is DPoP-bound (RFC 9449 §5)
    return body


def introspect(issuer: DevIssuer, token: str, hint: str | None = None) -> dict[str, Any]:
    """``{"active": true, ...}`` for a valid, unrevoked token of this issuer, else ``{"active": false}``.

    ``hint`` (``access_token`` or ``refresh_token``) only changes which kind is looked up first.
    """
    kinds = (_refresh, _access) if hint == "refresh_token" else (_access, _refresh)
    for kind in kinds:
        found = kind(issuer, token)
        if found is not None:
            return found
    return dict(INACTIVE)
