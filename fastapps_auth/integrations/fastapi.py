"""FastAPI: ``Depends(require(chain, scopes=[...]))`` gives a route the request's verified ``AccessToken``.

The dependency is an ``HTTPBearer`` security scheme, so it appears in the OpenAPI document. A refusal
is the middleware's answer (``integrations.asgi.responses.error_response``: 401/403/429/503 with the
same ``WWW-Authenticate``, ``Retry-After`` and ``RateLimit-*`` headers and the same JSON body) raised as
``Refused``; ``install(app)`` registers the handler that sends it as is. Without the handler FastAPI's
own answers it: the same status and headers, the body under ``"detail"``.

When ``ChainAuthMiddleware`` is in front of the app, the dependency uses the decision the middleware
made for this request and token, as ``RequestScopedVerifier`` does: the chain runs once, and its
observers see one decision. Give both the same chain. A route's own ``scopes`` are then checked on
that decision's token (exact names); a token that lacks one is refused with 403 ``insufficient_scope``,
a second decision, which the chain's observers see too (the middleware allowed the request, the route
refused it).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from fastapi import FastAPI, HTTPException, Request
from fastapi.security import HTTPBearer
from mcp.server.auth.provider import AccessToken
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from fastapps_auth.chain import VerifierChain
from fastapps_auth.decision import Decision
from fastapps_auth.errors import insufficient_scope
from fastapps_auth.integrations.asgi.body import NOT_RPC
from fastapps_auth.integrations.asgi.context import STATE_KEY, request_decision
from fastapps_auth.integrations.asgi.middleware import ChainAuthMiddleware, bearer_token, with_required_scopes
from fastapps_auth.integrations.asgi.responses import Headers, rate_limit_headers

__all__ = ["ChainAuth", "Refused", "install", "refused_handler", "require"]

#: The ``stage`` of a route's own scope refusal after the middleware allowed the request.
ROUTE_SCOPES = "required-scopes"


class Refused(HTTPException):
    """A refused request: the middleware's status, headers and body (``install`` sends them as they are)."""

    def __init__(self, status: int, headers: Headers, body: bytes) -> None:
        joined: dict[str, str] = {}
        for name, value in headers:  # FastAPI's own handler takes one value per name: challenges join with ", "
            key = name.decode("latin-1")
            joined[key] = f"{joined[key]}, {value.decode('latin-1')}" if key in joined else value.decode("latin-1")
        super().__init__(status_code=status, detail=json.loads(body), headers=joined)
        self.raw_headers = headers
        self.body = body


async def refused_handler(request: Request, exc: Exception) -> Response:
    """Send a ``Refused`` exactly as ``ChainAuthMiddleware`` would have."""
    assert isinstance(exc, Refused)
    response = Response(content=exc.body, status_code=exc.status_code)
    response.raw_headers.extend(exc.raw_headers)
    return response


def install(app: FastAPI) -> None:
    """Answer ``Refused`` with the middleware's body (``{"error": ..., "error_description": ...}``)."""
    app.add_exception_handler(Refused, refused_handler)


async def _no_app(scope: Scope, receive: Receive, send: Send) -> None:  # pragma: no cover - never called
    raise RuntimeError("the dependency's middleware decides; it calls no app")


class ChainAuth(HTTPBearer):
    """The dependency (``require``): the request's ``AccessToken``, or ``Refused``. Build it once, at import.

    ``scopes``: the route's, a last ``scopes`` stage on ``chain`` (built here, once). The other options
    are the middleware's (``resource_metadata_url``, ``realm``, ``trusted_proxies``) and the OpenAPI
    scheme's (``scheme_name``, ``description``).
    """

    def __init__(
        self,
        chain: VerifierChain,
        *,
        scopes: Sequence[str] = (),
        resource_metadata_url: str | None = None,
        realm: str | None = None,
        trusted_proxies: Sequence[str] = (),
        scheme_name: str | None = None,
        description: str | None = None,
    ) -> None:
        super().__init__(scheme_name=scheme_name, description=description, auto_error=True)
        self.scopes = tuple(scopes)
        self.chain = with_required_scopes(chain, self.scopes) if self.scopes else chain
        # The middleware's own decision path and answers, for a request it did not see.
        self.middleware = ChainAuthMiddleware(
            _no_app,
            self.chain,
            resource_metadata_url=resource_metadata_url,
            realm=realm,
            trusted_proxies=trusted_proxies,
        )

    async def __call__(self, request: Request, response: Response) -> AccessToken:  # type: ignore[override]
        token = bearer_token(request.scope)
        held = request_decision.get()
        if token is not None and held is not None and held.token == token:
            decision = self._route_scopes(held.decision)  # the middleware's decision for this request
        else:
            decision = await self._decide(request.scope, token)
            request.scope.setdefault("state", {})[STATE_KEY] = decision
            if decision.allowed and decision.rate_limit is not None:  # the middleware adds them, when it decided
                response.raw_headers.extend(rate_limit_headers(decision.rate_limit))
        if not decision.allowed or decision.access_token is None:
            raise Refused(*self.middleware.on_error(self.middleware.needs.for_client(decision)))
        return decision.access_token

    async def _decide(self, scope: Scope, token: str | None) -> Decision:
        """The decision the middleware would make for this request (no body: a route is not an MCP call)."""
        if token is not None:
            decision, _ = await self.middleware.decide(token, scope, NOT_RPC)
            if decision is not None:
                return decision
        # No credentials: the chain's missing_token refusal, as the middleware makes it.
        return await self.chain.evaluate("", request=self.middleware.request_info(scope, NOT_RPC, None))

    def _route_scopes(self, decision: Decision) -> Decision:
        """The middleware's decision, or the route's 403 when its token lacks one of the route's scopes."""
        at = decision.access_token
        missing = [s for s in self.scopes if at is None or s not in at.scopes]
        if not decision.allowed or not missing:
            return decision
        rejected = insufficient_scope(missing, needed=list(self.scopes))
        refused = decision._replace(
            allowed=False,
            access_token=None,
            status=rejected.status,
            stage=ROUTE_SCOPES,
            reason=rejected.reason,
            error=rejected.error,
            description=rejected.description,
            scope=rejected.scope,
        )
        self.chain.notify(refused)
        return refused


#: ``Depends(require(chain, scopes=["read"]))``: the route's ``AccessToken``, verified by ``chain``.
#: ``resource_metadata_url`` is named in every 401 (as the middleware does); ``trusted_proxies`` are the
#: CIDRs whose X-Forwarded-For is believed; ``scheme_name`` and ``description`` are the OpenAPI security
#: scheme's (default name: ``ChainAuth``).
require = ChainAuth
