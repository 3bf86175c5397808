"""Exceptions: a token rejection, a transient failure, a configuration or plugin error."""

from __future__ import annotations

from dataclasses import dataclass

#: The longest wait a rejection announces, RFC 9111's bound on delta-seconds: a longer or infinite one is this.
MAX_RETRY_AFTER = float(2**31)


#: The status each error code of RFC 6750 §3.1 (and RFC 9470 §3's step-up code) goes with. Any other code
#: (``rate_limited``, ``temporarily_unavailable``, a plugin's own) may take any 4xx or 5xx status.
RFC_STATUS = {
    "invalid_request": 400,
    "invalid_token": 401,
    "insufficient_scope": 403,
    "insufficient_user_authentication": 401,
}
#: The ``error`` a rejection gets when it names only its status.
DEFAULT_ERROR = {
    400: "invalid_request",
    401: "invalid_token",
    403: "insufficient_scope",
    429: "rate_limited",
    503: "temporarily_unavailable",
}


def retry_seconds(value: float | None) -> float | None:
    """``value`` as a wait a client can be told: within [0, ``MAX_RETRY_AFTER``]; NaN is no hint at all."""
    if value is None or value != value:
        return None
    return min(max(value, 0.0), MAX_RETRY_AFTER)


class Rejected(Exception):
    """A stage's verdict that the token must not pass.

    ``reason`` is a machine code (``expired``, ``bad_signature``, ``user_banned``,
    ``rate_limited``, ...), ``error`` the RFC 6750 error code sent to the client (by default the
    one that goes with ``status``: ``DEFAULT_ERROR``), ``status`` the HTTP status (4xx or 5xx; an
    RFC 6750 code with any status but its own is a ``ValueError``), ``description`` a client-safe sentence (never a
    secret, never the token). ``scope`` names the scopes an ``insufficient_scope``
    rejection needs; ``acr_values`` and ``max_age`` what a 401 ``insufficient_user_authentication``
    (RFC 9470 step-up) asks the client to re-authenticate with; ``retry_after`` is in seconds
    (bounded by ``retry_seconds``: a stage's infinite or NaN wait never reaches a header or a JSON document).
    """

    __slots__ = (
        "acr_values",
        "description",
        "error",
        "max_age",
        "reason",
        "retry_after",
        "scope",
        "stage",
        "status",
        "transient",
    )

    def __init__(
        self,
        reason: str,
        description: str | None = None,
        *,
        error: str | None = None,
        status: int = 401,
        retry_after: float | None = None,
        scope: str | None = None,
        transient: bool = False,
        acr_values: str | None = None,
        max_age: int | None = None,
    ) -> None:
        super().__init__(reason)
        if isinstance(status, bool) or not isinstance(status, int):
            raise TypeError(f"Rejected status must be an int, not {type(status).__name__}")
        if not 400 <= status <= 599:
            raise ValueError(f"Rejected status must be a 4xx or 5xx HTTP status, not {status}")
        if error is None:
            error = DEFAULT_ERROR.get(status)
            if error is None:
                raise ValueError(f"Rejected with status {status} needs an explicit error code")
        elif not isinstance(error, str) or not error:
            raise TypeError("Rejected error must be a non-empty string (an RFC 6750 error code)")
        else:
            paired = RFC_STATUS.get(error)
            if paired is not None and paired != status:
                raise ValueError(
                    f"Rejected error {error!r} goes with HTTP status {paired} (RFC 6750/9470), not {status}"
                )
        self.reason = reason
        self.error = error
        self.status = status
        self.description = description if description is not None else reason.replace("_", " ")
        self.retry_after = retry_seconds(retry_after)
        self.scope = scope
        self.transient = transient
        self.acr_values = acr_values
        self.max_age = max_age
        #: Name of the stage that raised it; the chain fills this in.
        self.stage: str | None = None

    def __repr__(self) -> str:
        return f"Rejected({self.reason!r}, status={self.status}, stage={self.stage!r})"


def insufficient_scope(
    missing: list[str] | tuple[str, ...],
    reason: str = "insufficient_scope",
    *,
    needed: list[str] | tuple[str, ...] | None = None,
) -> Rejected:
    """The 403 rejection for a token that lacks ``missing`` scopes (RFC 6750 §3.1).

    ``scope`` names ``needed`` when given: every scope the operation needs, so a client can get
    them all in one re-authorization; the description names what is ``missing``.
    """
    return Rejected(
        reason,
        f"the token lacks the required scope: {' '.join(missing)}",
        error="insufficient_scope",
        status=403,
        scope=" ".join(needed if needed is not None else missing),
    )


class TransientError(Exception):
    """A failure that says nothing about the token: a service down, slow or erroring.

    Stages may raise it to give a ``retry_after`` hint; any other unexpected
    exception is treated the same way. The chain applies the stage's ``on_error``.
    """

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class ConfigLocation:
    """Where a configuration error is: file, stage index and name, key."""

    source: str | None = None
    stage: str | None = None
    key: str | None = None

    def __str__(self) -> str:
        parts = [p for p in (self.source, self.stage) if p]
        if self.key:
            parts.append(f"key '{self.key}'")
        return ": ".join(parts)


class ConfigError(ValueError):
    """A configuration that cannot build a chain. The message names file, stage and key."""

    def __init__(
        self, message: str, *, source: str | None = None, stage: str | None = None, key: str | None = None
    ) -> None:
        self.location = ConfigLocation(source, stage, key)
        self.detail = message
        where = str(self.location)
        super().__init__(f"{where}: {message}" if where else message)


class PluginError(ConfigError):
    """A plugin that is unknown, or that failed to load (named with its distribution)."""
