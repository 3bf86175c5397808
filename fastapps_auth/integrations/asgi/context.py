"""The decision of the request being handled, for code behind the middleware (tools, the SDK's verifier)."""

from __future__ import annotations

from collections.abc import MutableMapping
from contextvars import ContextVar
from typing import Any, NamedTuple

from mcp.server.auth.provider import AccessToken
from pydantic import AnyHttpUrl, ValidationError

from fastapps_auth.chain import VerifierChain
from fastapps_auth.decision import Decision

#: Key under ``scope["state"]`` where the request's decision is kept.
STATE_KEY = "fastapps_auth.decision"


class RequestDecision(NamedTuple):
    """The decision made for the current request, and the token it was made for (one per request: a named tuple)."""

    token: str
    decision: Decision

    def __repr__(self) -> str:
        return f"RequestDecision(decision={self.decision!r})"  # the token is never in a log line


#: Set by the middleware around the app for the request it decided.
request_decision: ContextVar[RequestDecision | None] = ContextVar("fastapps_auth_request_decision", default=None)


def _find_sdk_request_ctx() -> ContextVar[Any] | None:
    """The MCP SDK's per-message request context (mcp 1.x; mcp 2.x runs each message in its request's context)."""
    try:
        from mcp.server.lowlevel.server import request_ctx
    except ImportError:  # pragma: no cover - depends on the installed mcp
        return None
    return request_ctx


_sdk_request_ctx = _find_sdk_request_ctx()


def current_decision() -> Decision | None:
    """The decision the middleware made for the request being handled, if any.

    Inside an MCP handler, that is the HTTP request that carried the message being handled: in a
    stateful session (MCP SDK 1.x) handlers run in the context of the request that opened the
    session, whose token may have been replaced since (fewer scopes, or expired).
    """
    decision = _message_decision()
    if decision is not None:
        return decision
    held = request_decision.get()
    return held.decision if held is not None else None


def current_access_token() -> AccessToken | None:
    """The verified ``AccessToken`` of the request being handled (``None`` when anonymous or denied)."""
    decision = current_decision()
    if decision is None or not decision.allowed:
        return None
    return decision.access_token


def _message_decision() -> Decision | None:
    """The decision stored on the HTTP request of the MCP message being handled (the SDK's request context)."""
    if _sdk_request_ctx is None:
        return None
    ctx = _sdk_request_ctx.get(None)
    scope = getattr(getattr(ctx, "request", None), "scope", None)
    state = scope.get("state") if isinstance(scope, MutableMapping) else None
    decision = state.get(STATE_KEY) if isinstance(state, MutableMapping) else None
    return decision if isinstance(decision, Decision) else None


def _canonical(url: str) -> str | None:
    """A resource URL as the SDK's ``BearerAuthBackend`` compares it (pydantic's URL form, no trailing slash)."""
    try:
        return str(AnyHttpUrl(url)).removesuffix("/")
    except ValidationError:
        return None


class RequestScopedVerifier:
    """An MCP ``TokenVerifier`` that reuses the middleware's decision for the same token in the same request.

    Outside a request the middleware handled (or for a different token) it runs the
    chain. ``resource_url``: set ``AccessToken.resource`` to the audience that names it,
    so the SDK's ``validate_token_resource`` check passes.
    """

    def __init__(self, chain: VerifierChain, *, resource_url: str | None = None) -> None:
        self.chain = chain
        self.resource_url = str(resource_url).rstrip("/") if resource_url else None
        self._resource = _canonical(self.resource_url) if self.resource_url else None

    async def verify_token(self, token: str) -> AccessToken | None:
        token = token.strip()  # the SDK's backend keeps the spaces after "Bearer" that RFC 7235 allows
        held = request_decision.get()
        if held is not None and held.token == token:
            decision = held.decision
        else:
            decision = await self.chain.evaluate(token)
        if not decision.allowed or decision.access_token is None:
            return None
        return self.bind_resource(decision.access_token)

    def _names_this_server(self, aud: Any) -> bool:
        if not isinstance(aud, str) or self.resource_url is None:
            return False
        if aud.rstrip("/") == self.resource_url:
            return True
        return self._resource is not None and _canonical(aud) == self._resource

    def bind_resource(self, at: AccessToken) -> AccessToken:
        """Set ``resource`` to the audience that names this server, when one does; otherwise leave it.

        A token for several audiences may already carry another one as its ``resource`` (the first
        that an authenticating stage accepted): the one naming this server wins, or the SDK's
        resource check would refuse a token that was issued for it.
        """
        if self.resource_url is None or self._names_this_server(at.resource):
            return at
        aud = (at.claims or {}).get("aud")
        for a in [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []:
            if self._names_this_server(a):
                return at.model_copy(update={"resource": a})
        return at
