"""The dev issuer over HTTP: discovery, JWKS and a ``client_credentials`` token endpoint (Starlette)."""

from __future__ import annotations

import base64
import binascii
from typing import Any
from urllib.parse import unquote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fastapps_auth.dev_issuer.issuer import DevIssuer

#: A token request is a few form fields; anything larger is refused before parsing.
MAX_FORM_BYTES = 8 * 1024

_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _oauth_error(error: str, description: str, status: int = 400, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse(
        {"error": error, "error_description": description}, status_code=status, headers={**_NO_STORE, **(headers or {})}
    )


def _basic_credentials(header: str) -> tuple[str, str] | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    client_id, sep, secret = decoded.partition(":")
    if not sep:
        return None
    return unquote(client_id), unquote(secret)


def create_app(issuer: DevIssuer) -> Starlette:
    """The ASGI app serving ``issuer``'s metadata, keys and token endpoint."""

    async def metadata(request: Request) -> Response:
        return JSONResponse(issuer.metadata())

    async def jwks(request: Request) -> Response:
        # Short cache so a verifier picks a rotation up quickly; it refetches on an unknown kid anyway.
        return JSONResponse(issuer.jwks(), headers={"Cache-Control": "public, max-age=5"})

    async def token(request: Request) -> Response:
        length = request.headers.get("content-length")
        if length is None or not length.isdigit() or int(length) > MAX_FORM_BYTES:
            return _oauth_error("invalid_request", f"the request body must be at most {MAX_FORM_BYTES} bytes")
        if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            return _oauth_error("invalid_request", "use application/x-www-form-urlencoded")
        form = await request.form()
        fields: dict[str, Any] = {k: v for k, v in form.items() if isinstance(v, str)}
        creds = _basic_credentials(request.headers.get("authorization", ""))
        if creds is None and "client_id" in fields:
            creds = (fields["client_id"], fields.get("client_secret", ""))
        client = issuer.authenticate_client(*creds) if creds is not None else None
        if client is None:
            return _oauth_error(
                "invalid_client", "client authentication failed", 401, {"WWW-Authenticate": 'Basic realm="dev-issuer"'}
            )
        if fields.get("grant_type") != "client_credentials":
            return _oauth_error("unsupported_grant_type", "this issuer supports only client_credentials")
        scopes = fields.get("scope", "").split()
        if client.scopes is not None:
            extra = sorted(set(scopes) - client.scopes)
            if extra:
                return _oauth_error("invalid_scope", f"scope not allowed for this client: {' '.join(extra)}")
        audience = fields.get("resource") or fields.get("audience") or None
        lifetime = int(issuer.lifetime)
        access_token = issuer.mint(
            client.client_id, scopes=scopes, audience=audience, client_id=client.client_id, lifetime=lifetime
        )
        body: dict[str, Any] = {"access_token": access_token, "token_type": "Bearer", "expires_in": lifetime}
        if scopes:
            body["scope"] = " ".join(scopes)
        return JSONResponse(body, headers=_NO_STORE)

    return Starlette(
        routes=[
            Route("/.well-known/openid-configuration", metadata, methods=["GET"]),
            Route("/.well-known/oauth-authorization-server", metadata, methods=["GET"]),
            Route("/jwks.json", jwks, methods=["GET"]),
            Route("/token", token, methods=["POST"]),
        ]
    )
