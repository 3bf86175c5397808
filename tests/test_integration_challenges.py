"""What a client is told, over real HTTP with WidgetMCPServer: challenges naming every scope an operation needs,
step-up, scope hierarchies for widget scopes, "a token never worse off than none", the 2026-07-28 mirrored
headers, RFC 9728 metadata and the audience bound to the server's URL."""

from __future__ import annotations

import base64
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapps import BaseWidget, auth_required, optional_auth

from fastapps_auth import Stage, VerifierChain
from fastapps_auth.dev_issuer import RunningIssuer
from fastapps_auth.dev_issuer.server import BackgroundServer
from fastapps_auth.integrations.fastapps import WidgetMCPServer
from fastapps_auth.stages.dpop import DPoPStage
from fastapps_auth.stages.scopes import ScopesStage
from fastapps_auth.testing import start_issuer
from tests.hosts.support import ISSUER, MCP_HEADERS, RESOURCE, AsyncServer, Issuer, jwt_stage, raw, rpc
from tests.support.mcp_client import call
from tests.support.widgets import NoInput, Protected, Public, build

META = "http://127.0.0.1/.well-known/oauth-protected-resource/mcp"
CALLS: list[str] = []


@auth_required(scopes=["reports:read"])
class Reports(BaseWidget):  # type: ignore[misc]  # fastapps ships no type information: BaseWidget is Any
    identifier = "reports"
    title = "Reports"
    input_schema = NoInput

    async def execute(self, input_data: Any, context: Any = None, user: Any = None) -> dict[str, Any]:
        CALLS.append("reports")
        return {"scopes": user.scopes}


@optional_auth(scopes=["premium"])
class Tiered(BaseWidget):  # type: ignore[misc]  # fastapps ships no type information: BaseWidget is Any
    identifier = "tiered"
    title = "Tiered"
    input_schema = NoInput

    async def execute(self, input_data: Any, context: Any = None, user: Any = None) -> dict[str, Any]:
        return {"tier": "premium" if user.is_authenticated else "basic"}


def server(issuer: Issuer, *stages: Any, **options: Any) -> tuple[WidgetMCPServer, VerifierChain]:
    chain = VerifierChain(jwt_stage(issuer), *stages)
    built = WidgetMCPServer(
        "reports-server",
        [build(w) for w in (Reports, Tiered, Public, Protected)],
        auth_issuer_url=ISSUER,
        auth_resource_server_url=RESOURCE,
        token_verifier=chain,
        **options,
    )
    return built, chain


def call_tool(name: str) -> dict[str, Any]:
    return rpc("tools/call", {"name": name, "arguments": {}})


async def test_every_refusal_names_all_the_scopes_the_operation_needs() -> None:
    issuer = Issuer()
    app, chain = server(issuer, auth_required_scopes=["user"])
    async with AsyncServer(app.get_app()) as srv:
        none = await raw(srv.url, None)
        lacking_widget = await raw(srv.url, issuer.mint(scope="user"), call_tool("reports"))
        lacking_both = await raw(srv.url, issuer.mint(scope="other"), call_tool("reports"))
        expired = await raw(srv.url, issuer.mint(scope="user", now=1_000_000_000), call_tool("reports"))
        allowed = await raw(srv.url, issuer.mint(scope="user reports:read"), call_tool("reports"))
    await chain.aclose()
    # No token: no error, the server-wide scopes (the body is not read before a token is presented).
    assert none.status_code == 401
    assert none.headers["www-authenticate"] == f'Bearer scope="user", resource_metadata="{META}"'
    assert none.json() == {"error_description": "authentication required", "scope": "user"}
    for refused in (lacking_widget, lacking_both):
        assert refused.status_code == 403
        www = refused.headers["www-authenticate"]
        assert www.startswith('Bearer error="insufficient_scope", error_description="the token lacks')
        assert www.endswith(f'scope="user reports:read", resource_metadata="{META}"')
        assert refused.json()["scope"] == "user reports:read"
    assert lacking_widget.json()["error_description"] == "the token lacks the required scope: reports:read"
    assert expired.status_code == 401 and 'error="invalid_token"' in expired.headers["www-authenticate"]
    assert 'scope="user reports:read"' in expired.headers["www-authenticate"]
    assert expired.json()["scope"] == "user reports:read"
    assert allowed.status_code == 200


