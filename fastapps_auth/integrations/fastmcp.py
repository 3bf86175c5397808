"""The chain with FastMCP (2.11+ and 4.x): its ``TokenVerifier``, and its resolution of tool names.

    verifier = as_fastmcp_verifier(chain, base_url="https://api.example.com", resource_url=".../mcp")
    mcp = FastMCP("demo", auth=RemoteAuthProvider(verifier, [ISSUER], base_url=...))
    app = protect(mcp.http_app(), chain, server=mcp, resource_url=".../mcp")   # from integrations.mcp

Behind ``ChainAuthMiddleware`` the verifier answers from the request's decision, so the chain
runs once per request. FastMCP 4 gives a tool several names (a mount's namespace prefix, the
hashed alias ``__<12 hex>_<name>`` it publishes in ``_meta.fastmcp.tool_hash``, the ``call_tool``
proxy of its search transforms): ``tool_resolver`` asks FastMCP which tool a name is, the way
FastMCP's own ``AuthMiddleware`` does, so per-tool rules follow the tool.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapps_auth.chain import VerifierChain
from fastapps_auth.integrations.asgi.context import RequestScopedVerifier, current_decision, request_decision
from fastapps_auth.integrations.asgi.needs import without_dpop
from fastapps_auth.integrations.asgi.tools import ToolResolver
from fastapps_auth.integrations.quiet_import import quiet_fastmcp_import
from fastapps_auth.request import RequestInfo

with quiet_fastmcp_import():
    from fastmcp.server.auth import AccessToken as FastMCPAccessToken
    from fastmcp.server.auth import TokenVerifier
    from fastmcp.server.middleware import Middleware

__all__ = ["ChainTokenVerifier", "ToolRules", "as_fastmcp_verifier", "tool_resolver"]


class ChainTokenVerifier(TokenVerifier):  # type: ignore[misc, unused-ignore]
    """A FastMCP ``TokenVerifier`` backed by a ``VerifierChain``; never raises."""

    def __init__(
        self,
        chain: VerifierChain,
        *,
        base_url: str | None = None,
        required_scopes: Sequence[str] | None = None,
        resource_url: str | None = None,
    ) -> None:
        super().__init__(base_url=base_url, required_scopes=list(required_scopes or []))
        self.chain = chain
        if resource_url:
            chain.bind_resource(resource_url)
        self._verifier = RequestScopedVerifier(chain, resource_url=resource_url)

    async def verify_token(self, token: str) -> Any:
        at = await self._verifier.verify_token(token)
        if at is None:
            return None
        data = at.model_dump()
        data["claims"] = data.get("claims") or {}
        return FastMCPAccessToken(**data)


def as_fastmcp_verifier(
    chain: VerifierChain,
    *,
    base_url: str | None = None,
    required_scopes: Sequence[str] | None = None,
    resource_url: str | None = None,
) -> ChainTokenVerifier:
    """Wrap ``chain`` for FastMCP's ``auth=`` (alone, or inside ``RemoteAuthProvider``)."""
    return ChainTokenVerifier(chain, base_url=base_url, required_scopes=required_scopes, resource_url=resource_url)


async def _no_tool(name: str, *, version: Any = None) -> None:
    return None


async def _is_proxy(server: Any, name: str) -> bool:
    """True when ``name`` is the ``call_tool`` proxy of one of the server's search transforms (FastMCP 4)."""
    from fastmcp.server.transforms.search.base import BaseSearchTransform  # type: ignore[import-not-found, unused-ignore]

    for transform in server.transforms:
        if isinstance(transform, BaseSearchTransform):
            found = await transform.get_tool(name, _no_tool)
            properties = (getattr(found, "parameters", None) or {}).get("properties", {})
            if "name" in properties and "arguments" in properties:  # the proxy, not the search tool
                return True
    return False


