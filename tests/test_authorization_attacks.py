"""Authorization attacks: what a token may do once it is authenticated (scopes, roles, tenant, AnyOf, the chain)."""

from __future__ import annotations

import asyncio
import json
from typing import Any, ClassVar

import pytest

from fastapps_auth import (
    AccessToken,
    AnyOf,
    ConfigError,
    ManualClock,
    RequestInfo,
    Stage,
    StageOptions,
    Verification,
    VerifierChain,
)
from fastapps_auth.component import ComponentOptions
from fastapps_auth.integrations.starlette import rpc_target
from fastapps_auth.stages.jwt import JWTVerifier
from fastapps_auth.stages.roles import RolesStage
from fastapps_auth.stages.scopes import MAX_TOOL_NAME_CHARS, ScopesStage
from fastapps_auth.stages.tenant import TenantStage
from tests.support.jwt_mint import claims, signing_key
from tests.support.stages import Counts, Fails, StaticAuth, TokenIsSubject


def tools_call(name: Any) -> RequestInfo:
    """The request context the middleware builds for a JSON-RPC ``tools/call`` of ``name``."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name}}).encode()
    method, tool, ok = rpc_target(body)
    assert ok
    return RequestInfo(method="POST", path="/mcp", mcp_method=method, tool_name=tool)


# -- scopes: tool names ----------------------------------------------------------------------------


def test_a_tool_rule_the_middleware_could_never_match_is_a_config_error() -> None:
    # The middleware keeps 200 characters of a tool name: a rule for a longer name would never
    # apply, and its tool would run under `required` alone.
    long_name = "x" * (MAX_TOOL_NAME_CHARS + 50)
    with pytest.raises(ConfigError) as info:
        ScopesStage(tools={long_name: ["admin"]})
    assert info.value.location.key == "tools"


async def test_a_long_tool_name_cannot_borrow_the_rule_of_its_cut_prefix() -> None:
    # With an allow-list of tools, a call of an unlisted tool whose name starts with a listed
    # 200-character name must not be let through under that name's rule.
    assert MAX_TOOL_NAME_CHARS == 200
    with pytest.raises(ConfigError):
        ScopesStage(tools={"t" * MAX_TOOL_NAME_CHARS: []}, unknown_tools="deny")
    stage = ScopesStage(tools={"t" * (MAX_TOOL_NAME_CHARS - 1): []}, unknown_tools="deny")
    chain = VerifierChain(StaticAuth(), stage)
    assert (await chain.evaluate("tok", request=tools_call("t" * (MAX_TOOL_NAME_CHARS - 1)))).allowed
    d = await chain.evaluate("tok", request=tools_call("t" * (MAX_TOOL_NAME_CHARS - 1) + "z" * 10))
    assert (d.allowed, d.status, d.reason) == (False, 403, "tool_not_allowed")


LOOK_ALIKES = [
    "Delete_file",
    "delete_file ",
    " delete_file",
    "delete_f\u0456le",
    "\uff44elete_file",
    "delete\u200bfile",
]


@pytest.mark.parametrize("name", LOOK_ALIKES)
async def test_tool_rules_match_the_exact_name_the_server_dispatches_on(name: str) -> None:
    # MCP servers look tools up by exact name: a look-alike is another (unknown) tool, never a
    # way around the rule, and with an allow-list it is refused.
    chain = VerifierChain(StaticAuth(), ScopesStage(tools={"delete_file": ["files:delete"]}, unknown_tools="deny"))
    d = await chain.evaluate("tok", request=tools_call(name))
    assert (d.allowed, d.reason) == (False, "tool_not_allowed")


@pytest.mark.parametrize("name", [None, 7, ["delete_file"], {"name": "delete_file"}])
async def test_a_tools_call_naming_no_tool_is_refused_by_an_allow_list(name: Any) -> None:
    # The middleware records no tool for a name that is not a string: under an allow-list that is
    # a tool no rule allows, not a request that only needs the required scopes.
    chain = VerifierChain(StaticAuth(), ScopesStage(tools={"delete_file": []}, unknown_tools="deny"))
    d = await chain.evaluate("tok", request=tools_call(name))
    assert (d.allowed, d.status, d.reason) == (False, 403, "tool_not_allowed")
    listing = RequestInfo(method="POST", path="/mcp", mcp_method="tools/list")
    assert (await chain.evaluate("tok", request=listing)).allowed  # other methods name no tool


async def test_unknown_tools_are_allowed_by_default_as_documented() -> None:
    chain = VerifierChain(StaticAuth(scopes=["mcp"]), ScopesStage(required=["mcp"], tools={"admin": ["root"]}))
    assert (await chain.evaluate("tok", request=tools_call("other"))).allowed
    assert not (await chain.evaluate("tok", request=tools_call("admin"))).allowed


@pytest.mark.parametrize(
    "granted",
    [["READ"], ["read:all"], ["rea"], ["read "], ["read*"], ["*"], ["read:all", "reading"]],
)
async def test_scopes_match_exactly(granted: list[str]) -> None:
    chain = VerifierChain(StaticAuth(scopes=granted), ScopesStage(required=["read"]))
    d = await chain.evaluate("tok")
    assert (d.allowed, d.status, d.scope) == (False, 403, "read")


# -- roles -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [{"admin": True}, 1, True, [["admin"]], [{"role": "admin"}], ["ADMIN"], None])
async def test_roles_of_the_wrong_type_or_case_grant_nothing(value: Any) -> None:
    stage = RolesStage(hierarchy={"admin": ["viewer"]}, scopes={"admin": ["root"], "viewer": ["read"]})
    chain = VerifierChain(StaticAuth(claims={"roles": value}), stage, ScopesStage(required=["read"]))
    d = await chain.evaluate("tok")
    assert not d.allowed and d.principal is not None and d.principal.scopes == []


async def test_exposed_roles_are_only_the_expanded_roles() -> None:
    # The token may carry a claim of the exposed name itself (another issuer's meaning of it);
    # tools read `claims[expose_as]` as the roles this server granted, so it never survives.
    stage = RolesStage(scopes={"admin": ["root"]}, expose_as="all_roles")
    chain = VerifierChain(StaticAuth(claims={"roles": ["guest"], "all_roles": ["admin"]}), stage)
    d = await chain.evaluate("tok")
    assert d.allowed and d.access_token is not None
    assert d.access_token.claims is not None and d.access_token.claims.get("all_roles", []) == []


# -- tenant ----------------------------------------------------------------------------------------


async def test_an_unvetted_claim_under_the_exposed_name_is_not_passed_on() -> None:
    # Tools read `claims["tenant_id"]` as the tenant this stage checked: a token with no tenant
    # in the configured claim must not pass one through under the exposed name.
    stage = TenantStage(claim="https://example.com/tenant_id", allowed=["acme"], required=False)
    chain = VerifierChain(StaticAuth(claims={"tenant_id": "globex"}), stage)
    d = await chain.evaluate("tok")
    assert d.allowed and d.access_token is not None and d.access_token.claims is not None
    assert "tenant_id" not in d.access_token.claims


@pytest.mark.parametrize(
    "tenant", ["ACME", "acme ", " acme", "acm", "acme-corp", "acme\x00", ["acme"], ["acme", "globex"], {"id": "acme"}]
)
async def test_tenant_allow_list_is_exact_and_single_valued(tenant: Any) -> None:
    chain = VerifierChain(StaticAuth(claims={"tenant_id": tenant}), TenantStage(allowed=["acme"]))
    d = await chain.evaluate("tok")
    assert not d.allowed and d.status == 401


# -- AnyOf -----------------------------------------------------------------------------------------


async def test_a_failing_open_alternative_does_not_authenticate_a_forged_token() -> None:
    chain = VerifierChain(AnyOf(TokenIsSubject(prefix="a:"), Fails(on_error="allow")))
    d = await chain.evaluate("forged")
    assert not d.allowed and d.access_token is None and d.reason == "unauthenticated"


async def test_a_transient_alternative_makes_it_503_never_an_accept() -> None:
    chain = VerifierChain(AnyOf(TokenIsSubject(prefix="a:"), VerifierChain(Fails(), TokenIsSubject(prefix="b:"))))
    d = await chain.evaluate("forged")
    assert (d.allowed, d.status, d.access_token) == (False, 503, None)


async def test_an_expired_token_of_one_issuer_is_refused_whatever_the_other_says() -> None:
    clock = ManualClock(1_700_000_000.0)
    a, b = signing_key("ES256", 0), signing_key("ES256", 1)
    issuers = AnyOf(
        JWTVerifier(jwks={"keys": [a.jwk()]}, issuer_url="https://a.example/", audience="api", clock=clock, name="a"),
        JWTVerifier(jwks={"keys": [b.jwk()]}, issuer_url="https://b.example/", audience="api", clock=clock, name="b"),
    )
    chain = VerifierChain(issuers, clock=clock)
    token = a.token(claims(clock.time() - 7200, iss="https://a.example/", aud="api"))
    d = await chain.evaluate(token)
    assert (d.allowed, d.status, d.error) == (False, 401, "invalid_token")
    assert d.description is not None and "a: expired" in d.description


# -- the chain -------------------------------------------------------------------------------------


class Swaps(Stage[StageOptions]):
    """Replaces the token with another subject's, then fails (a buggy enrichment stage)."""

    plugin_name: ClassVar[str] = "swaps"
    options_model: ClassVar[type[ComponentOptions]] = StageOptions

    async def __call__(self, v: Verification) -> None:
        v.access_token = AccessToken(token="x", client_id="c", scopes=["admin"], subject="root", claims={})
        raise ConnectionError("lookup failed half-way")


