"""The token endpoint: every grant, behind client authentication (RFC 6749 §3.2), DPoP-bound with a proof."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fastapps_auth.backends.dpop.proof import ProofError
from fastapps_auth.dev_issuer.dpop import NonceRequired
from fastapps_auth.dev_issuer.grants import OAuthError, grant
from fastapps_auth.dev_issuer.issuer import DevIssuer
from fastapps_auth.dev_issuer.routes.common import NO_STORE, authenticate, oauth_error, read_form
from fastapps_auth.errors import TransientError


def routes(issuer: DevIssuer) -> list[Route]:
    async def token(request: Request) -> Response:
        nonce = issuer.dpop.nonce()
        fresh = {"DPoP-Nonce": nonce} if nonce is not None else {}  # RFC 9449 §8.2: with every answer
        try:
            params = await read_form(request)
            client = await authenticate(issuer, request, params)
            jkt = await _dpop_key(issuer, request)
            body = grant(issuer, client, params, jkt)
        except OAuthError as exc:
            exc.headers.update(fresh)
            return oauth_error(exc)
        return JSONResponse(body, headers={**NO_STORE, **fresh})

    return [Route("/token", token, methods=["POST"])]


async def _dpop_key(issuer: DevIssuer, request: Request) -> str | None:
    """The thumbprint of the request's DPoP proof key (``None`` without one); ``invalid_dpop_proof`` if refused."""
    try:
        return await issuer.dpop.key(request.headers.getlist("dpop"), issuer.token_endpoint)
    except NonceRequired as exc:
        raise OAuthError("use_dpop_nonce", exc.description) from None
    except ProofError as exc:
        raise OAuthError("invalid_dpop_proof", exc.description) from None
    except TransientError as exc:
        raise OAuthError("temporarily_unavailable", str(exc), 503) from None
