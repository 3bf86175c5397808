"""What a refused request is answered with: RFC 6750 challenges, RateLimit headers, JSON and JSON-RPC errors.

A challenge is a scheme and its parameters in order (``Challenge``), rendered once per
``WWW-Authenticate`` header, so a response can carry more than one (a ``DPoP`` challenge beside
``Bearer``, RFC 9449) and a challenge more parameters (``acr_values``, ``max_age``, RFC 9470).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from typing import Any, NamedTuple

from starlette.types import Message, Scope, Send

from fastapps_auth.decision import Decision, RateLimitInfo
from fastapps_auth.errors import retry_seconds
from fastapps_auth.integrations.asgi.body import BATCHED_CALL, HEADER_MISMATCH, TOO_LARGE, UNDECODED, UNREADABLE
from fastapps_auth.stages.dpop import DPOP_ERRORS

Headers = list[tuple[bytes, bytes]]
#: Status, headers and body of a response the middleware sends itself.
Response = tuple[int, Headers, bytes]

#: JSON-RPC 2.0 codes: the body could not be parsed; it is not a request we pass on.
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
#: MCP 2026-07-28: an ``Mcp-Method``/``Mcp-Name`` header that does not mirror the body (HeaderMismatch).
HEADER_MISMATCH_ERROR = -32020
#: A websocket message refused by the chain (JSON-RPC's server-error range); ``data`` says why.
AUTH_ERROR = -32001
RPC_ERRORS = {
    UNREADABLE: PARSE_ERROR,
    UNDECODED: PARSE_ERROR,
    TOO_LARGE: INVALID_REQUEST,
    BATCHED_CALL: INVALID_REQUEST,
    HEADER_MISMATCH: HEADER_MISMATCH_ERROR,
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
    acr_values: str | None = None,
    max_age: int | None = None,
) -> Challenge:
    """The ``Bearer`` challenge (RFC 6750 §3); with no ``error`` it is the challenge to a request without a token.

    ``scope`` names every scope the request needs, with or without an error (MCP clients read it from the
    first 401 to choose what to ask for); ``acr_values`` and ``max_age`` are RFC 9470's step-up parameters.
    """
    params: list[tuple[str, str]] = []
    if realm:
        params.append(("realm", realm))
    if error:
        params.append(("error", error))
        if description:
            params.append(("error_description", description))
    params.extend(_requirements(scope, acr_values, max_age))
    if resource_metadata:
        params.append(("resource_metadata", resource_metadata))
    return Challenge("Bearer", tuple(params))


def _requirements(scope: str | None, acr_values: str | None, max_age: int | None) -> list[tuple[str, str]]:
    params = [("scope", scope)] if scope else []
    if acr_values:
        params.append(("acr_values", acr_values))
    if max_age is not None:
        params.append(("max_age", str(max_age)))
    return params


def dpop(
    algorithms: Sequence[str],
    error: str | None = None,
    description: str | None = None,
    *,
    scope: str | None = None,
    realm: str | None = None,
    acr_values: str | None = None,
    max_age: int | None = None,
) -> Challenge:
    """The ``DPoP`` challenge (RFC 9449 §7.1): the error when it is this scheme's, and the proof algorithms accepted."""
    params: list[tuple[str, str]] = [("realm", realm)] if realm else []
    if error:
        params.append(("error", error))
        if description:
            params.append(("error_description", description))
    params.extend(_requirements(scope, acr_values, max_age))
    params.append(("algs", " ".join(algorithms)))
    return Challenge("DPoP", tuple(params))


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