async def test_a_stage_that_fails_open_leaves_the_token_as_it_found_it() -> None:
    chain = VerifierChain(TokenIsSubject(), Swaps(on_error="allow"), ScopesStage(required=["admin"]))
    d = await chain.evaluate("user:mallory")
    assert not d.allowed and d.status == 403
    assert d.principal is not None and d.principal.subject == "mallory"
    assert d.failed_open == ("swaps",)


async def test_a_stage_that_drops_the_token_leaves_nothing_to_allow() -> None:
    class Drops(Stage[StageOptions]):
        plugin_name: ClassVar[str] = "drops"

        async def __call__(self, v: Verification) -> None:
            v.access_token = None

    d = await VerifierChain(TokenIsSubject(), Drops()).evaluate("user:erin")
    assert (d.allowed, d.access_token, d.reason) == (False, None, "unauthenticated")


class Raises(Stage[StageOptions]):
    plugin_name: ClassVar[str] = "raises"

    def __init__(self, exc: BaseException, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.exc = exc

    async def __call__(self, v: Verification) -> None:
        raise self.exc


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), SystemExit(1)])
async def test_interrupts_are_never_swallowed(exc: BaseException) -> None:
    chain = VerifierChain(TokenIsSubject(), Raises(exc, on_error="allow"))
    with pytest.raises(type(exc)):
        await chain.verify_token("user:a")


