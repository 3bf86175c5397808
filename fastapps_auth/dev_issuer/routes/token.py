"""The token endpoint: every grant, behind client authentication (RFC 6749 §3.2)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fastapps_auth.dev_issuer.grants import OAuthError, grant
from fastapps_auth.dev_issuer.issuer import DevIssuer
from fastapps_auth.dev_issuer.routes.common import NO_STORE, authenticate, oauth_error, read_form


def routes(issuer: DevIssuer) -> list[Route]:
    async def token(request: Request) -> Response:
        try:
            params = await read_form(request)
            client = await authenticate(issuer, request, params)
            body = grant(issuer, client, params)
        except OAuthError as exc:
            return oauth_error(exc)
        return JSONResponse(body, headers=NO_STORE)

    return [Route("/token", token, methods=["POST"])]
