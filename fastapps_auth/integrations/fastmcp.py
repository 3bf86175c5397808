"""The chain as a FastMCP ``TokenVerifier`` (FastMCP 2.11+ and 4.x expect their own subclass).

    verifier = as_fastmcp_verifier(chain, base_url="https://api.example.com")
    mcp = FastMCP("demo", auth=RemoteAuthProvider(verifier, [ISSUER], base_url=...))
    app = protect(mcp.http_app(), chain, resource_url=".../mcp")   # from integrations.mcp

Behind ``ChainAuthMiddleware`` the verifier answers from the request's decision,
so the chain runs once per request.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastmcp.server.auth import AccessToken as FastMCPAccessToken
from fastmcp.server.auth import TokenVerifier

from fastapps_auth.chain import VerifierChain
from fastapps_auth.integrations.starlette import RequestScopedVerifier

__all__ = ["ChainTokenVerifier", "as_fastmcp_verifier"]


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
