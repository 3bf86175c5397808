"""The MCP body: read a JSON-RPC request within limits, find what it calls, replay it to the app.

A body is *readable* when it is strict UTF-8 JSON (RFC 8259: no ``NaN``, no BOM) within the
limits below. One that is not is refused (400, JSON-RPC -32700) rather than passed on: the
middleware could not tell which tool it calls, and the MCP SDK's own ``json.loads`` would fail
on it with a 500 and a traceback per request.
"""

from __future__ import annotations

import base64
import json
from typing import Any, NamedTuple

from starlette.requests import ClientDisconnect
from starlette.types import Message, Receive, Scope

from fastapps_auth.request import MAX_RPC_NAME_CHARS
from fastapps_auth.strict_json import reject_constant

#: JSON-RPC bodies (and websocket frames) are read up to this size by default; more is refused with 413.
DEFAULT_MAX_BODY = 1024 * 1024
#: Deepest nesting of arrays and objects accepted: far below where a recursive parser (CPython's
#: ``json``, the SDK's pydantic) runs out of stack, far above what an MCP message needs.
MAX_JSON_DEPTH = 128
#: Longest integer literal, in digits: under the 640 that CPython's int-str conversion limit can never be
#: set below, so a host parsing the same body never fails where we succeeded (and no quadratic conversion).
MAX_INT_DIGITS = 600

# Why a message is refused; the reasons are the ``Decision.reason`` the client's refusal records.
UNREADABLE = "unreadable_body"
UNDECODED = "unsupported_content_encoding"
TOO_LARGE = "body_too_large"
BATCHED_CALL = "batched_tool_call"
HEADER_MISMATCH = "header_mismatch"
#: The methods whose ``Mcp-Name`` header mirrors a member of ``params`` (2026-07-28 transport), and which.
NAMED_PARAMS = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}


class RpcTarget(NamedTuple):
    """What a JSON-RPC message asks for: its method, the tool and arguments of a ``tools/call``.

    ``refusal`` is set (one of the reasons above) when the message must not reach the app. ``name`` is
    what an ``Mcp-Name`` header mirrors (``params.name``, or ``params.uri`` of ``resources/read``); ``batch``
    is set for a JSON-RPC batch (whose ``method`` is ``"batch"``). A named
    tuple: one is built per request, at a third of a frozen dataclass's cost.
    """

    method: str | None = None
    tool: str | None = None
    arguments: Any = None
    request_id: Any = None
    refusal: str | None = None
    name: Any = None
    batch: bool = False


NOT_RPC = RpcTarget()


def json_post(scope: Scope) -> tuple[bool, bool]:
    """Whether a request's body is JSON (its first ``Content-Type``, the header the MCP SDK reads), and whether
    it has a ``Content-Encoding`` other than ``identity`` (we decode none): one pass over the headers."""
    json_type: bool | None = None
    encoded = False
    for name, value in scope.get("headers", ()):
        if name == b"content-type" and json_type is None:
            json_type = b"json" in value.lower()
        elif name == b"content-encoding" and value.strip().lower() not in (b"", b"identity"):
            encoded = True
    return bool(json_type), encoded


async def read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body, or ``None`` as soon as it exceeds ``limit`` bytes; raises ``ClientDisconnect``."""
    message = await receive()
    if message["type"] == "http.request" and not message.get("more_body", False):  # the usual: one message
        body: bytes = message.get("body", b"")
        return body if len(body) <= limit else None
    chunks: list[bytes] = []
    size = 0
    while True:
        if message["type"] != "http.request":
            raise ClientDisconnect
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)
        message = await receive()


def replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that yields ``body`` once, then defers to the original (for disconnects)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


def _bounded_int(literal: str) -> int:
    if len(literal) - literal.startswith("-") > MAX_INT_DIGITS:
        raise ValueError("integer literal too long")
    return int(literal)


#: The decoder of JSON-RPC bodies, built once (``json.loads`` with hooks builds a decoder per call).
_DECODER = json.JSONDecoder(parse_int=_bounded_int, parse_constant=reject_constant)


def _too_deep(value: Any) -> bool:
    """True when arrays and objects nest deeper than ``MAX_JSON_DEPTH``."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        if depth > MAX_JSON_DEPTH:
            return True
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False


