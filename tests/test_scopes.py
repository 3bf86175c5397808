"""The scopes stage: all/any, per-tool requirements from the request context, config errors."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastapps_auth import AccessToken, ConfigError, ManualClock, Rejected, RequestInfo, Verification, VerifierChain
from fastapps_auth.chain import run_stage
from fastapps_auth.config import chain_from_config
from fastapps_auth.stages.scopes import ScopesStage
from tests.support.stages import StaticAuth, registered


def verification(scopes: list[str], tool: str | None = None) -> Verification:
    request = RequestInfo(method="POST", path="/mcp", mcp_method="tools/call" if tool else None, tool_name=tool)
    v = Verification("t", now=0.0, clock=ManualClock(), request=request)
    v.access_token = AccessToken(token="fp", client_id="c", scopes=scopes, subject="alice", claims={})
    return v


async def test_all_mode_names_every_missing_scope_in_order() -> None:
    stage = ScopesStage(required=["read", "write", "admin"])
    with pytest.raises(Rejected) as info:
        await stage(verification(["write"]))
    r = info.value
    assert (r.status, r.error, r.scope) == (403, "insufficient_scope", "read admin")


async def test_all_mode_passes_when_every_scope_is_granted() -> None:
    await ScopesStage(required=["read", "write"])(verification(["write", "read", "other"]))


async def test_any_mode_needs_one_and_names_the_alternatives() -> None:
    stage = ScopesStage(required=["read", "admin"], mode="any")
    await stage(verification(["admin"]))
    with pytest.raises(Rejected) as info:
        await stage(verification(["write"]))
    assert info.value.scope == "read admin"


async def test_per_tool_scopes_apply_only_to_that_tool() -> None:
    stage = ScopesStage(tools={"delete_file": ["files:delete"], "read_file": ["files:read"]})
    await stage(verification(["files:read"], tool="read_file"))
    await stage(verification([], tool=None))  # not a tools/call: no per-tool rule
    await stage(verification([], tool="other_tool"))  # unknown tools allowed by default
    with pytest.raises(Rejected) as info:
        await stage(verification(["files:read"], tool="delete_file"))
    assert (info.value.reason, info.value.scope) == ("insufficient_tool_scope", "files:delete")


async def test_unknown_tools_can_be_denied() -> None:
    stage = ScopesStage(tools={"known": []}, unknown_tools="deny")
    await stage(verification([], tool="known"))
    with pytest.raises(Rejected) as info:
        await stage(verification(["anything"], tool="unknown"))
    assert info.value.status == 403


async def test_base_requirement_is_checked_before_the_tool_and_the_403_names_all_the_call_needs() -> None:
    stage = ScopesStage(required=["mcp"], tools={"t": ["x", "y"]})
    with pytest.raises(Rejected) as info:
        await stage(verification(["x"], tool="t"))
    r = info.value
    assert (r.reason, r.scope, r.description) == (
        "insufficient_scope",
        "mcp x y",
        "the token lacks the required scope: mcp",
    )


async def test_a_tool_rule_403_names_the_required_scopes_too_so_one_reauthorization_is_enough() -> None:
    stage = ScopesStage(required=["mcp", "files"], tools={"delete": ["files:delete", "mcp"]})
    with pytest.raises(Rejected) as info:
        await stage(verification(["mcp", "files"], tool="delete"))
    r = info.value
    assert (r.reason, r.scope) == ("insufficient_tool_scope", "mcp files files:delete")
    assert r.description == "the token lacks the required scope: files:delete"
    with pytest.raises(Rejected) as base_only:
        await stage(verification(["mcp"]))  # not a tools/call: only `required`
    assert base_only.value.scope == "files"


async def test_reads_the_request_context_through_the_chain() -> None:
    chain = VerifierChain(StaticAuth(scopes=["read"]), ScopesStage(tools={"write_it": ["write"]}))
    allowed = await chain.evaluate("tok", request=RequestInfo(tool_name="read_it"))
    denied = await chain.evaluate("tok", request=RequestInfo(tool_name="write_it"))
    assert allowed.allowed
    assert (denied.allowed, denied.status, denied.stage, denied.scope) == (False, 403, "scopes", "write")


async def test_without_an_authenticated_token_it_rejects() -> None:
    v = Verification("t", now=0.0, clock=ManualClock())
    with pytest.raises(Rejected) as info:
        await run_stage(ScopesStage(required=["a"]), v)
    assert info.value.status == 401


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({}, "required"),
        ({"required": ["has space"]}, "required"),
        ({"required": ['quo"te']}, "required"),
        ({"tools": {"t": [""]}}, "tools.t"),
        ({"required": ["a"], "mode": "some"}, "mode"),
        ({"required": ["a"], "bogus": 1}, "bogus"),
    ],
)
def test_bad_options_name_the_key(options: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        ScopesStage(**options)
    assert info.value.location.key == key
    assert info.value.location.stage == "scopes"


def test_built_from_config_by_plugin_name() -> None:
    with registered(StaticAuth):
        chain = chain_from_config(
            {
                "stages": [
                    {"use": "static-auth"},
                    {"use": "scopes", "required": ["a"], "tools": {"t": ["b"], "u": {"scopes": ["c"]}}, "mode": "any"},
                ]
            }
        )
    _, stage = chain.stages
    assert isinstance(stage, ScopesStage)


scope_names = st.sets(st.sampled_from(["a", "b", "c", "d", "e"]), max_size=5)


@given(required=scope_names, granted=scope_names)
async def test_all_and_any_match_set_semantics(required: set[str], granted: set[str]) -> None:
    for mode, ok in (("all", required <= granted), ("any", not required or bool(required & granted))):
        stage = ScopesStage(required=sorted(required), mode=mode, tools={"t": []})
        try:
            await stage(verification(sorted(granted)))
            passed = True
        except Rejected as r:
            passed = False
            missing = set(r.scope.split()) if r.scope else set()
            assert missing == (required - granted if mode == "all" else required)
        assert passed == ok
