"""The dev issuer over HTTP: the routes of each job in ``routes/``, with CORS for browser-based clients."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware

from fastapps_auth.dev_issuer.issuer import DevIssuer
from fastapps_auth.dev_issuer.routes import authorize, introspection, metadata, registration, token


def create_app(issuer: DevIssuer) -> Starlette:
    """The ASGI app serving ``issuer``: metadata, JWKS, authorize/login, token, register, introspect, revoke.

    Any origin may call it from a browser (the MCP Inspector runs its OAuth flow in one); no cookies
    are involved, so this opens nothing a script on the same machine could not do anyway.
    """
    cors = Middleware(
        CORSMiddleware,
        allow_origins=["*"],
        allow_methods=["GET", "POST"],
        allow_headers=["authorization", "content-type", "dpop", "mcp-protocol-version"],
        expose_headers=["dpop-nonce"],
    )
    return Starlette(
        routes=[
            *metadata.routes(issuer),
            *authorize.routes(issuer),
            *token.routes(issuer),
            *registration.routes(issuer),
            *introspection.routes(issuer),
        ],
        middleware=[cors],
    )
