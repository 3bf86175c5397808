"""What every endpoint shares: bounded request bodies, OAuth error answers, client authentication."""

from __future__ import annotations

import base64
import binascii
from urllib.parse import parse_qsl, unquote

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from fastapps_auth.dev_issuer.authorization import Params
from fastapps_auth.dev_issuer.clients import Client
from fastapps_auth.dev_issuer.grants import OAuthError
from fastapps_auth.dev_issuer.issuer import DevIssuer
from fastapps_auth.dev_issuer.registration import RegistrationError

#: A token request is a few form fields; anything larger is refused before parsing.
MAX_FORM_BYTES = 8 * 1024
MAX_FIELDS = 64
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def oauth_error(exc: OAuthError) -> Response:
    """The RFC 6749 §5.2 JSON error; a 401 names the Basic scheme the client can retry with."""
    headers = {**NO_STORE, **exc.headers}
    if exc.status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="dev-issuer"'
    return JSONResponse({"error": exc.error, "error_description": exc.description}, exc.status, headers)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (``invalid_request``) beyond ``limit`` bytes, declared or streamed."""
    length = request.headers.get("content-length")
    too_big = OAuthError("invalid_request", f"the request body must be at most {limit} bytes")
    if length is not None and (not length.isdigit() or int(length) > limit):
        raise too_big
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_big
    return bytes(body)


async def read_form(request: Request) -> Params:
    """An ``application/x-www-form-urlencoded`` body; empty values count as absent (RFC 6749 §3.1)."""
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/x-www-form-urlencoded":
        raise OAuthError("invalid_request", "use application/x-www-form-urlencoded")
    body = await read_body(request, MAX_FORM_BYTES)
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=False, max_num_fields=MAX_FIELDS)
        return Params.parse(pairs)
    except (UnicodeDecodeError, ValueError) as exc:
        raise OAuthError("invalid_request", f"malformed form: {exc}") from None


def basic_credentials(header: str) -> tuple[str, str] | None:
    """``(client_id, secret)`` of an HTTP Basic header (form-urlencoded parts, RFC 6749 §2.3.1)."""
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


async def authenticate(issuer: DevIssuer, request: Request, params: Params) -> Client:
    """The client of a token, introspection or revocation request (RFC 6749 §2.3; one method only).

    HTTP Basic or ``client_secret`` in the form for a confidential client; ``client_id`` alone for a
    public one (a registered public client, or a client ID metadata document).
    """
    failed = OAuthError("invalid_client", "client authentication failed", 401)
    header = request.headers.get("authorization")
    client_id, secret = params.get("client_id"), params.get("client_secret")
    if header is not None:
        creds = basic_credentials(header)
        if creds is None:
            raise failed
        if secret is not None or (client_id is not None and client_id != creds[0]):
            raise OAuthError("invalid_request", "use one client authentication method, not two")
        client_id, secret = creds
    if not client_id:
        raise failed
    if secret is not None:
        client = issuer.authenticate_client(client_id, secret)
    else:
        try:
            client = await issuer.find_client(client_id)
        except RegistrationError as exc:
            raise OAuthError("invalid_client", exc.description, 401) from None
        if client is not None and not client.public:
            raise OAuthError("invalid_client", "this client must authenticate with its secret", 401)
    if client is None:
        raise failed
    return client
