"""The tenant stage: claim lookup (namespaced too), allow-list, required, exposure."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastapps_auth import AccessToken, ConfigError, ManualClock, Rejected, Verification
from fastapps_auth.stages.tenant import MAX_TENANT_CHARS, TenantStage

NS = "https://example.com/tenant_id"


def verification(claims: dict[str, Any]) -> Verification:
    v = Verification("t", now=0.0, clock=ManualClock())
    v.access_token = AccessToken(token="fp", client_id="c", scopes=[], subject="alice", claims=claims)
    return v


async def test_namespaced_claim_is_read_and_exposed() -> None:
    v = verification({NS: "acme"})
    original = v.access_token
    await TenantStage(claim=NS)(v)
    assert v.access_token is not None and v.access_token.claims is not None
    assert v.access_token.claims["tenant_id"] == "acme"
    assert original is not None and original.claims == {NS: "acme"}


async def test_claims_are_tried_in_order_and_ints_become_strings() -> None:
    v = verification({"org_id": 42})
    await TenantStage(claim=[NS, "org_id"], expose_as="tenant")(v)
    assert v.access_token is not None and v.access_token.claims is not None
    assert v.access_token.claims["tenant"] == "42"


async def test_allow_list() -> None:
    stage = TenantStage(allowed=["acme", "globex"])
    await stage(verification({"tenant_id": "globex"}))
    with pytest.raises(Rejected) as info:
        await stage(verification({"tenant_id": "initech"}))
    assert (info.value.reason, info.value.status) == ("tenant_not_allowed", 401)


async def test_absent_tenant_rejected_only_when_required() -> None:
    with pytest.raises(Rejected) as info:
        await TenantStage()(verification({}))
    assert info.value.reason == "tenant_missing"
    v = verification({})
    await TenantStage(required=False)(v)
    assert v.access_token is not None and v.access_token.claims == {}


@pytest.mark.parametrize("bad", [["a"], {"x": 1}, True, "x" * (MAX_TENANT_CHARS + 1)])
async def test_malformed_tenant_is_rejected(bad: Any) -> None:
    with pytest.raises(Rejected) as info:
        await TenantStage()(verification({"tenant_id": bad}))
    assert info.value.reason == "tenant_invalid"


@pytest.mark.parametrize(
    ("options", "key"), [({"allowed": []}, "allowed"), ({"claim": ""}, "claim"), ({"claim": []}, "claim")]
)
def test_bad_options(options: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        TenantStage(**options)
    assert info.value.location.key == key


@given(
    tenant=st.text(min_size=1, max_size=40), allowed=st.lists(st.text(min_size=1, max_size=5), min_size=1, max_size=4)
)
async def test_allow_list_is_exact_membership(tenant: str, allowed: list[str]) -> None:
    try:
        await TenantStage(allowed=allowed)(verification({"tenant_id": tenant}))
        passed = True
    except Rejected:
        passed = False
    assert passed == (tenant in allowed)