async def test_a_widget_scope_refusal_is_a_403_before_the_widget_runs_and_its_own_check_stays() -> None:
    issuer = Issuer()
    app, chain = server(issuer)
    CALLS.clear()
    async with AsyncServer(app.get_app()) as srv:
        refused = await raw(srv.url, issuer.mint(scope="read"), call_tool("reports"))
        ok = await call(srv.url, issuer.mint(scope="reports:read"), "reports")
    await chain.aclose()
    assert refused.status_code == 403 and 'scope="reports:read"' in refused.headers["www-authenticate"]
    assert CALLS == ["reports"]  # only the allowed call ran
    assert ok.structuredContent == {"scopes": ["reports:read"]}


async def test_step_up_is_a_401_with_acr_values_and_max_age() -> None:
    issuer = Issuer()
    rule = {"reports": {"scopes": ["reports:read"], "acr_values": ["mfa"], "max_age": 300}}
    app, chain = server(issuer, ScopesStage(tools=rule))
    async with AsyncServer(app.get_app()) as srv:
        weak = await raw(srv.url, issuer.mint(scope="reports:read", acr="pwd"), call_tool("reports"))
    await chain.aclose()
    assert weak.status_code == 401
    assert weak.headers["www-authenticate"] == (
        'Bearer error="insufficient_user_authentication", '
        'error_description="this tool needs a stronger or more recent authentication", '
        f'scope="reports:read", acr_values="mfa", max_age="300", resource_metadata="{META}"'
    )
    assert weak.json() == {
        "error": "insufficient_user_authentication",
        "error_description": "this tool needs a stronger or more recent authentication",
        "scope": "reports:read",
        "acr_values": "mfa",
        "max_age": 300,
    }


@pytest.mark.parametrize(
    ("options", "granted"),
    [
        ({"scope_strategy": "hierarchic"}, "reports"),
        ({"scope_strategy": "wildcard"}, "reports:*"),
        ({"scope_implies": {"admin": ["reports:read"]}}, "admin"),
    ],
)
async def test_widget_scopes_follow_the_servers_scope_strategy(options: dict[str, Any], granted: str) -> None:
    issuer = Issuer()
    app, chain = server(issuer, **options)
    async with AsyncServer(app.get_app()) as srv:
        ok = await call(srv.url, issuer.mint(scope=granted), "reports")
        refused = await raw(srv.url, issuer.mint(scope="files"), call_tool("reports"))
    await chain.aclose()
    # the widget's own exact check agrees: it sees the scope the policy grants
    assert not ok.isError and ok.structuredContent == {"scopes": [granted, "reports:read"]}
    assert refused.status_code == 403


async def test_a_token_never_makes_a_client_worse_off_than_no_token() -> None:
    """``anonymous="allow"`` + server-wide ``user``: what anonymous clients may do, any valid token may do."""
    issuer = Issuer()
    app, chain = server(issuer, auth_required_scopes=["user"], anonymous="allow")
    without_user = issuer.mint(scope="other")
    async with AsyncServer(app.get_app()) as srv:
        anon_public = await call(srv.url, None, "public")
        token_public = await call(srv.url, without_user, "public")
        anon_tiered = await call(srv.url, None, "tiered")
        token_tiered = await call(srv.url, without_user, "tiered")
        premium = await call(srv.url, issuer.mint(scope="premium"), "tiered")
        listing = await raw(srv.url, without_user, rpc("tools/list"))
        required = await raw(srv.url, without_user, call_tool("protected"))
        anon_required = await raw(srv.url, None, call_tool("reports"))
        invalid = await raw(srv.url, without_user + "x", call_tool("public"))
    await chain.aclose()
    assert anon_public.structuredContent == {"authenticated": False}
    assert token_public.structuredContent == {"authenticated": True}
    assert anon_tiered.structuredContent == token_tiered.structuredContent == {"tier": "basic"}
    assert premium.structuredContent == {"tier": "premium"}
    assert listing.status_code == 200
    # Widgets that require authentication still require the server's scopes (and their own).
    assert required.status_code == 403 and 'scope="user"' in required.headers["www-authenticate"]
    assert anon_required.status_code == 401
    assert 'scope="user reports:read"' in anon_required.headers["www-authenticate"]
    # A token that fails authentication is refused everywhere: its client learns to get a new one.
    assert invalid.status_code == 401 and 'error="invalid_token"' in invalid.headers["www-authenticate"]


