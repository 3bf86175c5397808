"""CORS for an MCP endpoint, as the MCP documentation recommends: explicit origins, methods and headers."""

from __future__ import annotations

from collections.abc import Sequence

from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware


def cors_middleware(
    origins: Sequence[str],
    *,
    methods: Sequence[str] = ("GET", "POST", "DELETE", "OPTIONS"),
    headers: Sequence[str] = (
        "Authorization",
        "Content-Type",
        "Mcp-Session-Id",
        "Mcp-Protocol-Version",
        "Mcp-Method",
        "Mcp-Name",
        "DPoP",
    ),
    expose: Sequence[str] = (
        "Mcp-Session-Id",
        "WWW-Authenticate",
        "DPoP-Nonce",
        "Retry-After",
        "RateLimit-Limit",
        "RateLimit-Remaining",
        "RateLimit-Reset",
    ),
) -> Middleware:
    """A Starlette ``Middleware`` for CORS with explicit origins, methods and headers (no wildcard)."""
    if not origins or any(o == "*" for o in origins):
        raise ValueError("list the allowed origins explicitly (a wildcard would let any site use the token)")
    return Middleware(
        CORSMiddleware,
        allow_origins=list(origins),
        allow_methods=list(methods),
        allow_headers=list(headers),
        expose_headers=list(expose),
        allow_credentials=False,
        max_age=600,
    )
