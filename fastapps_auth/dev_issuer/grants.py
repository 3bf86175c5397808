"""The token endpoint's grants: authorization code (with PKCE), refresh token (rotated), client
credentials, and token exchange (RFC 8693). HTTP-free: each takes the authenticated client, the
request parameters and the thumbprint of the request's checked DPoP proof key (``jkt``, ``None``
without a proof), and returns the JSON body of the answer or raises ``OAuthError``.

With a ``jkt`` the access token is DPoP-bound (``cnf.jkt``, ``token_type: DPoP``), and so is a
refresh token issued to a public client (RFC 9449 §5: a confidential client's refresh tokens are
already bound to its credentials); a bound refresh token is refused without a proof by its key.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from fastapps_auth.dev_issuer.authorization import VERIFIER, Params, check_resource, s256
from fastapps_auth.dev_issuer.clients import (
    AUTHORIZATION_CODE,
    CLIENT_CREDENTIALS,
    REFRESH_TOKEN,
    TOKEN_EXCHANGE,
    Client,
)
from fastapps_auth.dev_issuer.issuer import DevIssuer, IssuedToken
from fastapps_auth.dev_issuer.tokens import Login, StoreFull

ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"


class OAuthError(Exception):
    """An RFC 6749 §5.2 error: code, description, HTTP status (and headers to send with it)."""

    def __init__(
        self, error: str, description: str, status: int = 400, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status
        self.headers = dict(headers or {})


def _required(params: Params, name: str) -> str:
    value = params.get(name)
    if not value:
        raise OAuthError("invalid_request", f"{name} is required")
    return value


def _scopes(params: Params) -> list[str] | None:
    value = params.get("scope")
    return list(dict.fromkeys(value.split())) if value is not None else None


def _resources(params: Params, granted: Sequence[str] = ()) -> tuple[str, ...]:
    """The targets of this token: the ``resource`` parameters (a subset of ``granted``, if any were)."""
    try:
        requested = tuple(check_resource(r) for r in params.all("resource"))
    except ValueError as exc:
        raise OAuthError("invalid_target", str(exc)) from None
    if not requested:
        return tuple(granted)
    outside = [r for r in requested if granted and r not in granted]
    if outside:
        raise OAuthError("invalid_target", f"resource was not part of the authorization: {outside[0]}")
    return requested


def _audience(issuer: DevIssuer, targets: Sequence[str]) -> str | list[str]:
    """The ``aud`` claim: the resource (RFC 8707), several as a list, or the issuer's default audience."""
    if not targets:
        return issuer.audience
    return targets[0] if len(targets) == 1 else list(targets)


def _body(issued: IssuedToken, scopes: Sequence[str]) -> dict[str, Any]:
    exp, iat = issued.claims.get("exp"), issued.claims.get("iat")
    body: dict[str, Any] = {"access_token": issued.token, "token_type": issued.token_type}
    if isinstance(exp, int) and isinstance(iat, int):
        body["expires_in"] = max(0, exp - iat)
    if scopes:
        body["scope"] = " ".join(scopes)  # always said, since it may differ from the request (RFC 6749 §5.1)
    return body


def _login_claims(login: Login) -> dict[str, Any]:
    return {"acr": login.acr, "auth_time": login.auth_time}


def _cnf(jkt: str | None) -> dict[str, str] | None:
    """The RFC 7800 confirmation claim of a DPoP-bound token (RFC 9449 §6)."""
    return {"jkt": jkt} if jkt is not None else None


