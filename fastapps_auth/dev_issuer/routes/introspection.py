"""Introspection (RFC 7662, confidential clients) and revocation (RFC 7009), which introspection reflects."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fastapps_auth.dev_issuer.grants import OAuthError
from fastapps_auth.dev_issuer.introspection import introspect
from fastapps_auth.dev_issuer.issuer import DevIssuer
from fastapps_auth.dev_issuer.routes.common import NO_STORE, authenticate, oauth_error, read_form
from fastapps_auth.dev_issuer.tokens import StoreFull


def routes(issuer: DevIssuer) -> list[Route]:
    async def introspection(request: Request) -> Response:
        try:
            params = await read_form(request)
            client = await authenticate(issuer, request, params)
            if client.public:
                raise OAuthError("invalid_client", "introspection needs a client with a secret", 401)
            token = params.get("token")
            if not token:
                raise OAuthError("invalid_request", "token is required")
        except OAuthError as exc:
            return oauth_error(exc)
        return JSONResponse(introspect(issuer, token, params.get("token_type_hint")), headers=NO_STORE)

    async def revocation(request: Request) -> Response:
        try:
            params = await read_form(request)
            client = await authenticate(issuer, request, params)
            token = params.get("token")
            if not token:
                raise OAuthError("invalid_request", "token is required")
            try:
                issuer.revoke(token, client_id=client.client_id)  # an unknown token is no error (RFC 7009 §2.2)
            except PermissionError as exc:
                raise OAuthError("unauthorized_client", str(exc)) from None
            except StoreFull as exc:
                raise OAuthError("temporarily_unavailable", str(exc), 503) from None
        except OAuthError as exc:
            return oauth_error(exc)
        return Response(status_code=200, headers=NO_STORE)

    return [
        Route("/introspect", introspection, methods=["POST"]),
        Route("/revoke", revocation, methods=["POST"]),
    ]
