"""The request headers the middleware reads, in one pass: credentials, DPoP proofs, the public URL, MCP's mirrors.

- ``Authorization``: the ``Bearer`` scheme, and ``DPoP`` (RFC 9449) when the chain checks proofs;
  any other scheme, or more than one ``Authorization`` header, is no credential the chain can use.
- ``DPoP``: every value, in order (the ``dpop`` stage refuses anything but exactly one).
- The public URL a DPoP proof's ``htu`` names: the ``Host`` the client addressed, or, when the peer is a
  trusted proxy, its ``X-Forwarded-Proto`` and ``X-Forwarded-Host`` (the last value of each: the one the
  nearest proxy set).
- ``Mcp-Method`` and ``Mcp-Name`` (the 2026-07-28 transport), checked against the body in ``body``.
"""

from __future__ import annotations

from typing import NamedTuple
from urllib.parse import quote

from starlette.types import Scope

#: Characters a path keeps unescaped in the public URL (RFC 3986 pchar and "/").
_PATH_SAFE = "/:@!$&'()*+,;=~"
_RARE = frozenset({b"dpop", b"x-forwarded-proto", b"x-forwarded-host", b"mcp-method", b"mcp-name"})


class RequestHeaders(NamedTuple):
    """The values of the headers above, each in the order received (latin-1 decoded, as ASGI gives bytes)."""

    authorization: tuple[str, ...] = ()
    dpop: tuple[str, ...] = ()
    host: str | None = None
    forwarded_proto: str | None = None
    forwarded_host: str | None = None
    mcp_method: tuple[str, ...] = ()
    mcp_name: tuple[str, ...] = ()


def read_headers(scope: Scope) -> RequestHeaders:
    """The headers above from ``scope``, in one pass over its header list (the common ones first)."""
    authorization: list[str] = []
    host: str | None = None
    rest: list[tuple[bytes, bytes]] | None = None
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            authorization.append(value.decode("latin-1"))
        elif name == b"host":
            if host is None:
                host = value.decode("latin-1").strip()
        elif name in _RARE:
            if rest is None:
                rest = []
            rest.append((name, value))
    if rest is None:
        return RequestHeaders(tuple(authorization), (), host)
    found: dict[bytes, list[str]] = {}
    for name, value in rest:
        found.setdefault(name, []).append(value.decode("latin-1"))
    return RequestHeaders(
        authorization=tuple(authorization),
        dpop=tuple(v.strip() for v in found.get(b"dpop", ())),
        host=host,
        forwarded_proto=_last(found.get(b"x-forwarded-proto")),
        forwarded_host=_last(found.get(b"x-forwarded-host")),
        mcp_method=tuple(found.get(b"mcp-method", ())),
        mcp_name=tuple(found.get(b"mcp-name", ())),
    )


def _last(values: list[str] | None) -> str | None:
    """The last comma-separated value of the last header line (a proxy that appends puts its own last)."""
    if not values:
        return None
    last = values[-1].rsplit(",", 1)[-1].strip()
    return last or None


def credentials(headers: RequestHeaders, *, dpop: bool) -> tuple[str, str] | None:
    """``(scheme, token)`` of the one ``Authorization`` header, scheme lower case (``bearer``, or ``dpop``
    when ``dpop``); ``None`` when there is no such credential."""
    if len(headers.authorization) != 1:
        return None
    scheme, _, token = headers.authorization[0].partition(" ")  # ASGI servers strip header values
    scheme = scheme.lower()
    if scheme == "bearer" or (dpop and scheme == "dpop"):
        return scheme, token.strip()
    return None


def public_url(scope: Scope, headers: RequestHeaders, *, behind_proxy: bool) -> str:
    """The URL the client addressed, without query or fragment (``behind_proxy``: believe X-Forwarded-*)."""
    scheme = str(scope.get("scheme", "http"))
    host = headers.host
    if behind_proxy:
        if headers.forwarded_proto:
            scheme = headers.forwarded_proto.lower()
        if headers.forwarded_host:
            host = headers.forwarded_host
    if not host:
        server = scope.get("server")
        host = f"{server[0]}:{server[1]}" if server and server[1] is not None else str(server[0]) if server else ""
    raw = scope.get("raw_path")  # the path as the client sent it, percent-encoded
    path = raw.decode("latin-1") if raw else quote(scope.get("path", "") or "/", safe=_PATH_SAFE)
    root: str = scope.get("root_path", "")
    if root and not path.startswith(root):
        path = quote(root, safe=_PATH_SAFE) + path  # a server given the path below a root path a proxy removed
    return f"{scheme}://{host}{path}"
