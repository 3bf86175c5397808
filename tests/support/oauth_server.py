"""A protected MCP SDK server on 127.0.0.1 trusting a dev issuer, for the OAuth flow tests.

``whoami`` answers the caller's subject, scopes, audience and acr; ``report`` needs the
``reports:read`` scope (a ``scopes`` stage rule: 403 with ``scope="reports:read"``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.settings import AuthSettings
from mcp.server.fastmcp import FastMCP
from pydantic import AnyHttpUrl

from fastapps_auth import VerifierChain
from fastapps_auth.dev_issuer import RunningIssuer
from fastapps_auth.integrations.mcp import protect, token_verifier
from fastapps_auth.stages.scopes import ScopesStage
from fastapps_auth.testing import BackgroundServer, jwt_stage

REPORT_SCOPE = "reports:read"


@dataclass(frozen=True)
class ProtectedServer:
    url: str  # the MCP endpoint, also the resource URL (RFC 8707) its tokens must be for
    chain: VerifierChain


def _app(issuer: RunningIssuer, resource: str, chain: VerifierChain) -> Any:
    server = FastMCP(
        "protected",
        token_verifier=token_verifier(chain, resource_url=resource),
        auth=AuthSettings(
            issuer_url=AnyHttpUrl(issuer.url), resource_server_url=AnyHttpUrl(resource), validate_token_resource=True
        ),
        stateless_http=True,
    )

    @server.tool()
    def whoami() -> dict[str, Any]:
        at = get_access_token()
        assert at is not None
        claims = getattr(at, "claims", None) or {}
        return {"subject": getattr(at, "subject", None), "scopes": at.scopes, "aud": claims.get("aud"),
                "acr": claims.get("acr")}  # fmt: skip

    @server.tool()
    def report() -> str:
        return "Q3: 42"

    return protect(server.streamable_http_app(), chain, resource_url=resource)


@contextmanager
def protected_server(issuer: RunningIssuer, **jwt_options: Any) -> Iterator[ProtectedServer]:
    """The server, serving until the block ends; its jwt stage requires ``aud`` = its resource URL."""
    holder: dict[str, ProtectedServer] = {}

    def build(base: str) -> Any:
        resource = f"{base}/mcp"
        jwt_options.setdefault("audience", resource)
        chain = VerifierChain(jwt_stage(issuer, **jwt_options), ScopesStage(tools={"report": [REPORT_SCOPE]}))
        holder["server"] = ProtectedServer(resource, chain)
        return _app(issuer, resource, chain)

    http = BackgroundServer(build, factory=True, on_stop=[lambda: holder["server"].chain.aclose()])
    with http:
        yield holder["server"]
