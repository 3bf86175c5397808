"""The roles stage: hierarchy expansion into scopes, claim shapes, cycles caught at construction."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastapps_auth import AccessToken, ConfigError, ManualClock, Rejected, Verification, VerifierChain
from fastapps_auth.stages.roles import MAX_ROLES, RolesStage
from fastapps_auth.stages.scopes import ScopesStage
from tests.support.stages import StaticAuth

HIERARCHY = {"admin": ["editor"], "editor": ["viewer"], "auditor": ["viewer"]}
SCOPES = {"admin": ["users:manage"], "editor": ["docs:write"], "viewer": ["docs:read"], "auditor": ["logs:read"]}


def verification(claims: dict[str, Any], scopes: list[str] | None = None) -> Verification:
    v = Verification("t", now=0.0, clock=ManualClock())
    v.access_token = AccessToken(token="fp", client_id="c", scopes=scopes or [], subject="alice", claims=claims)
    return v


async def test_role_expands_through_the_hierarchy() -> None:
    v = verification({"roles": ["admin"]}, ["openid"])
    original = v.access_token
    await RolesStage(hierarchy=HIERARCHY, scopes=SCOPES)(v)
    assert v.access_token is not None
    assert v.access_token.scopes[0] == "openid"
    assert set(v.access_token.scopes) == {"openid", "users:manage", "docs:write", "docs:read"}
    assert original is not None and original.scopes == ["openid"]  # the original is never mutated


async def test_string_claims_and_namespaced_claim_names() -> None:
    claim = "https://example.com/roles"
    v = verification({claim: "auditor, editor"})
    await RolesStage(claim=claim, hierarchy=HIERARCHY, scopes=SCOPES, expose_as="all_roles")(v)
    assert v.access_token is not None
    assert set(v.access_token.scopes) == {"logs:read", "docs:read", "docs:write"}
    assert v.access_token.claims is not None
    assert v.access_token.claims["all_roles"] == ["auditor", "editor", "viewer"]


async def test_unknown_roles_grant_nothing_and_required_rejects() -> None:
    stage = RolesStage(hierarchy=HIERARCHY, scopes=SCOPES)
    v = verification({"roles": ["stranger", 7, None]})
    await stage(v)
    assert v.access_token is not None and v.access_token.scopes == []
    with pytest.raises(Rejected) as info:
        await RolesStage(scopes=SCOPES, required=True)(verification({"roles": "stranger"}))
    assert info.value.status == 403


async def test_roles_feed_the_scopes_stage() -> None:
    chain = VerifierChain(
        StaticAuth(claims={"roles": ["editor"]}),
        RolesStage(hierarchy=HIERARCHY, scopes=SCOPES),
        ScopesStage(required=["docs:read"]),
    )
    assert (await chain.evaluate("tok")).allowed
    chain2 = VerifierChain(
        StaticAuth(claims={"roles": ["viewer"]}),
        RolesStage(hierarchy=HIERARCHY, scopes=SCOPES),
        ScopesStage(required=["docs:write"]),
    )
    d = await chain2.evaluate("tok")
    assert (d.allowed, d.status, d.scope) == (False, 403, "docs:write")


async def test_only_the_first_max_roles_are_read() -> None:
    roles = [f"r{i}" for i in range(MAX_ROLES + 10)]
    stage = RolesStage(scopes={r: [f"s:{r}"] for r in roles})
    v = verification({"roles": roles})
    await stage(v)
    assert v.access_token is not None and len(v.access_token.scopes) == MAX_ROLES


def test_cycle_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        RolesStage(hierarchy={"a": ["b"], "b": ["c"], "c": ["a"]}, scopes={"a": ["x"]})
    assert info.value.location.key == "hierarchy"
    assert "cycle" in str(info.value)


@pytest.mark.parametrize(("options", "key"), [({}, "scopes"), ({"scopes": {"a": ["b c"]}}, "scopes.a")])
def test_bad_options(options: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        RolesStage(**options)
    assert info.value.location.key == key


roles_st = st.lists(st.sampled_from(["admin", "editor", "viewer", "auditor", "nobody"]), max_size=6)


@given(roles=roles_st)
async def test_granted_scopes_are_the_union_over_the_closure(roles: list[str]) -> None:
    def closure(r: str) -> set[str]:
        out = {r}
        for child in HIERARCHY.get(r, []):
            out |= closure(child)
        return out

    expected: set[str] = set()
    for r in roles:
        if r in SCOPES or r in HIERARCHY:
            for c in closure(r):
                expected |= set(SCOPES.get(c, []))
    v = verification({"roles": roles})
    await RolesStage(hierarchy=HIERARCHY, scopes=SCOPES)(v)
    assert v.access_token is not None
    assert set(v.access_token.scopes) == expected
    assert len(v.access_token.scopes) == len(set(v.access_token.scopes))


async def test_a_roles_string_is_cut_at_commas_and_spaces_only() -> None:
    """``"viewer\u00a0admin"`` is one unknown role, not ``admin``: only commas and U+0020 delimit."""
    v = verification({"roles": "viewer\u00a0admin"})
    await RolesStage(hierarchy=HIERARCHY, scopes=SCOPES)(v)
    assert v.access_token is not None and "users:manage" not in v.access_token.scopes