def tool_resolver(server: Any) -> ToolResolver:
    """The name FastMCP knows a called tool by (``None``: no such tool), through FastMCP's own lookup.

    FastMCP 4: a display name, then a hashed alias (``get_tool``, then ``get_tool_by_hash``, as
    FastMCP's ``call_tool`` and ``AuthMiddleware`` do); a search transform's ``call_tool`` proxy is
    its target. FastMCP 2: the name the server (with its mounted servers) has.
    Before the token is verified FastMCP cannot see it, so a tool that only an authenticated
    request may see (its own ``auth=`` check) is not found here; ``ToolRules`` checks it in the host.
    """
    if not hasattr(server, "get_tool_by_hash"):
        from fastmcp.exceptions import NotFoundError

        async def resolve_v2(name: str, arguments: Any) -> str | None:
            try:
                await server.get_tool(name)
            except NotFoundError:
                return None
            return name

        return resolve_v2

    from fastmcp.server.providers.addressing import parse_hashed_backend_name  # type: ignore[import-not-found, unused-ignore]

    async def resolve(name: str, arguments: Any, *, through_proxy: bool = True) -> str | None:
        tool = await server.get_tool(name)
        if tool is None and (hashed := parse_hashed_backend_name(name)) is not None:
            tool = await server.get_tool_by_hash(*hashed)
        if tool is None:
            return None
        if server.transforms and await _is_proxy(server, tool.name):
            target = arguments.get("name") if isinstance(arguments, dict) else None
            if not through_proxy or not isinstance(target, str):
                return None  # FastMCP refuses a proxy calling a proxy; a call naming nothing runs nothing
            return await resolve(target, arguments.get("arguments"), through_proxy=False)
        return str(tool.name)

    return resolve


class ToolRules(Middleware):  # type: ignore[misc, unused-ignore]
    """FastMCP middleware: every tool FastMCP dispatches is one the request's decision covers, or is decided.

    Runs inside FastMCP, after its own resolution with the verified token, for every
    ``call_tool`` (a proxy's inner call too). When the resolved tool is the one the
    middleware's decision was made for, the call goes on; otherwise (a tool hidden before the
    token was known, a proxy the HTTP layer did not recognise, a tool calling another) the
    chain decides for that tool, and a refusal is FastMCP's authorization error.
    """

    def __init__(self, chain: VerifierChain, resolve: ToolResolver) -> None:
        self.chain = chain
        self.resolve = resolve
        self._proven = without_dpop(chain)

    async def on_call_tool(self, context: Any, call_next: Any) -> Any:
        if not _over_http():
            return await call_next(context)  # stdio: no bearer token, as FastMCP's own auth checks say
        name, arguments = context.message.name, context.message.arguments
        tool = await self.resolve(name, arguments)
        decision = current_decision()
        request = decision.request if decision is not None else None
        if decision is not None and decision.allowed and request is not None and request.tool_name == tool:
            return await call_next(context)
        held = request_decision.get()
        token = held.token if held is not None else _token_of_request()
        info = (request or RequestInfo())._replace(mcp_method="tools/call", tool_name=tool)
        # The middleware allowed this request: its DPoP proof is verified, and checking it again would be a replay.
        chain = self._proven if decision is not None and decision.allowed else self.chain
        decided = await chain.evaluate(token or "", request=info)
        if not decided.allowed:
            raise _authorization_error(decided.scope, decided.description or "not authorized")
        return await call_next(context)


def _over_http() -> bool:
    from fastmcp.server.dependencies import get_http_request

    try:
        get_http_request()
    except RuntimeError:
        return False
    return True


def _token_of_request() -> str | None:
    """The raw bearer token FastMCP verified for this request (outside the middleware)."""
    from fastmcp.server.dependencies import get_access_token

    at = get_access_token()
    return at.token if at is not None else None


def _authorization_error(scope: str | None, message: str) -> Exception:
    """FastMCP 4's authorization error (``InsufficientScopeError`` naming the scopes); FastMCP 2's tool error."""
    from fastmcp import exceptions

    if scope and hasattr(exceptions, "InsufficientScopeError"):
        error: Exception = exceptions.InsufficientScopeError(scope.split(), message=message)
    elif hasattr(exceptions, "AuthorizationError"):
        error = exceptions.AuthorizationError(message)
    else:
        error = exceptions.ToolError(message)
    return error
