"""The ASGI integration: ``ChainAuthMiddleware`` and what it is made of.

- ``middleware``: the middleware (app, chain, response hook, pass-through for other scopes).
- ``paths``: which requests it checks (protected and exempt paths, CORS preflights).
- ``refusals``: what it refuses itself, as decisions like the chain's.
- ``responses``: RFC 6750 challenges, RateLimit headers, JSON and JSON-RPC error bodies.
- ``client``: the client address (trusted proxies, X-Forwarded-For).
- ``body``: reading a JSON-RPC body within limits, and what it calls.
- ``tools``: resolving a called tool's name to the host's own.
- ``websocket``: websocket messages checked one by one.
- ``context``: the request's decision for code behind the middleware, and ``RequestScopedVerifier``.
- ``cors``: CORS for an MCP endpoint.
"""

from fastapps_auth.integrations.asgi.body import DEFAULT_MAX_BODY, RpcTarget, rpc_message, rpc_target
from fastapps_auth.integrations.asgi.client import client_ip, parse_networks
from fastapps_auth.integrations.asgi.context import (
    STATE_KEY,
    RequestDecision,
    RequestScopedVerifier,
    current_access_token,
    current_decision,
)
from fastapps_auth.integrations.asgi.cors import cors_middleware
from fastapps_auth.integrations.asgi.middleware import ChainAuthMiddleware, bearer_token, with_required_scopes
from fastapps_auth.integrations.asgi.responses import (
    Challenge,
    bearer,
    challenge,
    error_response,
    rate_limit_headers,
    send_response,
)
from fastapps_auth.integrations.asgi.tools import ToolResolver, exact_names

__all__ = [
    "DEFAULT_MAX_BODY",
    "STATE_KEY",
    "ChainAuthMiddleware",
    "Challenge",
    "RequestDecision",
    "RequestScopedVerifier",
    "RpcTarget",
    "ToolResolver",
    "bearer",
    "bearer_token",
    "challenge",
    "client_ip",
    "cors_middleware",
    "current_access_token",
    "current_decision",
    "error_response",
    "exact_names",
    "parse_networks",
    "rate_limit_headers",
    "rpc_message",
    "rpc_target",
    "send_response",
    "with_required_scopes",
]
