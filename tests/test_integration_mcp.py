"""The chain with the MCP SDK 1.x in the main venv (mcp 1.30: its bundled FastMCP) and FastMCP 2.14.

The 2.x/4.x versions of the same hosts are tested in ``tests/hosts`` (``make test-hosts``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from mcp.server.auth.settings import AuthSettings
from mcp.server.fastmcp import FastMCP as SDKFastMCP
from pydantic import AnyHttpUrl

from fastapps_auth import Stage, Verification, VerifierChain
from fastapps_auth.component import ComponentOptions
from fastapps_auth.integrations.mcp import metadata_url, protect, token_verifier
from fastapps_auth.stage import StageOptions
from fastapps_auth.stages.scopes import ScopesStage
from tests.hosts.support import ISSUER, RESOURCE, AsyncServer, Issuer, jwt_stage, raw, rpc

META = metadata_url(RESOURCE)


class Counting(Stage[StageOptions]):
    plugin_name: ClassVar[str] = "counting"
    options_model: ClassVar[type[ComponentOptions]] = StageOptions

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    async def __call__(self, v: Verification) -> None:
        self.calls += 1


async def test_sdk_server_behind_the_middleware_runs_the_chain_once() -> None:
    issuer = Issuer()
    counting = Counting()
    chain = VerifierChain(jwt_stage(issuer), ScopesStage(tools={"admin": ["admin"]}), counting)
    server = SDKFastMCP(
        "demo",
        token_verifier=token_verifier(chain, resource_url=RESOURCE),
        auth=AuthSettings(
            issuer_url=AnyHttpUrl(ISSUER),
            resource_server_url=AnyHttpUrl(RESOURCE),
            required_scopes=["read"],
            validate_token_resource=True,
        ),
        stateless_http=True,
    )
    app = protect(server.streamable_http_app(), chain, resource_url=RESOURCE)
    async with AsyncServer(app) as srv:
        ok = await raw(srv.url, issuer.mint("alice"))
        runs_for_one_request = counting.calls
        none = await raw(srv.url, None)
        denied = await raw(srv.url, issuer.mint("alice"), rpc("tools/call", {"name": "admin"}))
        no_read = await raw(srv.url, issuer.mint("alice", scope="other"))
    await chain.aclose()
    assert ok.status_code == 200
    assert runs_for_one_request == 1
    assert none.status_code == 401 and none.headers["www-authenticate"] == f'Bearer resource_metadata="{META}"'
    assert denied.status_code == 403 and 'scope="admin"' in denied.headers["www-authenticate"]
    assert no_read.status_code == 403  # the SDK's RequireAuthMiddleware, behind ours


async def test_fastmcp2_adapter_with_remote_auth_provider() -> None:
    from fastmcp import FastMCP
    from fastmcp.server.auth import RemoteAuthProvider
    from fastmcp.server.dependencies import get_access_token

    from fastapps_auth.integrations.fastmcp import as_fastmcp_verifier

    issuer = Issuer()
    chain = VerifierChain(jwt_stage(issuer))
    verifier = as_fastmcp_verifier(chain, base_url="http://127.0.0.1", required_scopes=["read"])
    mcp = FastMCP("demo", auth=RemoteAuthProvider(verifier, [AnyHttpUrl(ISSUER)], base_url="http://127.0.0.1"))

    @mcp.tool
    def whoami() -> str:
        at = get_access_token()
        return f"subject={at.subject if at else None}"

    app = protect(mcp.http_app(stateless_http=True), chain, resource_url=RESOURCE)
    call = rpc("tools/call", {"name": "whoami", "arguments": {}})
    async with AsyncServer(app) as srv:
        ok = await raw(srv.url, issuer.mint("alice"), call)
        bad = await raw(srv.url, "garbage")
    at = await verifier.verify_token(issuer.mint("bob"))  # outside a request, before the chain is closed
    await chain.aclose()
    assert ok.status_code == 200 and "subject=alice" in ok.text
    assert bad.status_code == 401 and 'error="invalid_token"' in bad.headers["www-authenticate"]
    assert at is not None and at.subject == "bob" and at.claims["sub"] == "bob"


class BindsChain(VerifierChain):
    """Records the resource URLs a host binds the chain to (``Stage.bind_resource``; the chain passes it on)."""

    def __init__(self) -> None:
        super().__init__(Counting())
        self.bound: list[str] = []

    def bind_resource(self, resource_url: str) -> None:
        self.bound.append(resource_url)
        super().bind_resource(resource_url)


def test_every_integration_that_knows_the_resource_url_binds_the_chain_to_it() -> None:
    from fastapps_auth.integrations.fastapps import WidgetMCPServer
    from fastapps_auth.integrations.fastmcp import as_fastmcp_verifier
    from tests.support.widgets import Public, build

    binds: dict[str, Callable[[VerifierChain], object]] = {
        "token_verifier": lambda c: token_verifier(c, resource_url=RESOURCE),
        "protect": lambda c: protect(SDKFastMCP("x").streamable_http_app(), c, resource_url=RESOURCE),
        "as_fastmcp_verifier": lambda c: as_fastmcp_verifier(c, resource_url=RESOURCE),
        "WidgetMCPServer": lambda c: WidgetMCPServer(
            "w", [build(Public)], auth_resource_server_url=RESOURCE, token_verifier=c
        ),
    }
    seen = {}
    for name, bind in binds.items():
        chain = BindsChain()
        bind(chain)
        seen[name] = chain.bound
    assert seen == {name: [RESOURCE] for name in binds}