def _for_login(
    issuer: DevIssuer,
    client: Client,
    login: Login,
    scopes: Sequence[str],
    targets: Sequence[str],
    *,
    id_token: bool,
    jkt: str | None,
) -> dict[str, Any]:
    """Access token, rotated refresh token and (for ``openid``) ID token for an authorization."""
    issued = issuer.issue(
        login.subject,
        scopes=scopes,
        audience=_audience(issuer, targets),
        client_id=client.client_id,
        claims=_login_claims(login),
        family=login.family,
        confirmation=_cnf(jkt),
    )
    body = _body(issued, scopes)
    if REFRESH_TOKEN in client.grant_types:
        refresh = secrets.token_urlsafe(32)
        bound = replace(login, jkt=jkt if client.public else None)
        issuer.tokens.put_refresh(refresh, bound, issuer.clock.time() + issuer.refresh_lifetime)
        body["refresh_token"] = refresh
    if id_token and "openid" in scopes:
        now = int(issuer.clock.time())
        claims = {
            "iss": issuer.issuer_url,
            "sub": login.subject,
            "aud": client.client_id,
            "iat": now,
            "exp": now + int(issuer.lifetime),
            **{k: v for k, v in (*_login_claims(login).items(), ("nonce", login.nonce)) if v is not None},
        }
        body["id_token"] = issuer.sign(claims, typ="JWT")
    return body


def authorization_code(issuer: DevIssuer, client: Client, params: Params, jkt: str | None) -> dict[str, Any]:
    """RFC 6749 §4.1.3 with PKCE (RFC 7636 §4.6): the code once, for its client, redirect URI and verifier."""
    pending = issuer.tokens.take_code(_required(params, "code"))
    if pending is None:
        raise OAuthError("invalid_grant", "the code is unknown, expired or already used")
    login = pending.login
    if login.client_id != client.client_id:
        raise OAuthError("invalid_grant", "the code was issued to another client")
    if pending.redirect_uri is not None and params.get("redirect_uri") != pending.redirect_uri:
        raise OAuthError("invalid_grant", "redirect_uri is not the one of the authorization request")
    verifier = params.get("code_verifier") or ""
    if not VERIFIER.fullmatch(verifier):
        raise OAuthError("invalid_grant", "code_verifier is missing or malformed (43 to 128 characters)")
    if not hmac.compare_digest(s256(verifier), pending.code_challenge):
        raise OAuthError("invalid_grant", "code_verifier does not match the code_challenge")
    if login.jkt is not None and jkt != login.jkt:  # dpop_jkt of the authorization request (RFC 9449 §10)
        raise OAuthError("invalid_dpop_proof", "the code is bound to another DPoP key (dpop_jkt)")
    targets = _resources(params, login.resources)
    return _for_login(issuer, client, login, login.scopes, targets, id_token=True, jkt=jkt)


def refresh_token(issuer: DevIssuer, client: Client, params: Params, jkt: str | None) -> dict[str, Any]:
    """RFC 6749 §6 with rotation: each refresh token works once, and a reused one revokes its family."""
    token = _required(params, "refresh_token")
    spent = OAuthError("invalid_grant", "the refresh token is unknown, expired, revoked or already used")
    record = issuer.tokens.refresh_record(token)
    if record is None:
        issuer.tokens.use_refresh(token)  # presenting a used one revokes its family
        raise spent
    if record.login.client_id != client.client_id:
        raise OAuthError("invalid_grant", "the refresh token was issued to another client")
    scopes = _scopes(params)  # checked before the token is spent, so a bad request does not cost it
    if scopes is not None and set(scopes) - set(record.login.scopes):
        raise OAuthError("invalid_scope", "a refresh cannot add scopes to the authorization")
    targets = _resources(params, record.login.resources)
    bound = record.login.jkt
    if bound is not None and jkt is None:  # checked before the token is spent, as above
        raise OAuthError("invalid_dpop_proof", "the refresh token is DPoP-bound: send a DPoP proof signed by its key")
    if bound is not None and jkt != bound:
        raise OAuthError("invalid_grant", "the refresh token is bound to another DPoP key")
    login = issuer.tokens.use_refresh(token)
    if login is None:
        raise spent
    granted = login.scopes if scopes is None else scopes
    return _for_login(issuer, client, login, granted, targets, id_token=False, jkt=jkt)


