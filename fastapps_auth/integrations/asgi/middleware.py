"""``ChainAuthMiddleware``: run the chain once per request and answer a refusal with RFC 6750 semantics.

Works with any ASGI app (Starlette, FastAPI, the MCP SDK's and FastMCP's apps). It fills the
request context stages read (method, path, client IP, the MCP tool as the host resolves it),
maps a refused ``Decision`` to 401/403/429/503 (or 400/413 for a body it cannot read), and
remembers the decision so a verifier behind it answers from it instead of running the chain again.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence

from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from starlette.authentication import AuthCredentials
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from fastapps_auth.chain import VerifierChain
from fastapps_auth.decision import Decision
from fastapps_auth.integrations.asgi import body as mcp_body
from fastapps_auth.integrations.asgi.body import DEFAULT_MAX_BODY, NOT_RPC, RpcTarget
from fastapps_auth.integrations.asgi.client import client_ip, parse_networks, peer_trusted
from fastapps_auth.integrations.asgi.context import STATE_KEY, RequestDecision, request_decision
from fastapps_auth.integrations.asgi.headers import RequestHeaders, credentials, public_url, read_headers
from fastapps_auth.integrations.asgi.metadata import metadata_url
from fastapps_auth.integrations.asgi.needs import ChainNeeds, without_dpop
from fastapps_auth.integrations.asgi.paths import PathRules, is_preflight
from fastapps_auth.integrations.asgi.refusals import (
    body_refusal,
    lookup_failed,
    refuse_after_checking,
    refuse_anonymous,
)
from fastapps_auth.integrations.asgi.responses import Response, error_response, rate_limit_headers, send_response
from fastapps_auth.integrations.asgi.responses import with_headers as _with_headers
from fastapps_auth.integrations.asgi.tools import ToolResolver
from fastapps_auth.integrations.asgi.websocket import DecideMessage, MessageGuard
from fastapps_auth.request import MAX_RPC_NAME_CHARS, RequestInfo, current_request
from fastapps_auth.stages.scopes import ScopesStage

logger = logging.getLogger("fastapps_auth")


def bearer_token(scope: Scope) -> str | None:
    """The bearer token of the Authorization header; ``None`` when there is no (one) Bearer credential."""
    found = credentials(read_headers(scope), dpop=False)
    return found[1] if found is not None else None


def with_required_scopes(chain: VerifierChain, scopes: Sequence[str]) -> VerifierChain:
    """``chain`` with a last ``scopes`` stage requiring ``scopes`` (same stages and observers, so same caches)."""
    return VerifierChain(
        *chain.stages,
        ScopesStage(required=list(scopes), name="required-scopes"),
        observers=chain.observers,
        clock=chain.clock,
        name=chain.name,
    )


class ChainAuthMiddleware:
    """Authenticates HTTP requests and websocket messages with a ``VerifierChain``; other scopes pass through.

    ``paths``: path prefixes to protect (default: all); ``exempt``: path segments never checked
    (default: ``/.well-known/``); both are matched against the path the app routes on (below its
    mount or root path) as well as the full path. ``anonymous="allow"`` lets requests with no
    credentials through unauthenticated (a bad token is still refused). ``trusted_proxies`` are
    CIDRs whose X-Forwarded-For is believed. ``resolve_tool`` maps a ``tools/call``'s name to the
    host's own (see ``tools.ToolResolver``); without it the name is taken as sent. ``on_error``
    builds the response to a refused decision (default: ``error_response``); ``on_decision`` sees
    every decision with its scope. ``required_scopes`` is deprecated: put a ``scopes`` stage in the chain.

    ``resource_url`` is the server's own URL: the chain is bound to it (a ``jwt`` stage with no
    ``audience`` accepts only tokens for it, RFC 8707) and ``resource_metadata_url`` defaults to its
    RFC 9728 metadata URL.

    ``anonymous`` may also be a predicate on the request (``RequestInfo``, its body read): True when a
    request without credentials may go on; one it refuses is answered 401 like any request without a token.
    When the chain has a ``dpop`` stage the ``DPoP`` scheme is accepted too, and its refusals carry a
    ``DPoP`` challenge beside the ``Bearer`` one (RFC 9449). Every 401 and 403 names all the scopes the
    request needs (``needs.ChainNeeds``). A POST whose ``Mcp-Method``/``Mcp-Name`` headers do not mirror
    its body is refused with 400 (JSON-RPC -32020) once the token is checked, before the app sees it.
    """

    def __init__(
        self,
        app: ASGIApp,
        chain: VerifierChain,
        *,
        resource_metadata_url: str | None = None,
        realm: str | None = None,
        paths: Sequence[str] | None = None,
        exempt: Sequence[str] = ("/.well-known/",),
        anonymous: str | Callable[[RequestInfo], bool] = "deny",
        trusted_proxies: Sequence[str] = (),
        max_body_bytes: int = DEFAULT_MAX_BODY,
        resolve_tool: ToolResolver | None = None,
        on_error: Callable[[Decision], Response] | None = None,
        on_decision: Callable[[Scope, Decision], None] | None = None,
        required_scopes: Sequence[str] = (),
        resource_url: str | None = None,
    ) -> None:
        if not callable(anonymous) and anonymous not in ("deny", "allow"):
            raise ValueError("anonymous must be 'deny', 'allow' or a predicate on the request")
        if max_body_bytes <= 0:
            raise ValueError("max_body_bytes must be positive")
        if required_scopes:
            warnings.warn(
                "ChainAuthMiddleware(required_scopes=...) is deprecated: put a `scopes` stage in the chain",
                DeprecationWarning,
                stacklevel=2,
            )
            chain = with_required_scopes(chain, required_scopes)
        if resource_url:
            chain.bind_resource(resource_url)  # RFC 8707: a jwt stage without an audience takes this one
            resource_metadata_url = resource_metadata_url or metadata_url(resource_url)
        self.app = app
        self.chain = chain
        self.resource_metadata_url = str(resource_metadata_url) if resource_metadata_url else None
        self.realm = realm
        self.paths = PathRules(paths, exempt)
        self.allow_anonymous = anonymous == "allow" or callable(anonymous)
        self.anonymous_may: Callable[[RequestInfo], bool] | None = anonymous if callable(anonymous) else None
        self.needs = ChainNeeds(chain)
        self._dpop = bool(self.needs.dpop_algorithms)
        self._frames_chain = without_dpop(chain)
        self.trusted = parse_networks(trusted_proxies)
        self.max_body_bytes = max_body_bytes
        self.resolve_tool = resolve_tool
        self.on_error: Callable[[Decision], Response] = on_error or self.default_on_error
        self.on_decision = on_decision

    def default_on_error(self, decision: Decision) -> Response:
        return error_response(
            decision,
            resource_metadata=self.resource_metadata_url,
            realm=self.realm,
            dpop_algorithms=self.needs.dpop_algorithms,
            dpop_nonce=self.needs.nonce(decision),
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or is_preflight(scope) or not self.paths.protects(scope):
            await self.app(scope, receive, send)
            return
        headers = read_headers(scope)
        found = credentials(headers, dpop=self._dpop)
        token = found[1] if found is not None else None
        if token is None and not self.allow_anonymous:
            # No credentials: refused before the body is read, as the chain refuses an empty token.
            info = self.request_info(scope, NOT_RPC, None, headers, found)
            await self._answer(scope, receive, send, "", await self.chain.evaluate("", request=info), info)
            return
        target = NOT_RPC
        if scope["type"] == "http" and scope.get("method") == "POST":
            json_type, encoded = mcp_body.json_post(scope)
            if encoded and json_type:
                target = RpcTarget(refusal=mcp_body.UNDECODED)
            elif json_type:
                try:
                    target, receive = await self._read(receive)
                except ClientDisconnect:
                    return  # the client left mid-body: no request to decide on or to run
                if headers.mcp_method or headers.mcp_name:  # a 2026-07-28 client
                    target = mcp_body.check_mirrors(target, headers.mcp_method, headers.mcp_name)
        decision, info = await self.decide(token, scope, target, headers, found)
        if decision is not None:
            await self._answer(scope, receive, send, token or "", decision, info)
            return
        reset = current_request.set(info)  # anonymous, and nothing to refuse
        try:
            await self.app(scope, receive, send)
        finally:
            current_request.reset(reset)

    async def decide(
        self,
        token: str | None,
        scope: Scope,
        target: RpcTarget,
        headers: RequestHeaders | None = None,
        found: tuple[str, str] | None = None,
        chain: VerifierChain | None = None,
    ) -> tuple[Decision | None, RequestInfo]:
        """The decision for one message (a body, a websocket frame), and the request it was made for.

        The decision is ``None`` for an anonymous message to pass on. A message the middleware
        refuses itself (unreadable, too large, a batched call, mismatched headers, a failed tool
        lookup) is refused after the token is checked, as the chain's last stage: one decision, seen
        once by the observers, naming who sent it.
        """
        rejected = body_refusal(target.refusal) if target.refusal else None
        tool = None
        if rejected is None and target.method == "tools/call":
            try:
                tool = await self._tool(target)
            except Exception as exc:
                logger.warning("resolving the called tool failed (%s); refusing with 503", type(exc).__name__)
                rejected = lookup_failed()
        info = self.request_info(scope, target, tool, headers, found)
        chain = chain if chain is not None else self.chain
        if token is None:
            if rejected is None and self.anonymous_may is not None and not self.anonymous_may(info):
                return await chain.evaluate("", request=info), info  # this request needs a token
            return (None if rejected is None else refuse_anonymous(chain, info, rejected)), info
        if rejected is None:
            return await chain.evaluate(token, request=info), info
        return await refuse_after_checking(chain, token, info, rejected), info

    async def _tool(self, target: RpcTarget) -> str | None:
        """The called tool's name as the host knows it (as sent, without a resolver)."""
        if not isinstance(target.tool, str):
            return None
        name = target.tool if self.resolve_tool is None else await self.resolve_tool(target.tool, target.arguments)
        return name[:MAX_RPC_NAME_CHARS] if name is not None else None

    def request_info(
        self,
        scope: Scope,
        target: RpcTarget,
        tool: str | None,
        headers: RequestHeaders | None = None,
        found: tuple[str, str] | None = None,
    ) -> RequestInfo:
        """What stages may know of the request: method, path, client, MCP method and tool, public URL, DPoP.

        ``headers`` and ``found`` (its credentials) are read here when not given.
        """
        if headers is None:
            headers = read_headers(scope)
            found = credentials(headers, dpop=self._dpop)
        # Positional: a named tuple built from keywords costs twice as much, and this is built per request.
        return RequestInfo(
            scope.get("method", "GET"),  # a websocket handshake is a GET
            scope.get("path"),
            client_ip(scope, self.trusted),
            target.method,
            tool,
            public_url(scope, headers, behind_proxy=peer_trusted(scope, self.trusted)) if self._dpop else None,
            found[0] if found is not None else None,
            headers.dpop,
        )

    async def _read(self, receive: Receive) -> tuple[RpcTarget, Receive]:
        """The JSON-RPC target of the body (or why it is refused), and a ``receive`` that replays the body."""
        data = await mcp_body.read_body(receive, self.max_body_bytes)
        if data is None:
            return RpcTarget(refusal=mcp_body.TOO_LARGE), receive
        return mcp_body.rpc_message(data), mcp_body.replay(data, receive)

    async def _answer(
        self, scope: Scope, receive: Receive, send: Send, token: str, decision: Decision, info: RequestInfo
    ) -> None:
        """Record the decision on the scope, then refuse, or run the app in the decision's context."""
        scope.setdefault("state", {})[STATE_KEY] = decision
        if self.on_decision is not None:
            self.on_decision(scope, decision)
        if not decision.allowed:
            await send_response(scope, send, self.on_error(self.needs.for_client(decision)))
            return
        if info.auth_scheme == "dpop":
            scope = _as_bearer(scope, token)
        _authenticate_scope(scope, decision)
        extra = rate_limit_headers(decision.rate_limit) if decision.rate_limit is not None else []
        nonce = self.needs.nonce(request=info) if self._dpop else None
        if nonce is not None:
            extra.append((b"dpop-nonce", nonce.encode("latin-1", "replace")))
        if extra:
            send = _with_headers(send, extra)
        if scope["type"] == "websocket":
            guard = MessageGuard(self._message_decider(scope, token), self.max_body_bytes, receive, send)
            receive, send = guard.receive, guard.send
        held = request_decision.set(RequestDecision(token, decision))  # the decision's token holds it already
        reset = current_request.set(info)
        try:
            await self.app(scope, receive, send)
        finally:
            current_request.reset(reset)
            request_decision.reset(held)

    def _message_decider(self, scope: Scope, token: str) -> DecideMessage:
        """How each message of a websocket connection is decided: as a request with the handshake's token.

        The handshake proved possession of a DPoP-bound token for the connection; its one proof is not
        checked again for each message (it would be a replay), the rest of the chain is.
        """
        chain = self._frames_chain

        async def decide(target: RpcTarget) -> Decision | None:
            decision, _ = await self.decide(token, scope, target, chain=chain)
            if decision is not None and self.on_decision is not None:
                self.on_decision(scope, decision)
            return self.needs.for_client(decision) if decision is not None else None

        return decide


def _as_bearer(scope: Scope, token: str) -> Scope:
    """``scope`` with its verified DPoP credential shown to the app as ``Bearer``: the proof is checked, and the
    hosts' own bearer backends (the MCP SDK's, FastMCP's) read no other scheme."""
    bearer = b"Bearer " + token.encode("latin-1")
    headers = [(n, bearer if n == b"authorization" else v) for n, v in scope.get("headers", ())]
    return {**scope, "headers": headers}


def _authenticate_scope(scope: Scope, decision: Decision) -> None:
    """Set ``scope["user"]``/``scope["auth"]`` as the MCP SDK's bearer backend would, for code behind us."""
    at = decision.access_token
    if at is None:
        return
    scope["user"] = AuthenticatedUser(at)
    scope["auth"] = AuthCredentials(at.scopes)
