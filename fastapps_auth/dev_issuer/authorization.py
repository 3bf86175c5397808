"""The authorization request (RFC 6749 §4.1 with PKCE, RFC 7636, and resource indicators, RFC 8707).

Checks in the order RFC 6749 §4.1.2.1 asks: a bad ``client_id`` or ``redirect_uri`` is shown to
the user and never redirected (an open redirector otherwise); every later error goes back to the
client's redirect URI with ``state`` and ``iss`` (RFC 9207).
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

from fastapps_auth.dev_issuer.clients import AUTHORIZATION_CODE, Client
from fastapps_auth.dev_issuer.issuer import DevIssuer
from fastapps_auth.dev_issuer.registration import RegistrationError
from fastapps_auth.dev_issuer.tokens import Login, PendingCode
from fastapps_auth.dev_issuer.users import ACR_VALUES, DEFAULT_ACR, DevUser

#: Parameters that may be repeated (RFC 8707 §2, RFC 8693 §2.1: one per target); any other is an error.
MULTI = frozenset({"resource", "audience"})
CHALLENGE = re.compile(r"[A-Za-z0-9_-]{43}")
VERIFIER = re.compile(r"[A-Za-z0-9._~-]{43,128}")


class AuthorizationError(Exception):
    """A refused authorization request; with a ``redirect_uri`` the client is told, else the user is."""

    def __init__(self, error: str, description: str, *, redirect_uri: str | None = None, state: str | None = None):
        super().__init__(description)
        self.error = error
        self.description = description
        self.redirect_uri = redirect_uri
        self.state = state


@dataclass(frozen=True, slots=True)
class AuthorizationRequest:
    """A checked authorization request, waiting for a user."""

    client: Client
    redirect_uri: str  # where the answer goes
    redirect_uri_sent: str | None  # what the request said (the token request must say the same)
    state: str | None
    scopes: tuple[str, ...]
    resources: tuple[str, ...]
    code_challenge: str
    login_hint: str | None = None
    acr_values: tuple[str, ...] = ()
    prompt: str | None = None
    nonce: str | None = None
    dpop_jkt: str | None = None  # RFC 9449 §10: the code is redeemed only with a proof by this key


def s256(verifier: str) -> str:
    """The PKCE S256 challenge of ``verifier``: base64url(SHA-256), no padding."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def check_resource(value: str) -> str:
    """An RFC 8707 resource indicator: an absolute URI without a fragment."""
    parts = urlsplit(value)
    if not parts.scheme or not parts.netloc or "#" in value or len(value) > 2000:
        raise ValueError(f"resource must be an absolute URI without a fragment: {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class Params:
    """Request parameters: each at most once, except those of ``MULTI`` (RFC 6749 §3.1)."""

    values: dict[str, str]
    lists: dict[str, list[str]]

    @classmethod
    def parse(cls, pairs: Sequence[tuple[str, str]]) -> Params:
        """``ValueError`` when a parameter other than ``resource``/``audience`` is repeated."""
        values: dict[str, str] = {}
        lists: dict[str, list[str]] = {}
        for name, value in pairs:
            if name in MULTI:
                lists.setdefault(name, []).append(value)
            elif name in values:
                raise ValueError(f"{name} is given more than once")
            else:
                values[name] = value
        return cls(values, lists)

    def get(self, name: str, default: str | None = None) -> str | None:
        return self.values.get(name, default)

    def all(self, name: str) -> list[str]:
        return self.lists.get(name, [])


async def check_request(issuer: DevIssuer, pairs: Sequence[tuple[str, str]]) -> AuthorizationRequest:
    """The authorization request in ``pairs`` (the query), or ``AuthorizationError``."""
    try:
        params = Params.parse(pairs)
    except ValueError as exc:
        raise AuthorizationError("invalid_request", str(exc)) from None
    client_id = params.get("client_id")
    if not client_id:
        raise AuthorizationError("invalid_request", "client_id is required")
    try:
        client = await issuer.find_client(client_id)
    except RegistrationError as exc:
        raise AuthorizationError(exc.error, exc.description) from None
    if client is None:
        raise AuthorizationError("invalid_request", "unknown client_id (register it first, or use a metadata URL)")
    sent = params.get("redirect_uri")
    redirect = client.redirect_for(sent)
    if redirect is None:
        raise AuthorizationError("invalid_request", "redirect_uri is missing or not registered for this client")
    state = params.get("state")

    def refuse(error: str, description: str) -> AuthorizationError:
        return AuthorizationError(error, description, redirect_uri=redirect, state=state)

    if AUTHORIZATION_CODE not in client.grant_types:
        raise refuse("unauthorized_client", "this client is not registered for the authorization_code grant")
    if params.get("response_type") != "code":
        raise refuse("unsupported_response_type", 'response_type must be "code"')
    challenge = params.get("code_challenge")
    if not challenge:
        raise refuse("invalid_request", "code_challenge is required (PKCE, S256)")
    if params.get("code_challenge_method") != "S256":
        raise refuse("invalid_request", "code_challenge_method must be S256 (plain or none is refused)")
    if not CHALLENGE.fullmatch(challenge):
        raise refuse("invalid_request", "code_challenge must be the 43-character base64url SHA-256 of the verifier")
    scopes = tuple(dict.fromkeys((params.get("scope") or "").split()))
    extra = client.allows_scopes(scopes)
    if extra:
        raise refuse("invalid_scope", f"scope not allowed for this client: {' '.join(extra)}")
    try:
        checked = tuple(check_resource(r) for r in params.all("resource"))
    except ValueError as exc:
        raise refuse("invalid_target", str(exc)) from None
    dpop_jkt = params.get("dpop_jkt") or None
    if dpop_jkt is not None and not CHALLENGE.fullmatch(dpop_jkt):
        raise refuse("invalid_request", "dpop_jkt must be the 43-character base64url SHA-256 thumbprint of a key")
    return AuthorizationRequest(
        client,
        redirect,
        sent,
        state,
        scopes,
        checked,
        challenge,
        login_hint=params.get("login_hint") or None,
        acr_values=tuple((params.get("acr_values") or "").split()),
        prompt=params.get("prompt") or None,
        nonce=params.get("nonce") or None,
        dpop_jkt=dpop_jkt,
    )


def user_for(issuer: DevIssuer, request: AuthorizationRequest) -> DevUser | None:
    """Who logs in without the login page (``login_hint``, or ``auto_login``); ``None``: show the page."""
    if request.login_hint is not None:
        user = issuer.users.get(request.login_hint)
        if user is None:
            raise AuthorizationError(
                "access_denied",
                f"login_hint names no dev user (users: {', '.join(issuer.users)})",
                redirect_uri=request.redirect_uri,
                state=request.state,
            )
        return user
    if issuer.auto_login is not None:
        return issuer.users[issuer.auto_login]
    if request.prompt == "none":
        raise AuthorizationError(
            "login_required", "prompt=none, and no login_hint", redirect_uri=request.redirect_uri, state=request.state
        )
    return None


def acr_for(request: AuthorizationRequest, chosen: str | None = None) -> str:
    """The login's ``acr``: what the user picked, else the first requested value the issuer knows."""
    if chosen in ACR_VALUES:
        return str(chosen)
    return next((a for a in request.acr_values if a in ACR_VALUES), DEFAULT_ACR)


def approve(issuer: DevIssuer, request: AuthorizationRequest, user: DevUser, acr: str) -> str:
    """Log ``user`` in for ``request``: a single-use code, and the URL that hands it to the client."""
    now = issuer.clock.time()
    login = Login(
        request.client.client_id,
        user.id,
        tuple(user.grant(request.scopes)),
        request.resources,
        acr,
        int(now),
        request.nonce,
        jkt=request.dpop_jkt,
    )
    code = secrets.token_urlsafe(32)
    issuer.tokens.put_code(
        code, PendingCode(login, request.redirect_uri_sent, request.code_challenge, now + issuer.code_lifetime)
    )
    return redirect_to(request.redirect_uri, {"code": code, "state": request.state, "iss": issuer.issuer_url})


def redirect_to(uri: str, params: dict[str, str | None]) -> str:
    """``uri`` with ``params`` added to its query (``None`` values left out)."""
    query = urlencode({k: v for k, v in params.items() if v is not None})
    return f"{uri}{'&' if urlsplit(uri).query else '?'}{query}"
