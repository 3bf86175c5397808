"""The chain with the MCP SDK (1.27.2+ and 2.x): a ``TokenVerifier``, and the middleware in front.

The SDK's own bearer backend keeps working behind ``ChainAuthMiddleware``: the
verifier returned by ``token_verifier`` answers it from the decision the
middleware already made for the request, so the chain runs once.

    chain = chain_from_config("auth.toml")
    server = MCPServer("demo", token_verifier=token_verifier(chain, resource_url=URL),
                       auth=AuthSettings(issuer_url=ISSUER, resource_server_url=URL,
                                         validate_token_resource=True))
    app = protect(server.streamable_http_app(), chain, server=server, resource_url=URL)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapps_auth.chain import VerifierChain
from fastapps_auth.integrations.asgi import metadata as asgi_metadata
from fastapps_auth.integrations.asgi.context import RequestScopedVerifier
from fastapps_auth.integrations.asgi.middleware import ChainAuthMiddleware
from fastapps_auth.integrations.asgi.needs import ChainNeeds
from fastapps_auth.integrations.asgi.tools import ToolResolver, exact_names

__all__ = ["metadata_url", "protect", "token_verifier", "tool_resolver"]


def token_verifier(chain: VerifierChain, *, resource_url: str | None = None) -> RequestScopedVerifier:
    """The chain as an MCP ``TokenVerifier``; ``resource_url`` binds the chain to it (RFC 8707) and sets
    ``AccessToken.resource`` from the audience that names it."""
    if resource_url:
        chain.bind_resource(resource_url)
    return RequestScopedVerifier(chain, resource_url=resource_url)


def metadata_url(resource_url: str) -> str:
    """The RFC 9728 protected-resource metadata URL of ``resource_url`` (the well-known suffix before its path)."""
    return asgi_metadata.metadata_url(resource_url)


def _is_fastmcp(server: Any) -> bool:
    from fastapps_auth.integrations.quiet_import import quiet_fastmcp_import

    try:
        with quiet_fastmcp_import():
            from fastmcp import FastMCP
    except ImportError:  # pragma: no cover - FastMCP is not installed
        return False
    return isinstance(server, FastMCP)


def tool_resolver(server: Any) -> ToolResolver:
    """How ``server`` resolves a called tool's name: FastMCP's own lookup, or the SDK's tool registry.

    The SDK's ``FastMCP`` (1.x) and ``MCPServer`` (2.x) dispatch on the exact registered name.
    """
    if _is_fastmcp(server):
        from fastapps_auth.integrations.fastmcp import tool_resolver as fastmcp_tools

        return fastmcp_tools(server)
    # The SDK's servers publish their tools only as list_tools(), which builds every tool's schema
    # model per call; the registry they dispatch on answers one name with a dict lookup.
    manager = getattr(server, "_tool_manager", None)
    if manager is None or not hasattr(manager, "get_tool"):
        raise TypeError(f"cannot resolve the tools of a {type(server).__name__}: pass resolve_tool= instead")
    return exact_names(lambda name: manager.get_tool(name) is not None)


def protect(
    app: Any,
    chain: VerifierChain,
    *,
    server: Any = None,
    resource_url: str | None = None,
    authorization_servers: Sequence[str] | None = None,
    resource_name: str | None = None,
    **options: Any,
) -> Any:
    """Put ``ChainAuthMiddleware`` outermost on a Starlette ``app`` (before its first request) and return it.

    ``server``: the MCP server behind ``app`` (the SDK's ``FastMCP``/``MCPServer``, or FastMCP), so
    per-tool rules apply to the tool it resolves a called name to; for FastMCP 4 this also adds the
    ``ToolRules`` middleware to it. ``resource_url`` binds the chain to the server (RFC 8707) and
    advertises its metadata. With ``authorization_servers``, ``app`` serves our RFC 9728 metadata for
    ``resource_url`` in place of the host's: URLs as written, ``scopes_supported`` the chain's server-wide
    scopes, ``resource_name``, and the ``dpop`` stage's algorithms. ``options`` are ``ChainAuthMiddleware``'s
    (``paths``, ``trusted_proxies``, ...).
    """
    if resource_url is not None:
        chain.bind_resource(resource_url)
        options.setdefault("resource_metadata_url", metadata_url(resource_url))
    if authorization_servers is not None:
        if resource_url is None:
            raise ValueError("authorization_servers needs resource_url: the metadata describes that resource")
        needs = ChainNeeds(chain)
        document = asgi_metadata.resource_metadata(
            resource_url,
            authorization_servers,
            scopes=needs.scopes(None),
            resource_name=resource_name,
            dpop_algorithms=needs.dpop_algorithms,
        )
        app.router.routes[:0] = asgi_metadata.metadata_routes(document)  # before the host's own
    if server is not None:
        resolve = tool_resolver(server)
        options.setdefault("resolve_tool", resolve)
        if _is_fastmcp(server) and hasattr(server, "get_tool_by_hash"):
            from fastapps_auth.integrations.fastmcp import ToolRules

            server.add_middleware(ToolRules(chain, resolve))
    app.add_middleware(ChainAuthMiddleware, chain=chain, **options)
    return app