async def test_cancelling_the_verification_propagates() -> None:
    started = asyncio.Event()

    class Waits(Stage[StageOptions]):
        plugin_name: ClassVar[str] = "waits"

        async def __call__(self, v: Verification) -> None:
            started.set()
            await asyncio.Event().wait()

    chain = VerifierChain(TokenIsSubject(), AnyOf(Waits(on_error="allow"), Counts()))
    task = asyncio.ensure_future(chain.verify_token("user:a"))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_cancelled_error_not_aimed_at_the_request_is_a_stage_failure() -> None:
    # A backend whose own inner future was cancelled raises CancelledError into a request that
    # nobody cancelled: that is the stage failing, and verify_token still answers.
    denied = VerifierChain(TokenIsSubject(), Raises(asyncio.CancelledError()))
    d = await denied.evaluate("user:a")
    assert (d.allowed, d.status) == (False, 503)
    assert d.trace[-1].error == "CancelledError"
    assert await denied.verify_token("user:a") is None
    allowed = VerifierChain(TokenIsSubject(), Raises(asyncio.CancelledError(), on_error="allow"))
    assert (await allowed.evaluate("user:a")).failed_open == ("raises",)


async def test_generator_exit_is_left_to_close_the_coroutine() -> None:
    # GeneratorExit is how a coroutine is closed: catching it and awaiting on would break close().
    with pytest.raises(GeneratorExit):
        await VerifierChain(TokenIsSubject(), Raises(GeneratorExit(), on_error="allow")).verify_token("user:a")
