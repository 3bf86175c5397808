"""The claims of a JWT whose signature verified: checked once each, in one pass, into the ``AccessToken``.

Time claims are numbers within ±2**53 (no booleans, strings, ``null`` or ``1e300``); ``exp`` and
``sub`` are always required, ``iss`` and ``aud`` when the stage expects them. The audience is either
configured (exact strings) or bound to the server's resource URL (RFC 8707, compared canonically).
"""

from __future__ import annotations

from typing import Any

from fastapps_auth.access_token import AccessToken
from fastapps_auth.errors import Rejected
from fastapps_auth.scope_policy import split_scope
from fastapps_auth.stages._audience import AudienceRule

_MISSING: Any = object()
#: Time claims beyond this (either way) are not times: an integer would lose precision as a float,
#: and a float such as 1e300 would make ``expires_at`` a 301-digit integer.
_MAX_INT = 2**53
_CLIENT_CLAIMS = ("client_id", "azp", "cid")
_SCOPE_CLAIMS = ("scope", "scp", "permissions")


class ClaimRules:
    """What a payload must hold; ``check`` returns the ``AccessToken``, its deadline and the scopes it lacks."""

    __slots__ = ("audience", "issuer", "leeway", "required")

    def __init__(
        self,
        *,
        issuer: str | None,
        audience: AudienceRule,
        required_scopes: tuple[str, ...],
        leeway: float,
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self.required = required_scopes
        self.leeway = leeway

    def check(self, token: str, p: dict[str, Any], now: float) -> tuple[AccessToken, float, tuple[str, ...]]:
        """``(access token, exp + leeway, missing required scopes)``; a ``Rejected`` for a claim that fails."""
        leeway = self.leeway
        exp = _time(p, "exp")
        if exp is None:
            raise Rejected("missing_claim", "the token has no exp claim")
        if now >= exp + leeway:
            raise Rejected("expired", "the token has expired")
        nbf = _time(p, "nbf")
        if nbf is not None and now + leeway < nbf:
            raise Rejected("not_yet_valid", "the token is not valid yet")
        iat = _time(p, "iat")
        if iat is not None and iat > now + leeway:
            raise Rejected("issued_in_future", "the token was issued in the future")
        if self.issuer is not None:
            iss = p.get("iss", _MISSING)
            if iss is _MISSING:
                raise Rejected("missing_claim", "the token has no iss claim")
            if iss != self.issuer:
                raise Rejected("wrong_issuer", "the token was issued by another issuer")
        resource = self.audience.match(p) if self.audience.checks else None
        sub = p.get("sub", _MISSING)
        if sub is _MISSING:
            raise Rejected("missing_claim", "the token has no sub claim")
        if type(sub) is not str or not sub:
            raise Rejected("bad_claim", "the token's sub claim is not a non-empty string")
        scopes = _scopes(p)
        client_id = sub
        for name in _CLIENT_CLAIMS:
            value = p.get(name)
            if type(value) is str:
                client_id = value
                break
        missing = tuple(s for s in self.required if s not in scopes) if self.required else ()
        at = AccessToken(
            token=token,
            client_id=client_id,
            scopes=scopes,
            expires_at=int(exp),
            resource=resource,
            subject=sub,
            claims=p,
        )
        return at, exp + leeway, missing


def _time(p: dict[str, Any], name: str) -> float | None:
    """A time claim as a number within ±2**53, ``None`` when absent; ``bad_claim`` for anything else."""
    value = p.get(name, _MISSING)
    if value is _MISSING:
        return None
    t = type(value)
    if (t is int or t is float) and -_MAX_INT <= value <= _MAX_INT:  # not NaN, not infinite, not bool
        return float(value)
    raise Rejected("bad_claim", f"the token's {name} claim is not a valid time (a number of seconds)")


def _scopes(p: dict[str, Any]) -> list[str]:
    """Scopes from ``scope`` (space-delimited, or a list), ``scp`` (list or string), ``permissions`` (Auth0)."""
    out: list[str] = []
    for name in _SCOPE_CLAIMS:
        value = p.get(name)
        if value is None:
            continue
        if type(value) is str:
            out += split_scope(value)
            continue
        if type(value) is list:
            for s in value:
                if type(s) is not str:
                    break
            else:
                out += value
                continue
        raise Rejected("bad_claim", f"the token's {name} claim is not a string or list of strings")
    return list(dict.fromkeys(out)) if len(out) > 1 else out
