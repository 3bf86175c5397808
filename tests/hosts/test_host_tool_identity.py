"""Per-tool rules follow the tool, not the string: FastMCP 4's namespaces, hashed aliases and proxies; MCPServer.

Runs in ``.venv/hosts`` (``make test-hosts``): a live uvicorn on 127.0.0.1, raw JSON-RPC over HTTP,
the real ``jwt`` stage. Each alias below reached its tool without the rule's scope before.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastmcp import FastMCP
from fastmcp.apps import FastMCPApp
from fastmcp.server.auth import RemoteAuthProvider, require_scopes
from fastmcp.server.transforms.search import RegexSearchTransform
from mcp.server.mcpserver import MCPServer
from pydantic import AnyHttpUrl

from fastapps_auth import VerifierChain
from fastapps_auth.integrations.fastmcp import as_fastmcp_verifier
from fastapps_auth.integrations.mcp import protect
from fastapps_auth.stages.scopes import ScopesStage
from tests.hosts.support import ISSUER, RESOURCE, AsyncServer, Issuer, jwt_stage, raw, rpc

BASE = "http://127.0.0.1"
RULE = ["contacts:write"]
READ, WRITE = "read", "read contacts:write"


@pytest.fixture
def issuer() -> Issuer:
    return Issuer()


def crm_server(
    issuer: Issuer, ran: list[str], *, search: bool = False, unknown_tools: str = "allow"
) -> tuple[Any, VerifierChain, FastMCP]:
    """``save_contact`` of a ``FastMCPApp("crm")``, mounted under namespace ``ns``; both names need the scope."""
    crm = FastMCPApp("crm")

    @crm.tool(model=True)
    def save_contact(name: str = "") -> str:
        ran.append("save_contact")
        return "saved"

    child = FastMCP("child")
    child.add_provider(crm)

    @child.tool(auth=require_scopes("read"))
    def secret() -> str:  # visible to FastMCP only once it knows the token
        ran.append("secret")
        return "secret"

    rules = {"ns_save_contact": RULE, "save_contact": RULE, "ns_secret": ["admin"]}
    chain = VerifierChain(jwt_stage(issuer), ScopesStage(tools=rules, unknown_tools=unknown_tools))
    verifier = as_fastmcp_verifier(chain, base_url=BASE, resource_url=RESOURCE)
    mcp = FastMCP("main", auth=RemoteAuthProvider(verifier, [AnyHttpUrl(ISSUER)], base_url=BASE))
    mcp.mount(child, namespace="ns")
    if search:
        mcp.add_transform(RegexSearchTransform())
    app = protect(mcp.http_app(stateless_http=True), chain, server=mcp, resource_url=RESOURCE)
    return app, chain, mcp


def call(name: str, arguments: dict[str, Any] | None = None, id: int = 1) -> dict[str, Any]:
    return rpc("tools/call", {"name": name, "arguments": arguments or {}}, id=id)


def answer(response: httpx.Response) -> dict[str, Any]:
    """The JSON-RPC answer of a FastMCP response (an SSE ``data:`` line, or plain JSON)."""
    for line in response.text.splitlines():
        if line.startswith("data: "):
            result: dict[str, Any] = json.loads(line.removeprefix("data: "))
            return result
    parsed: dict[str, Any] = response.json()
    return parsed


async def hashed_alias(url: str, token: str) -> str:
    """The ``__<hash>_save_contact`` name, from the ``_meta.fastmcp.tool_hash`` that tools/list publishes."""
    listing = answer(await raw(url, token, rpc("tools/list")))
    (tool,) = [t for t in listing["result"]["tools"] if t["name"] == "ns_save_contact"]
    return f"__{tool['_meta']['fastmcp']['tool_hash']}_save_contact"


async def test_a_hashed_alias_and_a_namespace_are_the_same_tool_with_the_same_rule(issuer: Issuer) -> None:
    ran: list[str] = []
    app, chain, _ = crm_server(issuer, ran)
    async with AsyncServer(app) as srv:
        alias = await hashed_alias(srv.url, issuer.mint(scope=WRITE))
        namespaced = await raw(srv.url, issuer.mint(scope=READ), call("ns_save_contact"))
        aliased = await raw(srv.url, issuer.mint(scope=READ), call(alias))
        allowed = await raw(srv.url, issuer.mint(scope=WRITE), call(alias))
        bare = await raw(srv.url, issuer.mint(scope=READ), call("save_contact"))  # not a name this server has
    await chain.aclose()
    assert namespaced.status_code == 403 and 'scope="contacts:write"' in namespaced.headers["www-authenticate"]
    assert aliased.status_code == 403 and 'scope="contacts:write"' in aliased.headers["www-authenticate"]
    assert allowed.status_code == 200 and "saved" in allowed.text
    assert bare.status_code == 200 and answer(bare)["result"]["isError"]  # FastMCP's unknown tool: nothing ran
    assert ran == ["save_contact"]


async def test_a_call_tool_proxy_is_checked_against_its_targets_rule(issuer: Issuer) -> None:
    ran: list[str] = []
    app, chain, _ = crm_server(issuer, ran, search=True)
    async with AsyncServer(app) as srv:
        alias = await hashed_alias_via_search(srv.url, issuer.mint(scope=WRITE))
        proxied = await raw(srv.url, issuer.mint(scope=READ), call("call_tool", {"name": "ns_save_contact"}))
        proxied_alias = await raw(srv.url, issuer.mint(scope=READ), call("call_tool", {"name": alias}))
        allowed = await raw(srv.url, issuer.mint(scope=WRITE), call("call_tool", {"name": "ns_save_contact"}))
    await chain.aclose()
    assert proxied.status_code == 403 and 'scope="contacts:write"' in proxied.headers["www-authenticate"]
    assert proxied_alias.status_code == 403
    assert allowed.status_code == 200 and "saved" in allowed.text
    assert ran == ["save_contact"]


async def hashed_alias_via_search(url: str, token: str) -> str:
    found = answer(await raw(url, token, call("search_tools", {"pattern": "save_contact"})))
    digest = json.loads(found["result"]["content"][0]["text"])[0]["_meta"]["fastmcp"]["tool_hash"]
    return f"__{digest}_save_contact"


async def test_a_tool_fastmcp_hides_before_the_token_is_known_is_checked_inside_fastmcp(issuer: Issuer) -> None:
    """``ns_secret`` has its own ``auth=``: the HTTP layer cannot see it, ``ToolRules`` checks it in the host."""
    ran: list[str] = []
    app, chain, _ = crm_server(issuer, ran)
    async with AsyncServer(app) as srv:
        refused = await raw(srv.url, issuer.mint(scope=READ), call("ns_secret"))
        allowed = await raw(srv.url, issuer.mint(scope="read admin"), call("ns_secret"))
    await chain.aclose()
    error = answer(refused).get("error") or answer(refused)["result"]
    assert "admin" in json.dumps(error)  # FastMCP's insufficient-scope error names what is missing
    assert allowed.status_code == 200 and "secret" in allowed.text
    assert ran == ["secret"]


async def test_an_unknown_name_is_refused_under_an_allow_list(issuer: Issuer) -> None:
    ran: list[str] = []
    app, chain, _ = crm_server(issuer, ran, unknown_tools="deny")
    async with AsyncServer(app) as srv:
        unknown = await raw(srv.url, issuer.mint(scope=WRITE), call("no_such_tool"))
        known = await raw(srv.url, issuer.mint(scope=WRITE), call("ns_save_contact"))
    await chain.aclose()
    assert unknown.status_code == 403
    assert known.status_code == 200 and ran == ["save_contact"]


async def test_mcpserver_tools_are_looked_up_in_its_registry(issuer: Issuer) -> None:
    ran: list[str] = []
    server = MCPServer("registry")

    @server.tool()
    def admin() -> str:
        ran.append("admin")
        return "admin"

    chain = VerifierChain(jwt_stage(issuer), ScopesStage(tools={"admin": ["admin"]}, unknown_tools="deny"))
    app: Callable[..., Any] = protect(server.streamable_http_app(stateless_http=True), chain, server=server)
    async with AsyncServer(app) as srv:
        denied = await raw(srv.url, issuer.mint(scope=READ), call("admin"))
        look_alike = await raw(srv.url, issuer.mint(scope="read admin"), call("Admin"))
        allowed = await raw(srv.url, issuer.mint(scope="read admin"), call("admin"))
    await chain.aclose()
    assert denied.status_code == 403 and look_alike.status_code == 403
    assert allowed.status_code == 200 and ran == ["admin"]


async def test_tool_rules_leave_calls_without_an_http_request_to_fastmcp(issuer: Issuer) -> None:
    """In-process (or stdio) calls carry no bearer token: FastMCP's own auth does not apply there, nor ours."""
    from fastmcp import Client

    ran: list[str] = []
    _, chain, mcp = crm_server(issuer, ran)
    async with Client(mcp) as client:
        result = await client.call_tool("ns_save_contact", {})
    await chain.aclose()
    assert result.content[0].text == "saved" and ran == ["save_contact"]
