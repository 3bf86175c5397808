"""What a downstream call can fail with: one exception class, with the authorization server's error code."""

from __future__ import annotations

#: ``DownstreamError.error`` codes of this library's own (any other code is the authorization server's).
TIMEOUT = "timeout"
UNREACHABLE = "unreachable"
INVALID_RESPONSE = "invalid_response"
DISCOVERY_FAILED = "discovery_failed"
NO_REQUEST_TOKEN = "no_request_token"
NOT_CONFIGURED = "not_configured"
SUBJECT_EXPIRED = "subject_expired"
NO_SUBJECT = "no_subject"


class DownstreamError(Exception):
    """A token for another service could not be had.

    ``error`` is the authorization server's RFC 6749 §5.2 code (``invalid_grant``, ``invalid_target``,
    ``invalid_scope``, ``unauthorized_client``, ``invalid_client``...) when it answered one, else one
    of this module's (``timeout``, ``unreachable``, ``invalid_response``, ``discovery_failed``,
    ``no_request_token``, ``not_configured``, ``subject_expired``, ``no_subject``). ``description`` is
    safe to log (never a token or a secret); ``status`` the HTTP status of the answer, if any;
    ``transient`` says whether trying again later may succeed (a timeout, an unreachable server, a 5xx,
    ``temporarily_unavailable``).
    """

    def __init__(self, error: str, description: str, *, status: int | None = None, transient: bool = False) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.status = status
        self.transient = transient


class NoRequestToken(DownstreamError):
    """``exchange()``/``mint_internal()`` outside a request the middleware let through (no user token to act for)."""

    def __init__(self) -> None:
        super().__init__(
            NO_REQUEST_TOKEN,
            "no access token for this request: call it inside a tool (code running under the fastapps-auth "
            "middleware for an allowed request), or pass subject_token=",
        )
