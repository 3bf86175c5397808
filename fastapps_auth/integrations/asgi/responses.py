"""What a refused request is answered with: RFC 6750 challenges, RateLimit headers, JSON and JSON-RPC errors.

A challenge is a scheme and its parameters in order (``Challenge``), rendered once per
``WWW-Authenticate`` header, so a response can carry more than one (a ``DPoP`` challenge beside
``Bearer``, RFC 9449) and a challenge more parameters (``acr_values``, ``max_age``, RFC 9470).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, NamedTuple

from starlette.types import Message, Scope, Send

from fastapps_auth.decision import Decision, RateLimitInfo
from fastapps_auth.errors import retry_seconds
from fastapps_auth.integrations.asgi.body import BATCHED_CALL, TOO_LARGE, UNDECODED, UNREADABLE

Headers = list[tuple[bytes, bytes]]
#: Status, headers and body of a response the middleware sends itself.
Response = tuple[int, Headers, bytes]

#: JSON-RPC 2.0 codes: the body could not be parsed; it is not a request we pass on.
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
#: A websocket message refused by the chain (JSON-RPC's server-error range); ``data`` says why.
AUTH_ERROR = -32001
RPC_ERRORS = {
    UNREADABLE: PARSE_ERROR,
    UNDECODED: PARSE_ERROR,
    TOO_LARGE: INVALID_REQUEST,
    BATCHED_CALL: INVALID_REQUEST,
}
#: The reason of a request that carried no credentials (the chain's, for an empty token).
MISSING_TOKEN = "missing_token"

_UNSAFE = re.compile(r'[\x00-\x1f\x7f"\\]')
_JSON = (b"content-type", b"application/json")
_NO_STORE = (b"cache-control", b"no-store")


def _quote(value: str) -> str:
    """A quoted-string for a header parameter; control characters, quotes and backslashes are dropped."""
    return '"' + _UNSAFE.sub("", value)[:500] + '"'


class Challenge(NamedTuple):
    """One ``WWW-Authenticate`` challenge: an auth scheme and its parameters, in order."""

    scheme: str
    params: tuple[tuple[str, str], ...] = ()

    def render(self) -> str:
        if not self.params:
            return self.scheme
        return self.scheme + " " + ", ".join(f"{k}={_quote(v)}" for k, v in self.params)


def bearer(
    error: str | None = None,
    description: str | None = None,
    *,
    scope: str | None = None,
    resource_metadata: str | None = None,
    realm: str | None = None,
) -> Challenge:
    """The ``Bearer`` challenge; with no ``error`` it is the bare challenge of RFC 6750 §3.1."""
    params: list[tuple[str, str]] = []
    if realm:
        params.append(("realm", realm))
    if error:
        params.append(("error", error))
        if description:
            params.append(("error_description", description))
        if scope:
            params.append(("scope", scope))
    if resource_metadata:
        params.append(("resource_metadata", resource_metadata))
    return Challenge("Bearer", tuple(params))


def challenge(
    error: str | None = None,
    description: str | None = None,
    *,
    scope: str | None = None,
    resource_metadata: str | None = None,
    realm: str | None = None,
) -> str:
    """A ``WWW-Authenticate: Bearer`` value (``bearer(...)`` rendered)."""
    return bearer(error, description, scope=scope, resource_metadata=resource_metadata, realm=realm).render()


def challenges(decision: Decision, *, resource_metadata: str | None, realm: str | None) -> list[Challenge]:
    """The challenges a 401 or 403 answer carries (none for other statuses)."""
    if decision.status not in (401, 403):
        return []
    if decision.reason == MISSING_TOKEN:
        return [bearer(resource_metadata=resource_metadata, realm=realm)]
    error = decision.error or "invalid_token"
    scope = decision.scope if decision.status == 403 else None
    description = decision.description or error
    return [bearer(error, description, scope=scope, resource_metadata=resource_metadata, realm=realm)]


def _seconds(value: float) -> str:
    bounded = retry_seconds(value)  # a reset is a wait too; NaN says nothing, and 1 s is the least that does
    return str(math.ceil(bounded if bounded is not None else 1.0))


def rate_limit_headers(info: RateLimitInfo) -> Headers:
    """``RateLimit-Limit/-Remaining/-Reset`` (IETF draft) and ``RateLimit-Policy`` when known."""
    headers = [
        (b"ratelimit-limit", str(info.limit).encode()),
        (b"ratelimit-remaining", str(max(0, info.remaining)).encode()),
        (b"ratelimit-reset", _seconds(info.reset).encode()),
    ]
    if info.policy:
        headers.append((b"ratelimit-policy", info.policy.encode("latin-1", "replace")))
    return headers


def rpc_error(request_id: Any, code: int, message: str, data: dict[str, Any] | None = None) -> bytes:
    """A JSON-RPC 2.0 error response."""
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "error": error}).encode()


def error_body(decision: Decision) -> dict[str, Any]:
    """The OAuth error object of a refusal (RFC 6750 §3: ``error``, ``error_description``, ``scope``)."""
    if decision.reason == MISSING_TOKEN:
        return {"error_description": "authentication required"}
    error = decision.error or ("temporarily_unavailable" if decision.status == 503 else "invalid_token")
    body = {"error": error, "error_description": decision.description or error}
    if decision.scope and decision.status == 403:
        body["scope"] = decision.scope
    return body


def error_response(
    decision: Decision | None, *, resource_metadata: str | None = None, realm: str | None = None
) -> Response:
    """Status, headers and body for a refused decision (``None``: no credentials were presented).

    A body the middleware could not read is answered as the MCP transports answer one: a JSON-RPC
    error; every other refusal is an OAuth error object with its challenge.
    """
    headers: Headers = [_JSON, _NO_STORE]
    if decision is None:
        www = bearer(resource_metadata=resource_metadata, realm=realm).render()
        headers.append((b"www-authenticate", www.encode("latin-1", "replace")))
        return 401, headers, b'{"error_description": "authentication required"}'
    code = RPC_ERRORS.get(decision.reason or "")
    if code is not None:
        return decision.status, headers, rpc_error(None, code, decision.description or "invalid request")
    status = decision.status if decision.status in (400, 401, 403, 429, 503) else 401
    for c in challenges(decision._replace(status=status), resource_metadata=resource_metadata, realm=realm):
        headers.append((b"www-authenticate", c.render().encode("latin-1", "replace")))
    if status in (429, 503):
        retry = decision.retry_after
        if retry is None and decision.rate_limit is not None:
            retry = decision.rate_limit.reset
        headers.append((b"retry-after", _seconds(retry if retry is not None else 1).encode()))
    if decision.rate_limit is not None:
        headers.extend(rate_limit_headers(decision.rate_limit))
    return status, headers, json.dumps(error_body(decision._replace(status=status))).encode()


def frame_error(decision: Decision, request_id: Any) -> str:
    """A refused websocket message's JSON-RPC error: the HTTP answer's status and OAuth error in ``data``."""
    code = RPC_ERRORS.get(decision.reason or "")
    if code is not None:
        return rpc_error(request_id, code, decision.description or "invalid request").decode()
    body = error_body(decision)
    data = {"status": decision.status, **body}
    if decision.retry_after is not None:
        data["retry_after"] = decision.retry_after
    return rpc_error(request_id, AUTH_ERROR, str(body.get("error_description", "refused")), data).decode()


async def send_response(scope: Scope, send: Send, response: Response) -> None:
    """Answer an HTTP request; refuse a websocket handshake with the same response where the server can send one."""
    status, headers, body = response
    prefix = ""
    if scope["type"] == "websocket":
        if "websocket.http.response" not in scope.get("extensions", {}):
            await send({"type": "websocket.close", "code": 1008})  # before accept: the server answers 403
            return
        prefix = "websocket."
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": prefix + "http.response.start", "status": status, "headers": headers})
    await send({"type": prefix + "http.response.body", "body": body})


def with_headers(send: Send, extra: Headers) -> Send:
    """``send`` with ``extra`` headers added to the response start."""

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)

    return wrapped