async def post(url: str, token: str | None, body: Any, headers: dict[str, str]) -> httpx.Response:
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(timeout=30) as http:
        return await http.post(f"{url}/mcp", json=body, headers={**MCP_HEADERS, **auth, **headers})


async def test_mirrored_headers_that_do_not_match_the_body_are_refused_before_any_tool_runs() -> None:
    issuer = Issuer()
    app, chain = server(issuer, anonymous="allow")
    token = issuer.mint(scope="reports:read")
    b64 = "=?base64?" + base64.b64encode(b"reports").decode() + "?="
    CALLS.clear()
    async with AsyncServer(app.get_app()) as srv:
        lying = await post(srv.url, token, call_tool("reports"), {"Mcp-Method": "tools/call", "Mcp-Name": "public"})
        wrong_method = await post(srv.url, token, call_tool("reports"), {"Mcp-Method": "tools/list"})
        unnamed = await post(srv.url, token, call_tool("reports"), {"Mcp-Method": "tools/call"})
        bad_token = await post(srv.url, "bad", call_tool("reports"), {"Mcp-Method": "tools/list"})
        anonymous = await post(srv.url, None, call_tool("public"), {"Mcp-Method": "tools/list"})
        matching = await post(srv.url, token, call_tool("reports"), {"Mcp-Method": "tools/call", "Mcp-Name": b64})
        listing = await post(srv.url, token, rpc("tools/list"), {"Mcp-Method": "tools/list"})
        plain = await post(srv.url, token, call_tool("reports"), {})
    await chain.aclose()
    for refused in (lying, wrong_method, unnamed, anonymous):
        assert refused.status_code == 400
        assert refused.json()["error"]["code"] == -32020
    assert bad_token.status_code == 401  # the token is checked first: one decision, naming who sent it
    assert CALLS == ["reports", "reports"]  # the matching and the header-less call, nothing refused
    assert matching.status_code == listing.status_code == plain.status_code == 200


async def test_protected_resource_metadata() -> None:
    issuer = Issuer()
    app, chain = server(issuer, DPoPStage(algorithms=["ES256", "EdDSA"]), auth_required_scopes=["user"])
    async with AsyncServer(app.get_app()) as srv, httpx.AsyncClient() as http:
        document = (await http.get(f"{srv.url}/.well-known/oauth-protected-resource/mcp")).json()
        challenge = (await raw(srv.url, None)).headers.get_list("www-authenticate")
    await chain.aclose()
    assert document == {
        "resource": RESOURCE,
        "authorization_servers": [ISSUER],
        "bearer_methods_supported": ["header"],
        "scopes_supported": ["user"],
        "resource_name": "reports-server",
        "dpop_signing_alg_values_supported": ["ES256", "EdDSA"],
    }
    assert challenge == [f'Bearer scope="user", resource_metadata="{META}"', 'DPoP scope="user", algs="ES256 EdDSA"']


@pytest.fixture
def dev_issuer() -> Iterator[RunningIssuer]:
    running = start_issuer()
    yield running
    running.stop()


