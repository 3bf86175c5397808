"""Compatibility module: the ASGI integration now lives in ``fastapps_auth.integrations.asgi``.

Every public name importable from here before keeps working.
"""

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fastapps_auth.integrations.asgi import (
    DEFAULT_MAX_BODY,
    STATE_KEY,
    ChainAuthMiddleware,
    RequestDecision,
    RequestScopedVerifier,
    bearer_token,
    challenge,
    client_ip,
    cors_middleware,
    current_access_token,
    current_decision,
    error_response,
    parse_networks,
    rate_limit_headers,
    rpc_target,
)

__all__ = [
    "DEFAULT_MAX_BODY",
    "STATE_KEY",
    "ASGIApp",
    "ChainAuthMiddleware",
    "Message",
    "Receive",
    "RequestDecision",
    "RequestScopedVerifier",
    "Scope",
    "Send",
    "bearer_token",
    "challenge",
    "client_ip",
    "cors_middleware",
    "current_access_token",
    "current_decision",
    "error_response",
    "parse_networks",
    "rate_limit_headers",
    "rpc_target",
]
