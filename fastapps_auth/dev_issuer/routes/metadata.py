"""Discovery: RFC 8414 authorization server metadata (also at the OIDC path) and the JWKS."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fastapps_auth.dev_issuer.issuer import DevIssuer


def routes(issuer: DevIssuer) -> list[Route]:
    async def metadata(request: Request) -> Response:
        return JSONResponse(issuer.metadata())

    async def jwks(request: Request) -> Response:
        # Short cache so a verifier picks a rotation up quickly; it refetches on an unknown kid anyway.
        return JSONResponse(issuer.jwks(), headers={"Cache-Control": "public, max-age=5"})

    return [
        Route("/.well-known/oauth-authorization-server", metadata, methods=["GET"]),
        Route("/.well-known/openid-configuration", metadata, methods=["GET"]),
        Route("/jwks.json", jwks, methods=["GET"]),
    ]