def challenges(
    decision: Decision,
    *,
    resource_metadata: str | None,
    realm: str | None,
    dpop_algorithms: Sequence[str] = (),
) -> list[Challenge]:
    """The challenges a 401 or 403 answer carries (none for other statuses).

    Always ``Bearer`` with ``resource_metadata`` and every scope the request needs; beside it, when the
    chain checks DPoP (``dpop_algorithms``), ``DPoP algs="..."``. The error goes on the challenge of the
    scheme the client used (RFC 9449 §7.1), and a DPoP proof's own errors on the DPoP one; a request
    without credentials gets no error at all.
    """
    if decision.status not in (401, 403):
        return []
    scope = decision.scope
    error = None if decision.reason == MISSING_TOKEN else decision.error or "invalid_token"
    description = (decision.description or error) if error else None
    request = decision.request
    on_dpop = (
        bool(dpop_algorithms)
        and error is not None
        and (error in DPOP_ERRORS or (request is not None and request.auth_scheme == "dpop"))
    )
    acr, age = decision.acr_values, decision.max_age
    found = [
        bearer(
            None if on_dpop else error,
            description,
            scope=scope,
            resource_metadata=resource_metadata,
            realm=realm,
            acr_values=None if on_dpop else acr,
            max_age=None if on_dpop else age,
        )
    ]
    if dpop_algorithms:
        found.append(
            dpop(
                dpop_algorithms,
                error if on_dpop else None,
                description,
                scope=scope,
                realm=realm,
                acr_values=acr if on_dpop else None,
                max_age=age if on_dpop else None,
            )
        )
    return found


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
    """The OAuth error object of a refusal: RFC 6750 §3's ``error``, ``error_description`` and ``scope``
    (on a 401 and a 403), and RFC 9470's ``acr_values`` and ``max_age`` of a step-up."""
    scoped = decision.scope and decision.status in (401, 403)
    if decision.reason == MISSING_TOKEN:
        body: dict[str, Any] = {"error_description": "authentication required"}
    else:
        error = decision.error or ("temporarily_unavailable" if decision.status == 503 else "invalid_token")
        body = {"error": error, "error_description": decision.description or error}
    if scoped:
        body["scope"] = decision.scope
    if decision.acr_values:
        body["acr_values"] = decision.acr_values
    if decision.max_age is not None:
        body["max_age"] = decision.max_age
    return body


def error_response(
    decision: Decision | None,
    *,
    resource_metadata: str | None = None,
    realm: str | None = None,
    dpop_algorithms: Sequence[str] = (),
    dpop_nonce: str | None = None,
) -> Response:
    """Status, headers and body for a refused decision (``None``: no credentials were presented).

    A body the middleware could not read is answered as the MCP transports answer one: a JSON-RPC
    error; every other refusal is an OAuth error object with its challenges (``challenges``).
    ``dpop_nonce`` is sent as ``DPoP-Nonce`` (RFC 9449 §9), for the client's next proof.
    """
    headers: Headers = [_JSON, _NO_STORE]
    if dpop_nonce:
        headers.append((b"dpop-nonce", dpop_nonce.encode("latin-1", "replace")))
    if decision is None:
        www = bearer(resource_metadata=resource_metadata, realm=realm).render()
        headers.append((b"www-authenticate", www.encode("latin-1", "replace")))
        return 401, headers, b'{"error_description": "authentication required"}'
    code = RPC_ERRORS.get(decision.reason or "")
    if code is not None:
        return decision.status, headers, rpc_error(None, code, decision.description or "invalid request")
    status = decision.status if decision.status in (400, 401, 403, 429, 503) else 401
    decision = decision._replace(status=status)
    for c in challenges(decision, resource_metadata=resource_metadata, realm=realm, dpop_algorithms=dpop_algorithms):
        headers.append((b"www-authenticate", c.render().encode("latin-1", "replace")))
    if status in (429, 503):
        retry = decision.retry_after
        if retry is None and decision.rate_limit is not None:
            retry = decision.rate_limit.reset
        headers.append((b"retry-after", _seconds(retry if retry is not None else 1).encode()))
    if decision.rate_limit is not None:
        headers.extend(rate_limit_headers(decision.rate_limit))
    return status, headers, json.dumps(error_body(decision)).encode()


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