def client_credentials(issuer: DevIssuer, client: Client, params: Params, jkt: str | None) -> dict[str, Any]:
    """RFC 6749 §4.4: a token for the client itself; ``resource`` or ``audience`` set its ``aud``."""
    scopes = _scopes(params) or []
    extra = client.allows_scopes(scopes)
    if extra:
        raise OAuthError("invalid_scope", f"scope not allowed for this client: {' '.join(extra)}")
    targets = _resources(params) + tuple(params.all("audience"))
    issued = issuer.issue(
        client.client_id,
        scopes=scopes,
        audience=_audience(issuer, targets),
        client_id=client.client_id,
        confirmation=_cnf(jkt),
    )
    return _body(issued, scopes)


def token_exchange(issuer: DevIssuer, client: Client, params: Params, jkt: str | None) -> dict[str, Any]:
    """RFC 8693: a token for another audience, on behalf of the subject of an access token of this issuer.

    With a proof the new token is bound to the requesting client's key, not the subject token's.
    """
    subject_token = _required(params, "subject_token")
    if _required(params, "subject_token_type") not in (ACCESS_TOKEN_TYPE, JWT_TOKEN_TYPE):
        raise OAuthError("invalid_request", f"subject_token_type must be {ACCESS_TOKEN_TYPE}")
    if params.get("actor_token") is not None:
        raise OAuthError("invalid_request", "actor_token is not supported by the dev issuer")
    if params.get("requested_token_type") not in (None, ACCESS_TOKEN_TYPE):
        raise OAuthError("invalid_request", f"the only requested_token_type is {ACCESS_TOKEN_TYPE}")
    subject = issuer.active_claims(subject_token)
    if subject is None or not isinstance(subject.get("sub"), str):
        raise OAuthError("invalid_grant", "subject_token is not an active access token of this issuer")
    held = str(subject.get("scope") or "").split()
    scopes = _scopes(params)
    scopes = held if scopes is None else scopes
    user = issuer.users.get(subject["sub"])
    extra = client.allows_scopes(scopes) or ([s for s in scopes if s not in user.grant(scopes)] if user else [])
    if extra:
        raise OAuthError("invalid_scope", f"scope not allowed: {' '.join(extra)}")
    targets = _resources(params) + tuple(params.all("audience"))
    now = issuer.clock.time()
    exp = subject.get("exp")
    lifetime = min(issuer.lifetime, exp - now) if isinstance(exp, int | float) else issuer.lifetime
    actor: dict[str, Any] = {"sub": client.client_id}
    if isinstance(subject.get("act"), dict):
        actor["act"] = subject["act"]  # RFC 8693 §4.1: the chain of delegation, most recent actor outermost
    claims = {"act": actor, "acr": subject.get("acr"), "auth_time": subject.get("auth_time")}
    issued = issuer.issue(
        subject["sub"],
        scopes=scopes,
        audience=_audience(issuer, targets),
        client_id=client.client_id,
        lifetime=lifetime,
        claims=claims,
        confirmation=_cnf(jkt),
    )
    return {**_body(issued, scopes), "issued_token_type": ACCESS_TOKEN_TYPE}


Grant = Callable[[DevIssuer, Client, Params, str | None], dict[str, Any]]
GRANTS: Mapping[str, tuple[Grant, bool]] = {
    # grant type -> (handler, whether a public client may use it)
    AUTHORIZATION_CODE: (authorization_code, True),
    REFRESH_TOKEN: (refresh_token, True),
    CLIENT_CREDENTIALS: (client_credentials, False),
    TOKEN_EXCHANGE: (token_exchange, False),
}


def grant(issuer: DevIssuer, client: Client, params: Params, jkt: str | None = None) -> dict[str, Any]:
    """Run the grant ``params["grant_type"]`` names for ``client``; ``jkt``: the DPoP key to bind tokens to."""
    grant_type = params.get("grant_type") or ""
    if grant_type not in GRANTS:
        raise OAuthError("unsupported_grant_type", f"grant_type must be one of: {', '.join(GRANTS)}")
    handler, public_ok = GRANTS[grant_type]
    if grant_type not in client.grant_types or (client.public and not public_ok):
        raise OAuthError("unauthorized_client", f"this client may not use the {grant_type} grant")
    try:
        return handler(issuer, client, params, jkt)
    except StoreFull as exc:
        raise OAuthError("temporarily_unavailable", str(exc), 503) from None
