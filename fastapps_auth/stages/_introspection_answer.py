"""An introspection answer (RFC 7662 §2.2) judged once into what every later lookup of the token gets.

``active: false`` is a refusal (``inactive``). An active answer is checked like a JWT's claims:
``exp`` against this server's clock, ``iss`` (when present) against the issuer, ``aud`` against the
shared audience rule, a token that is not an access token (refresh, offline, ID token) is refused,
``scope`` (space-separated, RFC 7662 §2.2: only U+0020 separates) against the required scopes. A
claim of the wrong type (``nbf``, ``iat``, ``auth_time`` and ``cnf`` included, which later stages
read) is not a refusal of the token but a broken answer: ``MalformedAnswer``, which the stage
reports as a transient failure (503), never an acceptance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapps_auth.access_token import AccessToken
from fastapps_auth.errors import Rejected
from fastapps_auth.scope_policy import split_scope
from fastapps_auth.stages._audience import AudienceRule

#: Time claims beyond this (either way) are not times (as in the jwt stage's claims).
_MAX_INT = 2**53

#: ``token_type`` (RFC 7662, lowercased) and Keycloak's ``typ`` values of tokens that are not access tokens.
NOT_ACCESS_TOKEN_TYPES = frozenset(
    {
        "refresh_token",
        "refresh",
        "urn:ietf:params:oauth:token-type:refresh_token",
        "offline",
        "id_token",
        "id",
        "urn:ietf:params:oauth:token-type:id_token",
    }
)

#: Time claims read by later stages (``auth_time`` by step-up rules): numbers, or the answer is broken.
_OTHER_TIMES = ("nbf", "iat", "auth_time")


class MalformedAnswer(Exception):
    """The endpoint answered something that is not a well-formed RFC 7662 response."""


@dataclass(frozen=True, slots=True)
class Answer:
    """What a lookup of a token resolves to, until ``until`` (wall clock).

    Accepted: ``reason`` is ``None`` and ``access_token`` is set (``None`` in check mode, where the
    earlier stage's token stands); ``missing`` lists the required scopes it lacks. Refused:
    ``reason`` and ``description`` say why.
    """

    until: float
    access_token: AccessToken | None = None
    missing: tuple[str, ...] = ()
    reason: str | None = None
    description: str = ""


class AnswerRules:
    """How answers are judged: the issuer, the audience rule, the required scopes, the cache lifetimes."""

    __slots__ = ("audience", "check_only", "issuer", "negative_ttl", "required", "ttl")

    def __init__(
        self,
        *,
        issuer: str | None,
        audience: AudienceRule,
        required_scopes: tuple[str, ...],
        ttl: float,
        negative_ttl: float,
        check_only: bool,
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self.required = required_scopes
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.check_only = check_only

    def judge(self, token: str, data: dict[str, Any], now: float) -> Answer:
        """The ``Answer`` for the endpoint's ``data`` about ``token`` at ``now``; ``MalformedAnswer`` if broken."""
        if data.get("active") is not True:
            return Answer(now + self.negative_ttl, reason="inactive", description="the token is not active")
        exp = _time(data, "exp")
        until = now + self.ttl if exp is None else min(exp, now + self.ttl)
        token_type = _string(data, "token_type")
        if self.check_only:
            return Answer(until)  # a verified JWT that its issuer still holds active
        for name in _OTHER_TIMES:
            _time(data, name)
        _check_cnf(data)
        if exp is not None and now >= exp:
            return Answer(until, reason="expired", description="the token has expired")
        typ = data.get("typ")
        if (token_type is not None and token_type.lower() in NOT_ACCESS_TOKEN_TYPES) or (
            type(typ) is str and typ.lower() in NOT_ACCESS_TOKEN_TYPES
        ):
            return Answer(until, reason="wrong_token_type", description="the token is not an access token")
        iss = _string(data, "iss")
        if iss is not None and self.issuer is not None and iss != self.issuer:
            return Answer(until, reason="wrong_issuer", description="the token was issued by another issuer")
        resource = None
        aud = data.get("aud")
        if aud is not None and not (type(aud) is str or (type(aud) is list and all(type(a) is str for a in aud))):
            raise MalformedAnswer("'aud' is not a string or list of strings")  # checked or not: later stages read it
        if self.audience.checks:
            if aud is None:
                return Answer(until, reason="missing_claim", description="the token has no audience")
            try:
                resource = self.audience.match(data)
            except Rejected as r:
                return Answer(until, reason=r.reason, description=r.description)
        sub = _string(data, "sub")
        if sub == "":
            raise MalformedAnswer("'sub' is empty")  # no one's name: not "no subject" either
        client_id = _string(data, "client_id") or sub
        if not client_id:
            return Answer(until, reason="missing_claim", description="the answer names neither client_id nor sub")
        scope = _string(data, "scope")
        scopes = list(dict.fromkeys(split_scope(scope))) if scope else []
        missing = tuple(s for s in self.required if s not in scopes)
        at = AccessToken(
            token=token,
            client_id=client_id,
            scopes=scopes,
            expires_at=None if exp is None else int(exp),
            resource=resource,
            subject=sub,
            claims=data,
        )
        return Answer(until, access_token=at, missing=missing)


def _time(data: dict[str, Any], name: str) -> float | None:
    value = data.get(name)
    if value is None:
        return None
    t = type(value)
    if (t is int or t is float) and -_MAX_INT <= value <= _MAX_INT:  # not NaN, not infinite, not bool
        return float(value)
    raise MalformedAnswer(f"{name!r} is not a number of seconds")


def _string(data: dict[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is None or type(value) is str:
        return value
    raise MalformedAnswer(f"{name!r} is not a string")


def _check_cnf(data: dict[str, Any]) -> None:
    """``cnf`` (RFC 7800), when present, is an object whose ``jkt`` (RFC 9449), when present, is a string."""
    cnf = data.get("cnf")
    if cnf is None:
        return
    if type(cnf) is not dict or type(cnf.get("jkt", "")) is not str:
        raise MalformedAnswer("'cnf' is not an object with a string 'jkt'")
