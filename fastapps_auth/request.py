"""What the HTTP layer knows about the request being authenticated.

The middleware sets it in a context variable; stages read it through the
``Verification`` they are given (``v.request``), never from the framework.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import NamedTuple

#: Characters of an MCP method or tool name the HTTP layer keeps from a JSON-RPC body (longer ones are cut).
MAX_RPC_NAME_CHARS = 200


class RequestInfo(NamedTuple):
    """Method, path, client address and, for JSON-RPC ``tools/call``, the MCP tool name.

    Immutable; a named tuple because the middleware builds one per request (a third of a frozen
    dataclass's cost), like ``Decision``. ``info._replace(tool_name=...)`` makes a changed copy.

    ``url`` is the request's public URL without query or fragment (as the client addressed it, behind
    trusted proxies too), filled in by the middleware when the chain has a ``dpop`` stage, the stage that
    reads it; ``auth_scheme`` the lower-case scheme of the ``Authorization`` header (``bearer``,
    ``dpop``); ``dpop_proofs`` every ``DPoP`` header value, in order (RFC 9449 wants one).
    """

    method: str | None = None
    path: str | None = None
    client_ip: str | None = None
    mcp_method: str | None = None
    tool_name: str | None = None
    url: str | None = None
    auth_scheme: str | None = None
    dpop_proofs: tuple[str, ...] = ()


current_request: ContextVar[RequestInfo | None] = ContextVar("fastapps_auth_request", default=None)


@contextmanager
def request_context(info: RequestInfo) -> Iterator[RequestInfo]:
    """Make ``info`` the current request for verifications run inside the block."""
    token = current_request.set(info)
    try:
        yield info
    finally:
        current_request.reset(token)
