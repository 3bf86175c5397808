"""ASGI middleware: run the chain once per request and answer with RFC 6750 semantics.

Works with any ASGI app (Starlette, FastAPI, the MCP SDK's and FastMCP's apps).
It fills the request context stages read (method, path, client IP, MCP tool),
maps a rejected ``Decision`` to 401/403/429/503 with the right headers, and
remembers the decision so a verifier behind it (the MCP SDK's bearer backend)
answers from it instead of running the chain a second time.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from collections.abc import Awaitable, Callable, Iterable, MutableMapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from starlette.authentication import AuthCredentials
from starlette.requests import ClientDisconnect

from fastapps_auth.chain import VerifierChain
from fastapps_auth.decision import Decision, RateLimitInfo
from fastapps_auth.errors import retry_seconds
from fastapps_auth.request import MAX_RPC_NAME_CHARS, RequestInfo, current_request
from fastapps_auth.stages.scopes import ScopesStage

# The ASGI shapes as Starlette (and httpx's ASGITransport) type them, so the middleware is an ASGI app to both.
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Key under ``scope["state"]`` where the request's decision is kept.
STATE_KEY = "fastapps_auth.decision"
#: JSON-RPC bodies read to find the MCP method and tool are at most this large by default.
DEFAULT_MAX_BODY = 1024 * 1024

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class RequestDecision:
    """The decision made for the current request, and the token it was made for."""

    token: str = field(repr=False)  # never in a log line
    decision: Decision


_current: ContextVar[RequestDecision | None] = ContextVar("fastapps_auth_request_decision", default=None)


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
    held = _current.get()
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


class RequestScopedVerifier:
    """An MCP ``TokenVerifier`` that reuses the middleware's decision for the same token in the same request.

    Outside a request the middleware handled (or for a different token) it runs the
    chain. ``resource_url``: set ``AccessToken.resource`` to it when the token's
    ``aud`` names it, so the SDK's ``validate_token_resource`` check passes.
    """

    def __init__(self, chain: VerifierChain, *, resource_url: str | None = None) -> None:
        self.chain = chain
        self.resource_url = str(resource_url).rstrip("/") if resource_url else None

    async def verify_token(self, token: str) -> AccessToken | None:
        token = token.strip()  # the SDK's backend keeps the spaces after "Bearer" that RFC 7235 allows
        held = _current.get()
        if held is not None and held.token == token:
            decision = held.decision
        else:
            decision = await self.chain.evaluate(token)
        if not decision.allowed or decision.access_token is None:
            return None
        return self.bind_resource(decision.access_token)

    def bind_resource(self, at: AccessToken) -> AccessToken:
        """Set ``resource`` from the audience when it names this server; otherwise leave it."""
        if self.resource_url is None or at.resource is not None:
            return at
        aud = (at.claims or {}).get("aud")
        auds = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        for a in auds:
            if isinstance(a, str) and a.rstrip("/") == self.resource_url:
                return at.model_copy(update={"resource": a})
        return at


# -- request context ------------------------------------------------------------------------


def parse_networks(cidrs: Iterable[str]) -> tuple[IPNetwork, ...]:
    """CIDR strings (``10.0.0.0/8``, ``127.0.0.1``) as networks; a bad one raises ``ValueError``."""
    return tuple(ipaddress.ip_network(c.strip(), strict=False) for c in cidrs)


def _address(hop: str) -> IPAddress | None:
    """An address as peers and proxies write it: ``1.2.3.4``, ``1.2.3.4:80``, ``[2001:db8::1]:80``; else ``None``.

    An IPv4-mapped IPv6 address (a dual-stack listener's view of an IPv4 peer) is its IPv4 address.
    """
    host, port = hop, None
    if hop.startswith("["):
        host, bracket, rest = hop[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            return None
        port = rest[1:] if rest else None
    elif hop.count(":") == 1:
        host, _, port = hop.partition(":")
    if port is not None and not (port.isascii() and port.isdigit()):
        return None
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _in(ip: str, networks: Sequence[IPNetwork]) -> bool:
    addr = _address(ip)
    return addr is not None and any(addr in n for n in networks)


def client_ip(scope: Scope, trusted: Sequence[IPNetwork]) -> str | None:
    """The client address: the peer, or, when the peer is a trusted proxy, the first untrusted X-Forwarded-For hop.

    The X-Forwarded-For chain is read right to left and every hop that is itself a
    trusted proxy is skipped, so a client cannot choose its address by sending the header.
    """
    peer = scope.get("client")
    ip: str | None = str(peer[0]) if peer else None
    if ip is None or not trusted or not _in(ip, trusted):
        return ip
    forwarded: list[str] = []
    for name, value in scope.get("headers", ()):
        if name == b"x-forwarded-for":
            forwarded.extend(h.strip() for h in value.decode("latin-1").split(","))
    for hop in reversed(forwarded):
        addr = _address(hop)
        if addr is None:
            return ip  # a malformed hop: stop trusting the header there
        ip = str(addr)
        if not any(addr in n for n in trusted):
            return ip
    return ip


def rpc_target(body: bytes) -> tuple[str | None, str | None, bool]:
    """(MCP method, tool name, ok) of a JSON-RPC body. ``ok`` is False for a batch hiding a ``tools/call``."""
    try:
        msg = json.loads(body)
    except (ValueError, RecursionError):
        return None, None, True
    if isinstance(msg, list):
        calls = [m for m in msg if isinstance(m, dict) and m.get("method") == "tools/call"]
        return ("batch", None, not calls)
    if not isinstance(msg, dict):
        return None, None, True
    method = msg.get("method")
    if not isinstance(method, str):
        return None, None, True
    tool = None
    if method == "tools/call":
        params = msg.get("params")
        name = params.get("name") if isinstance(params, dict) else None
        tool = name if isinstance(name, str) else None
    return method[:MAX_RPC_NAME_CHARS], tool[:MAX_RPC_NAME_CHARS] if tool else tool, True


# -- responses --------------------------------------------------------------------------------

_UNSAFE = re.compile(r'[\x00-\x1f\x7f"\\]')


def _quote(value: str) -> str:
    """A quoted-string for a header parameter; control characters, quotes and backslashes are dropped."""
    return '"' + _UNSAFE.sub("", value)[:500] + '"'


def _seconds(value: float) -> str:
    bounded = retry_seconds(value)  # a reset is a wait too; NaN says nothing, and 1 s is the least that does
    return str(math.ceil(bounded if bounded is not None else 1.0))


def rate_limit_headers(info: RateLimitInfo) -> list[tuple[bytes, bytes]]:
    """``RateLimit-Limit/-Remaining/-Reset`` (IETF draft) and ``RateLimit-Policy`` when known."""
    headers = [
        (b"ratelimit-limit", str(info.limit).encode()),
        (b"ratelimit-remaining", str(max(0, info.remaining)).encode()),
        (b"ratelimit-reset", _seconds(info.reset).encode()),
    ]
    if info.policy:
        headers.append((b"ratelimit-policy", info.policy.encode("latin-1", "replace")))
    return headers


def challenge(
    error: str | None = None,
    description: str | None = None,
    *,
    scope: str | None = None,
    resource_metadata: str | None = None,
    realm: str | None = None,
) -> str:
    """A ``WWW-Authenticate: Bearer`` value. With no ``error`` it is the bare challenge of RFC 6750 §3.1."""
    params: list[str] = []
    if realm:
        params.append(f"realm={_quote(realm)}")
    if error:
        params.append(f"error={_quote(error)}")
        if description:
            params.append(f"error_description={_quote(description)}")
        if scope:
            params.append(f"scope={_quote(scope)}")
    if resource_metadata:
        params.append(f"resource_metadata={_quote(resource_metadata)}")
    return "Bearer " + ", ".join(params) if params else "Bearer"


def error_response(
    decision: Decision | None, *, resource_metadata: str | None = None, realm: str | None = None
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Status, headers and JSON body for a rejection (``None``: no credentials were presented)."""
    headers: list[tuple[bytes, bytes]] = [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]
    if decision is None:
        www = challenge(resource_metadata=resource_metadata, realm=realm)
        body: dict[str, Any] = {"error_description": "authentication required"}
        headers.append((b"www-authenticate", www.encode("latin-1", "replace")))
        return 401, headers, json.dumps(body).encode()
    status = decision.status if decision.status in (400, 401, 403, 429, 503) else 401
    error = decision.error or ("temporarily_unavailable" if status == 503 else "invalid_token")
    description = decision.description or error
    body = {"error": error, "error_description": description}
    if status in (401, 403):
        www = challenge(
            error,
            description,
            scope=decision.scope if status == 403 else None,
            resource_metadata=resource_metadata,
            realm=realm,
        )
        headers.append((b"www-authenticate", www.encode("latin-1", "replace")))
    if decision.scope and status == 403:
        body["scope"] = decision.scope
    if status in (429, 503):
        retry = decision.retry_after
        if retry is None and decision.rate_limit is not None:
            retry = decision.rate_limit.reset
        headers.append((b"retry-after", _seconds(retry if retry is not None else 1).encode()))
    if decision.rate_limit is not None:
        headers.extend(rate_limit_headers(decision.rate_limit))
    return status, headers, json.dumps(body).encode()


async def _send_response(
    scope: Scope, send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes
) -> None:
    """Answer an HTTP request; refuse a websocket handshake with the same response where the server can send one."""
    prefix = ""
    if scope["type"] == "websocket":
        if "websocket.http.response" not in scope.get("extensions", {}):
            await send({"type": "websocket.close", "code": 1008})  # before accept: the server answers 403
            return
        prefix = "websocket."
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": prefix + "http.response.start", "status": status, "headers": headers})
    await send({"type": prefix + "http.response.body", "body": body})


def bearer_token(scope: Scope) -> str | None:
    """The bearer token of the Authorization header; ``None`` when there is no Bearer credential."""
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            raw: str = value.decode("latin-1")
            scheme, _, token = raw.partition(" ")
            if scheme.lower() != "bearer":
                return None
            return token.strip()
    return None


# -- the middleware -----------------------------------------------------------------------------


class ChainAuthMiddleware:
    """Authenticates HTTP requests and websocket handshakes with a ``VerifierChain``; lifespan passes through.

    ``paths``: path prefixes to protect (default: all); ``exempt``: path segments never
    checked (default: ``/.well-known/``); both are matched against the path the app
    routes on (below its mount or root path) as well as the full path.
    ``anonymous="allow"`` lets requests with no credentials through unauthenticated
    (a bad token is still refused).
    ``required_scopes`` run as one more stage at the end of the chain (403, seen by the
    chain's observers like any other refusal). ``trusted_proxies``
    are CIDRs whose X-Forwarded-For is believed.
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
        anonymous: str = "deny",
        required_scopes: Sequence[str] = (),
        trusted_proxies: Sequence[str] = (),
        max_body_bytes: int = DEFAULT_MAX_BODY,
        on_decision: Callable[[Scope, Decision], None] | None = None,
    ) -> None:
        if anonymous not in ("deny", "allow"):
            raise ValueError("anonymous must be 'deny' or 'allow'")
        if max_body_bytes <= 0:
            raise ValueError("max_body_bytes must be positive")
        self.app = app
        self.chain = chain
        self.resource_metadata_url = str(resource_metadata_url) if resource_metadata_url else None
        self.realm = realm
        self.paths = tuple(paths) if paths is not None else None
        self.exempt = tuple(exempt)
        # Matched on every request, so prepared once: a path prefix with its bare form (``/mcp/`` also
        # protects ``/mcp``), and an exempt prefix as the path itself and as the start of a sub-path.
        self._protected = None if self.paths is None else tuple((p, p.rstrip("/")) for p in self.paths)
        self._exempt = tuple((base, base + "/") for base in (p.rstrip("/") for p in self.exempt))
        self.allow_anonymous = anonymous == "allow"
        self.required_scopes = tuple(required_scopes)
        # Server-wide scopes are a last stage of the chain, not a check after it: the decision the
        # observers record is the one the client gets. Same stages and observers, so same caches.
        self._chain = chain
        if self.required_scopes:
            self._chain = VerifierChain(
                *chain.stages,
                ScopesStage(required=list(self.required_scopes), name="required-scopes"),
                observers=chain.observers,
                clock=chain.clock,
                name=chain.name,
            )
        self.trusted = parse_networks(trusted_proxies)
        self.max_body_bytes = max_body_bytes
        self.on_decision = on_decision

    def _protects(self, scope: Scope) -> bool:
        # Starlette routes on the path below the mount (or the server's root path), which is what
        # ``paths`` name; a list written against the full path keeps protecting it too.
        full = scope.get("path", "")
        routed = _route_path(scope)
        paths = (full,) if routed == full else (full, routed)
        # An exempt prefix ends at a path segment: ``/public`` covers ``/public/x``, not ``/publicx``.
        if any(path == base or path.startswith(below) for path in paths for base, below in self._exempt):
            return False
        if self._protected is None:
            return True
        return any(path == bare or path.startswith(p) for path in paths for p, bare in self._protected)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or _is_preflight(scope) or not self._protects(scope):
            await self.app(scope, receive, send)
            return
        token = bearer_token(scope)
        if token is None and not self.allow_anonymous:
            await _send_response(
                scope, send, *error_response(None, resource_metadata=self.resource_metadata_url, realm=self.realm)
            )
            return
        mcp_method = tool = None
        if scope.get("method") == "POST" and _is_json(scope):
            try:
                body = await _read_body(receive, self.max_body_bytes)
            except ClientDisconnect:
                return  # the client left mid-body: no request to decide on or to run
            if body is None:
                await _send_response(
                    scope, send, 413, [(b"content-type", b"application/json")], b'{"error":"request_too_large"}'
                )
                return
            mcp_method, tool, ok = rpc_target(body)
            if not ok:
                await _send_response(
                    scope,
                    send,
                    400,
                    [(b"content-type", b"application/json")],
                    b'{"error":"invalid_request","error_description":"tools/call cannot be batched"}',
                )
                return
            receive = _replay(body, receive)
        info = RequestInfo(
            method=scope.get("method"),
            path=scope.get("path"),
            client_ip=client_ip(scope, self.trusted),
            mcp_method=mcp_method,
            tool_name=tool,
        )
        if token is None:
            reset = current_request.set(info)
            try:
                await self.app(scope, receive, send)
            finally:
                current_request.reset(reset)
            return
        decision = await self._chain.evaluate(token, request=info)
        scope.setdefault("state", {})[STATE_KEY] = decision
        if self.on_decision is not None:
            self.on_decision(scope, decision)
        if not decision.allowed:
            await _send_response(
                scope, send, *error_response(decision, resource_metadata=self.resource_metadata_url, realm=self.realm)
            )
            return
        _authenticate_scope(scope, decision)
        if decision.rate_limit is not None:
            send = _with_headers(send, rate_limit_headers(decision.rate_limit))
        held = _current.set(RequestDecision(token, decision))  # the decision's token holds it already
        reset = current_request.set(info)
        try:
            await self.app(scope, receive, send)
        finally:
            current_request.reset(reset)
            _current.reset(held)


def _authenticate_scope(scope: Scope, decision: Decision) -> None:
    """Set ``scope["user"]``/``scope["auth"]`` as the MCP SDK's bearer backend would, for code behind us."""
    at = decision.access_token
    if at is None:
        return
    scope["user"] = AuthenticatedUser(at)
    scope["auth"] = AuthCredentials(at.scopes)


def _route_path(scope: Scope) -> str:
    """The path the app routes on: ``path`` without ``root_path`` (as Starlette's routing computes it)."""
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and (path == root or path[len(root)] == "/"):
        return path[len(root) :]
    return path


def _is_preflight(scope: Scope) -> bool:
    """A CORS preflight (browsers send it without credentials): ``OPTIONS`` naming the method to come.

    Any other ``OPTIONS`` is a request like the others: an app may answer it with data.
    """
    if scope.get("method") != "OPTIONS":
        return False
    return any(name == b"access-control-request-method" for name, _ in scope.get("headers", ()))


def _is_json(scope: Scope) -> bool:
    for name, value in scope.get("headers", ()):
        if name == b"content-type":
            return b"json" in value.lower()
    return False


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body, or ``None`` as soon as it exceeds ``limit`` bytes; raises ``ClientDisconnect``."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise ClientDisconnect
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that yields ``body`` once, then defers to the original (for disconnects)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _with_headers(send: Send, extra: list[tuple[bytes, bytes]]) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)

    return wrapped


def cors_middleware(
    origins: Sequence[str],
    *,
    methods: Sequence[str] = ("GET", "POST", "DELETE", "OPTIONS"),
    headers: Sequence[str] = ("Authorization", "Content-Type", "Mcp-Session-Id", "Mcp-Protocol-Version"),
    expose: Sequence[str] = (
        "Mcp-Session-Id",
        "WWW-Authenticate",
        "Retry-After",
        "RateLimit-Limit",
        "RateLimit-Remaining",
        "RateLimit-Reset",
    ),
) -> Any:
    """A Starlette ``Middleware`` for CORS with explicit origins, methods and headers (no wildcard)."""
    if not origins or any(o == "*" for o in origins):
        raise ValueError("list the allowed origins explicitly (a wildcard would let any site use the token)")
    from starlette.middleware import Middleware
    from starlette.middleware.cors import CORSMiddleware

    return Middleware(
        CORSMiddleware,
        allow_origins=list(origins),
        allow_methods=list(methods),
        allow_headers=list(headers),
        expose_headers=list(expose),
        allow_credentials=False,
        max_age=600,
    )