def test_a_server_at_the_root_with_a_root_issuer_keeps_both_urls_as_written(dev_issuer: RunningIssuer) -> None:
    """Served at ``/.well-known/oauth-protected-resource``, with no ``/`` added to either URL (pydantic's would)."""

    def build_app(base: str) -> Any:
        app = WidgetMCPServer(
            "root", [build(Protected)], auth_issuer_url=dev_issuer.url, auth_resource_server_url=base, path="/"
        )
        return app.get_app()

    with BackgroundServer(build_app, factory=True) as srv, httpx.Client(timeout=10) as http:
        document = http.get(f"{srv.url}/.well-known/oauth-protected-resource").json()
        challenge = http.post(srv.url, json=rpc("tools/list"), headers=MCP_HEADERS).headers["www-authenticate"]
    assert dev_issuer.url == dev_issuer.metadata()["issuer"] and not dev_issuer.url.endswith("/")
    assert document["resource"] == srv.url and document["authorization_servers"] == [dev_issuer.url]
    assert challenge == f'Bearer resource_metadata="{srv.url}/.well-known/oauth-protected-resource"'


async def test_the_audience_is_bound_to_the_servers_url_by_default(dev_issuer: RunningIssuer) -> None:
    """``auth_issuer_url`` without ``auth_audience``: only tokens for ``auth_resource_server_url`` (RFC 8707)."""
    app = WidgetMCPServer(
        "bound", [build(Protected)], auth_issuer_url=dev_issuer.url, auth_resource_server_url=RESOURCE
    )
    async with AsyncServer(app.get_app()) as srv:
        mine = await call(srv.url, dev_issuer.mint("alice", audience=RESOURCE), "protected")
        canonical = await call(srv.url, dev_issuer.mint("bob", audience="HTTP://127.0.0.1:80/mcp/"), "protected")
        elsewhere = await raw(srv.url, dev_issuer.mint("eve", audience="http://127.0.0.1/other"))
        the_old_default = await raw(srv.url, dev_issuer.mint("eve", audience="fastapps-auth-dev"))
    assert mine.structuredContent == {"subject": "alice"}
    assert canonical.structuredContent == {"subject": "bob"}
    assert elsewhere.status_code == the_old_default.status_code == 401
    assert app.chain is not None
    await app.chain.aclose()


async def test_the_middlewares_resource_url_binds_the_audience_and_names_the_metadata() -> None:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from fastapps_auth.integrations.asgi import ChainAuthMiddleware
    from fastapps_auth.registry import load

    issuer = Issuer()
    jwt = load("jwt")(issuer_url=ISSUER, jwks=issuer.jwks, algorithms=["RS256"])
    assert isinstance(jwt, Stage)
    chain = VerifierChain(jwt)

    async def ok(request: Any) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/mcp", ok, methods=["POST"])])
    app.add_middleware(ChainAuthMiddleware, chain=chain, resource_url="http://127.0.0.1/mcp")
    async with AsyncServer(app) as srv:
        mine = await raw(srv.url, issuer.mint(aud="http://127.0.0.1/mcp"))
        other = await raw(srv.url, issuer.mint(aud="http://127.0.0.1/other"))
    await chain.aclose()
    assert mine.status_code == 200
    assert other.status_code == 401 and f'resource_metadata="{META}"' in other.headers["www-authenticate"]


def test_importing_the_fastapps_integration_shows_no_authlib_deprecation_but_other_warnings_still_show() -> None:
    code = (
        "import warnings\n"
        "import fastapps_auth.integrations.fastapps\n"
        "warnings.warn('a warning of the user', DeprecationWarning)\n"
        "from authlib.deprecate import AuthlibDeprecationWarning\n"
        "warnings.warn('their own authlib warning', AuthlibDeprecationWarning)\n"
    )
    out = subprocess.run([sys.executable, "-W", "default", "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "authlib.jose module is deprecated" not in out.stderr
    assert "The httpx module is deprecated" not in out.stderr
    assert "a warning of the user" in out.stderr and "their own authlib warning" in out.stderr
