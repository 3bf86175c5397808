"""The chain with the MCP SDK (1.27.2+ and 2.x): a ``TokenVerifier``, and the middleware in front.

The SDK's own bearer backend keeps working behind ``ChainAuthMiddleware``: the
verifier returned by ``token_verifier`` answers it from the decision the
middleware already made for the request, so the chain runs once.

    chain = chain_from_config("auth.toml")
    server = MCPServer("demo", token_verifier=token_verifier(chain, resource_url=URL),
                       auth=AuthSettings(issuer_url=ISSUER, resource_server_url=URL,
                                         validate_token_resource=True))
    app = protect(server.streamable_http_app(), chain, resource_url=URL)
"""

from __future__ import annotations

from typing import Any

from fastapps_auth.chain import VerifierChain
from fastapps_auth.integrations.starlette import ChainAuthMiddleware, RequestScopedVerifier

__all__ = ["metadata_url", "protect", "token_verifier"]


def token_verifier(chain: VerifierChain, *, resource_url: str | None = None) -> RequestScopedVerifier:
    """The chain as an MCP ``TokenVerifier``; ``resource_url`` sets ``AccessToken.resource`` from a matching ``aud``."""
    return RequestScopedVerifier(chain, resource_url=resource_url)


def metadata_url(resource_url: str) -> str:
    """The RFC 9728 protected-resource metadata URL of ``resource_url`` (as the SDK builds it)."""
    from mcp.server.auth.routes import build_resource_metadata_url
    from pydantic import AnyHttpUrl

    return str(build_resource_metadata_url(AnyHttpUrl(resource_url)))


def protect(app: Any, chain: VerifierChain, *, resource_url: str | None = None, **options: Any) -> Any:
    """Put ``ChainAuthMiddleware`` outermost on a Starlette ``app`` (before its first request) and return it.

    ``options`` are ``ChainAuthMiddleware``'s (``paths``, ``trusted_proxies``, ``anonymous``, ...).
    """
    if resource_url is not None:
        options.setdefault("resource_metadata_url", metadata_url(resource_url))
    app.add_middleware(ChainAuthMiddleware, chain=chain, **options)
    return app