def parse_json(data: bytes | str) -> Any:
    """The JSON value of ``data`` within the limits above; raises ``ValueError`` when it is not readable."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        value = _DECODER.decode(text)
    except RecursionError as exc:
        raise ValueError("nested too deeply") from exc
    # Nesting is counted only when there are enough brackets for it to matter (one C-level count).
    if isinstance(value, dict | list) and text.count("[") + text.count("{") > MAX_JSON_DEPTH and _too_deep(value):
        raise ValueError("nested too deeply")
    return value


def _name(value: Any) -> str | None:
    return value[:MAX_RPC_NAME_CHARS] if isinstance(value, str) else None


def rpc_message(data: bytes | str) -> RpcTarget:
    """What one JSON-RPC message (an HTTP body, a websocket frame) calls, or why it is refused.

    A batch is refused when it holds a ``tools/call`` (one decision cannot cover several tools;
    MCP no longer sends batches). The tool name is the raw string; the host resolves it.
    """
    try:
        msg = parse_json(data)
    except ValueError:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return RpcTarget(refusal=UNREADABLE)
    if isinstance(msg, list):
        calls = any(isinstance(m, dict) and m.get("method") == "tools/call" for m in msg)
        return RpcTarget(method="batch", refusal=BATCHED_CALL if calls else None, batch=True)
    if not isinstance(msg, dict):
        return NOT_RPC
    method = _name(msg.get("method"))
    params = msg.get("params")
    if method not in NAMED_PARAMS or not isinstance(params, dict):
        return RpcTarget(method=method, request_id=msg.get("id"))
    name = params.get(NAMED_PARAMS[method])
    if method != "tools/call":
        return RpcTarget(method, None, None, msg.get("id"), None, name)
    return RpcTarget(method, name, params.get("arguments"), msg.get("id"), None, name)  # positional: cheaper


def _header_value(value: str) -> str | None:
    """A mirrored header's value: as sent, or decoded from the ``=?base64?...?=`` form (``None``: undecodable)."""
    value = value.strip()
    if not (value.startswith("=?base64?") and value.endswith("?=")):
        return value
    try:
        return base64.b64decode(value[9:-2], validate=True).decode("utf-8")
    except ValueError:  # binascii.Error and UnicodeDecodeError are ValueErrors
        return None


def check_mirrors(target: RpcTarget, methods: tuple[str, ...], names: tuple[str, ...]) -> RpcTarget:
    """``target`` refused as ``HEADER_MISMATCH`` when ``Mcp-Method``/``Mcp-Name`` do not mirror its body.

    Checked only when the client sent them (a 2026-07-28 client): each at most once; ``Mcp-Method`` equal
    to the body's method; ``Mcp-Name`` present exactly for the methods of ``NAMED_PARAMS`` (when
    ``Mcp-Method`` is) and equal to the member it mirrors. A body refused for another reason stays refused.
    """
    if target.refusal is not None or not (methods or names):
        return target
    if len(methods) > 1 or len(names) > 1 or target.batch:  # the headers mirror one message
        return target._replace(refusal=HEADER_MISMATCH)
    if methods and _header_value(methods[0]) != target.method:
        return target._replace(refusal=HEADER_MISMATCH)
    named = target.method in NAMED_PARAMS
    if names:
        if not named or not isinstance(target.name, str) or _header_value(names[0]) != target.name:
            return target._replace(refusal=HEADER_MISMATCH)
    elif named and methods:
        return target._replace(refusal=HEADER_MISMATCH)  # a 2026 client names what it calls
    return target


def rpc_target(body: bytes) -> tuple[str | None, str | None, bool]:
    """(MCP method, tool name, ok) of a JSON-RPC body; ``ok`` is False for a body that would be refused."""
    target = rpc_message(body)
    return target.method, _name(target.tool), target.refusal is None
