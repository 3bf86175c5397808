"""Dynamic client registration (RFC 7591): open, as development servers usually are."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fastapps_auth.dev_issuer.grants import OAuthError
from fastapps_auth.dev_issuer.issuer import DevIssuer
from fastapps_auth.dev_issuer.registration import RegistrationError, client_from_metadata
from fastapps_auth.dev_issuer.routes.common import NO_STORE, oauth_error, read_body
from fastapps_auth.strict_json import Malformed, json_object

MAX_JSON_BYTES = 16 * 1024


def routes(issuer: DevIssuer) -> list[Route]:
    async def register(request: Request) -> Response:
        try:
            if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
                raise OAuthError("invalid_client_metadata", "send the client metadata as application/json")
            try:
                data = json_object(await read_body(request, MAX_JSON_BYTES))
            except Malformed as exc:
                raise OAuthError("invalid_client_metadata", f"the body is not JSON ({exc})") from None
            try:
                client, body = client_from_metadata(data, now=int(issuer.clock.time()))
            except RegistrationError as exc:
                raise OAuthError(exc.error, exc.description) from None
        except OAuthError as exc:
            return oauth_error(exc)
        issuer.registry.register(client)
        return JSONResponse(body, 201, NO_STORE)

    return [Route("/register", register, methods=["POST"])]
