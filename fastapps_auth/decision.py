"""The outcome of one verification, with its per-stage trace."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from mcp.server.auth.provider import AccessToken

from fastapps_auth.errors import Rejected
from fastapps_auth.request import RequestInfo

#: ``shadow-rejected``: a stage with ``enforce = false`` would have refused; the chain went on.
Outcome = Literal["passed", "rejected", "error-denied", "error-allowed", "shadow-rejected"]


@dataclass(slots=True)
class StageTrace:
    """One stage's part in a decision. ``error`` is an exception class name, never a message."""

    stage: str
    outcome: Outcome
    duration: float
    cache_hit: bool | None = None
    reason: str | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "outcome": self.outcome,
            "duration_ms": round(self.duration * 1000, 3),
            "cache_hit": self.cache_hit,
            "reason": self.reason,
            "error": self.error,
        }


class RateLimitInfo(NamedTuple):
    """The state of the tightest rate-limit rule, for RateLimit-* response headers.

    A named tuple: immutable, and built on every rate-limited request at a third of a
    frozen dataclass's cost.
    """

    limit: int
    remaining: int
    reset: float  # seconds until the window frees capacity
    window: float
    policy: str | None = None  # e.g. "100;w=3600"


class Decision(NamedTuple):
    """Allowed or not, and why. ``status`` is 200 when allowed.

    ``stage`` names the stage that rejected (its ``name`` option, else its plugin
    name). ``failed_open`` lists stages whose transient failure was let through by
    ``on_error = "allow"``. ``principal`` keeps who authenticated even when a later
    stage rejected. Immutable (a named tuple, the cheapest immutable record in
    CPython): observers read it and cannot change it.
    """

    allowed: bool
    access_token: AccessToken | None
    status: int = 200
    stage: str | None = None
    reason: str | None = None
    error: str | None = None
    description: str | None = None
    retry_after: float | None = None
    scope: str | None = None
    trace: tuple[StageTrace, ...] = ()
    failed_open: tuple[str, ...] = ()
    rate_limit: RateLimitInfo | None = None
    fingerprint: str = ""
    request: RequestInfo | None = None
    started_at: float = 0.0
    duration: float = 0.0
    #: The token as authenticated, also when a later stage rejected it (for audit: *who* was
    #: banned or rate limited). Never use it to grant access: that is ``access_token``.
    principal: AccessToken | None = None
    #: (stage, reason) of every rejection a stage with ``enforce = false`` would have made (shadow mode).
    shadowed: tuple[tuple[str, str], ...] = ()
    #: RFC 9470 step-up: the ``acr`` values and the ``max_age`` a 401 ``insufficient_user_authentication`` asks for.
    acr_values: str | None = None
    max_age: int | None = None

    @property
    def subject(self) -> str | None:
        return self.principal.subject if self.principal is not None else None

    def __repr__(self) -> str:
        """Every field, but the access tokens without their raw token (``fingerprint`` identifies it).

        The MCP SDK's ``AccessToken`` shows its ``token``: a decision in a log line or a traceback
        would otherwise print the bearer token.
        """
        fields = (
            f"{n}={_token_repr(v) if isinstance(v, AccessToken) else repr(v)}"
            for n, v in zip(self._fields, self, strict=True)
        )
        return f"Decision({', '.join(fields)})"

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready view (no raw token: only its fingerprint)."""
        at = self.principal
        return {
            "allowed": self.allowed,
            "status": self.status,
            "stage": self.stage,
            "reason": self.reason,
            "error": self.error,
            "description": self.description,
            "retry_after": self.retry_after,
            "scope": self.scope,
            "subject": at.subject if at else None,
            "client_id": at.client_id if at else None,
            "scopes": list(at.scopes) if at else None,
            "expires_at": at.expires_at if at else None,
            "failed_open": list(self.failed_open),
            "shadowed": [list(entry) for entry in self.shadowed],
            "acr_values": self.acr_values,
            "max_age": self.max_age,
            "rate_limit": None
            if self.rate_limit is None
            else {
                "limit": self.rate_limit.limit,
                "remaining": self.rate_limit.remaining,
                "reset": self.rate_limit.reset,
            },
            "token_fingerprint": self.fingerprint,
            "duration_ms": round(self.duration * 1000, 3),
            "trace": [t.as_dict() for t in self.trace],
        }


def _token_repr(at: AccessToken) -> str:
    return (
        f"AccessToken(subject={at.subject!r}, client_id={at.client_id!r}, scopes={at.scopes!r}, "
        f"expires_at={at.expires_at!r}, resource={at.resource!r})"
    )


def decide(
    rejection: Rejected | None,
    *,
    access_token: AccessToken | None,
    trace: tuple[StageTrace, ...],
    failed_open: tuple[str, ...] = (),
    shadowed: tuple[tuple[str, str], ...] = (),
    rate_limit: RateLimitInfo | None = None,
    fingerprint: str = "",
    request: RequestInfo | None = None,
    started_at: float = 0.0,
    duration: float = 0.0,
) -> Decision:
    """The ``Decision`` of a verification: allowed when there is no ``rejection``, else refused as it says.

    ``access_token`` is the token as authenticated: it is granted only when allowed, and kept as the
    ``principal`` either way (who was refused, for audit).
    """
    common: dict[str, Any] = {
        "trace": trace,
        "failed_open": failed_open,
        "shadowed": shadowed,
        "rate_limit": rate_limit,
        "fingerprint": fingerprint,
        "request": request,
        "started_at": started_at,
        "duration": duration,
        "principal": access_token,
    }
    if rejection is None:
        return Decision(allowed=True, access_token=access_token, status=200, **common)
    return Decision(
        allowed=False,
        access_token=None,
        status=rejection.status,
        stage=rejection.stage,
        reason=rejection.reason,
        error=rejection.error,
        description=rejection.description,
        retry_after=rejection.retry_after,
        scope=rejection.scope,
        acr_values=rejection.acr_values,
        max_age=rejection.max_age,
        **common,
    )
