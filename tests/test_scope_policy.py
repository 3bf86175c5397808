"""ScopePolicy (exact / hierarchic / wildcard, implies) and the scopes stage's step-up rules (RFC 9470)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastapps_auth import AccessToken, ConfigError, ManualClock, Rejected, RequestInfo, Verification, VerifierChain
from fastapps_auth.scope_policy import ScopePolicy
from fastapps_auth.stages.scopes import ScopesStage
from tests.support.stages import StaticAuth

# -- the strategies -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("strategy", "granted", "required", "ok"),
    [
        ("exact", "files", "files:read", False),
        ("exact", "files:read", "files:read", True),
        ("hierarchic", "files", "files:read", True),
        ("hierarchic", "files", "files.read", True),
        ("hierarchic", "files", "files:read:own", True),
        ("hierarchic", "files:read", "files:read:own", True),
        ("hierarchic", "files:read", "files", False),  # a child never grants its parent
        ("hierarchic", "file", "files:read", False),  # only whole segments count
        ("hierarchic", "files:re", "files:read", False),
        ("hierarchic", "Files", "files:read", False),  # scopes are case-sensitive
        ("wildcard", "files:*", "files:read", True),
        ("wildcard", "files.*", "files.read", True),
        ("wildcard", "files:*", "files:read:own", True),
        ("wildcard", "files:*", "files", False),
        ("wildcard", "files:*", "files.read", False),  # the separator is part of the pattern
        ("wildcard", "files", "files:read", False),  # wildcard is not hierarchic
        ("wildcard", "*", "files:read", False),  # a bare * is an ordinary scope, never "everything"
        ("wildcard", "files:*:own", "files:read:own", False),  # only a trailing * matches
    ],
)
def test_strategies(strategy: Any, granted: str, required: str, ok: bool) -> None:
    assert ScopePolicy(strategy).missing([required], [granted]) == (() if ok else (required,))


def test_implies_is_transitive_and_resolved_once() -> None:
    policy = ScopePolicy(implies={"admin": ["manager"], "manager": ["user", "files:read"]})
    assert policy.grants(["admin"]) == {"admin", "manager", "user", "files:read"}
    assert policy.missing(["user", "files:read"], ["admin"]) == ()
    assert policy.missing(["admin"], ["manager"]) == ("admin",)  # implication goes one way


def test_implies_with_a_hierarchic_strategy() -> None:
    policy = ScopePolicy("hierarchic", {"admin": ["files"]})
    assert policy.missing(["files:delete", "reports"], ["admin"]) == ("reports",)


@pytest.mark.parametrize(
    ("implies", "cycle"),
    [
        ({"a": ["a"]}, "a → a"),
        ({"a": ["b"], "b": ["a"]}, "a → b → a"),
        ({"x": ["a"], "a": ["b"], "b": ["c"], "c": ["a"]}, "a → b → c → a"),
    ],
)
def test_a_cycle_in_implies_is_a_config_error_naming_it(implies: dict[str, list[str]], cycle: str) -> None:
    with pytest.raises(ConfigError, match=cycle) as err:
        ScopePolicy(implies=implies)
    assert err.value.location.key == "implies"


def test_bad_names_in_implies_and_an_unknown_strategy_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="invalid scope"):
        ScopePolicy(implies={"admin": ["has space"]})
    with pytest.raises(ConfigError, match="unknown strategy"):
        ScopePolicy("fuzzy")  # type: ignore[arg-type]


# -- properties ---------------------------------------------------------------------------------------

segment = st.sampled_from(["a", "b", "files", "read", "x*"])
scope = st.builds(
    lambda first, rest: first + "".join(rest),
    segment,
    st.lists(st.tuples(st.sampled_from(":."), segment).map("".join), max_size=3),
)
scopes = st.lists(scope, max_size=6)
strategy = st.sampled_from(["exact", "hierarchic", "wildcard"])
edges = st.dictionaries(st.sampled_from("abcdef"), st.lists(st.sampled_from("abcdef"), max_size=3), max_size=6)


def _reference(strategy: str, required: str, granted: set[str]) -> bool:
    """What each strategy means, written independently of ScopePolicy: by cutting ``required`` into segments."""
    if required in granted:
        return True
    cuts = [i for i, c in enumerate(required) if c in ":." and i > 0]
    if strategy == "hierarchic":
        return any(required[:i] in granted for i in cuts)
    if strategy == "wildcard":
        return any(required[: i + 1] + "*" in granted for i in cuts if i < len(required) - 1)
    return False


@given(strategy=strategy, required=scopes, granted=scopes, mode=st.sampled_from(["all", "any"]))
def test_missing_matches_the_reference_meaning(
    strategy: Any, required: list[str], granted: list[str], mode: Any
) -> None:
    have = set(granted)
    ok = [r for r in required if _reference(strategy, r, have)]
    expected = (
        tuple(dict.fromkeys(r for r in required if r not in ok))
        if mode == "all"
        else (() if ok or not required else tuple(dict.fromkeys(required)))
    )
    assert ScopePolicy(strategy).missing(required, granted, mode) == expected


@given(strategy=strategy, required=scopes, granted=scopes, more=scopes)
def test_granting_more_never_makes_more_scopes_missing(
    strategy: Any, required: list[str], granted: list[str], more: list[str]
) -> None:
    policy = ScopePolicy(strategy)
    assert set(policy.missing(required, [*granted, *more])) <= set(policy.missing(required, granted))


@given(strategy=strategy, required=scope)
def test_a_scope_always_satisfies_itself_and_a_child_never_its_parent(strategy: Any, required: str) -> None:
    policy = ScopePolicy(strategy)
    assert policy.missing([required], [required]) == ()
    assert policy.missing([required], [required + ":child"]) == (required,)


def _reachable(graph: dict[str, list[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = list(graph.get(start, ()))
    while todo:
        s = todo.pop()
        if s not in seen:
            seen.add(s)
            todo.extend(graph.get(s, ()))
    return seen


def _cyclic(graph: dict[str, list[str]]) -> bool:
    return any(node in _reachable(graph, node) for node in graph)


@given(graph=edges, granted=st.lists(st.sampled_from("abcdef"), max_size=3))
def test_implies_grants_exactly_what_is_reachable_and_refuses_every_cycle(
    graph: dict[str, list[str]], granted: list[str]
) -> None:
    if _cyclic(graph):
        with pytest.raises(ConfigError, match="cycle"):
            ScopePolicy(implies=graph)
        return
    policy = ScopePolicy(implies=graph)
    expected = set(granted).union(*(_reachable(graph, g) for g in granted))
    assert policy.grants(granted) == expected
    assert policy.grants(policy.grants(granted)) == expected  # closed: expanding twice adds nothing


# -- the stage: strategy, implies and step-up ------------------------------------------------------------


def verification(scopes: list[str], tool: str | None = None, now: float = 1_000_000.0, **claims: Any) -> Verification:
    request = RequestInfo(mcp_method="tools/call" if tool else None, tool_name=tool)
    v = Verification("t", now=now, clock=ManualClock(now), request=request)
    v.access_token = AccessToken(token="fp", client_id="c", scopes=scopes, subject="alice", claims=claims)
    return v


async def test_the_stage_applies_its_strategy_and_implies_to_required_and_tool_scopes() -> None:
    stage = ScopesStage(
        required=["mcp:use"],
        tools={"delete": ["files:delete"]},
        scope_strategy="hierarchic",
        implies={"admin": ["mcp", "files"]},
    )
    await stage(verification(["admin"], tool="delete"))
    with pytest.raises(Rejected) as info:
        await stage(verification(["mcp"], tool="delete"))
    assert (info.value.reason, info.value.scope) == ("insufficient_tool_scope", "mcp:use files:delete")


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"required": ["a"], "implies": {"a": ["b"], "b": ["a"]}}, "implies"),
        ({"required": ["a"], "scope_strategy": "prefix"}, "scope_strategy"),
        ({"tools": {"t": {"scopes": ["a"], "acr": ["mfa"]}}}, "tools.t.acr"),
        ({"tools": {"t": {"max_age": -1}}}, "tools.t.max_age"),
        ({"tools": {"t": {"acr_values": []}}}, "tools.t.acr_values"),
        ({"tools": {"t": {"acr_values": ["two words"]}}}, "tools.t.acr_values"),
        ({"tools": {"t": "files:read"}}, "tools.t"),
    ],
)
def test_bad_options_name_the_stage_and_key(options: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        ScopesStage(**options)
    assert (err.value.location.stage, err.value.location.key) == ("scopes", key)


STEP_UP = {"transfer": {"scopes": ["payments"], "acr_values": ["mfa", "hwk"], "max_age": 300}}


@pytest.mark.parametrize(
    "claims",
    [
        {"auth_time": 1_000_000 - 60},  # no acr
        {"acr": "pwd", "auth_time": 1_000_000 - 60},  # the wrong kind
        {"acr": "mfa"},  # no auth_time while max_age is set
        {"acr": "mfa", "auth_time": "yesterday"},
        {"acr": "mfa", "auth_time": True},
        {"acr": "mfa", "auth_time": 1_000_000 - 301},  # too long ago
        {"acr": "mfa", "auth_time": 1_000_000 + 3600},  # in the future: an hour beyond any clock skew
        {"acr": "mfa", "auth_time": float("inf")},  # JSON's 1e400
        {"acr": "mfa", "auth_time": float("nan")},
        {"acr": ["mfa"], "auth_time": 1_000_000 - 60},  # acr is a string, never a list
    ],
)
async def test_a_tool_asking_for_step_up_gets_401_insufficient_user_authentication(claims: dict[str, Any]) -> None:
    stage = ScopesStage(required=["mcp"], tools=STEP_UP)
    with pytest.raises(Rejected) as info:
        await stage(verification(["mcp", "payments"], tool="transfer", **claims))
    r = info.value
    assert (r.status, r.error, r.reason) == (
        401,
        "insufficient_user_authentication",
        "insufficient_user_authentication",
    )
    assert (r.acr_values, r.max_age, r.scope) == ("mfa hwk", 300, "mcp payments")


@pytest.mark.parametrize("age", [0, 60, 300])
async def test_a_recent_enough_strong_authentication_passes(age: int) -> None:
    stage = ScopesStage(tools=STEP_UP)
    await stage(verification(["payments"], tool="transfer", acr="hwk", auth_time=1_000_000 - age))
    await stage(verification([], tool="balance"))  # other tools ask for nothing


async def test_step_up_uses_the_verification_clock() -> None:
    stage = ScopesStage(tools={"t": {"max_age": 10}})
    claims = {"auth_time": 1_000_000}
    await stage(verification([], tool="t", now=1_000_010, **claims))
    with pytest.raises(Rejected):
        await stage(verification([], tool="t", now=1_000_011, **claims))


async def test_each_step_up_key_is_optional() -> None:
    only_acr = ScopesStage(tools={"t": {"acr_values": ["mfa"]}})
    await only_acr(verification([], tool="t", acr="mfa"))  # no auth_time needed without max_age
    with pytest.raises(Rejected) as info:
        await only_acr(verification([], tool="t"))
    assert (info.value.acr_values, info.value.max_age, info.value.scope) == ("mfa", None, None)
    only_age = ScopesStage(tools={"t": {"max_age": 60}})
    with pytest.raises(Rejected) as aged:
        await only_age(verification([], tool="t"))
    assert (aged.value.acr_values, aged.value.max_age) == (None, 60)


async def test_step_up_reaches_the_decision_through_the_chain() -> None:
    chain = VerifierChain(StaticAuth(scopes=["payments"], claims={"acr": "pwd"}), ScopesStage(tools=STEP_UP))
    d = await chain.evaluate("tok", request=RequestInfo(mcp_method="tools/call", tool_name="transfer"))
    assert (d.status, d.error, d.acr_values, d.max_age, d.scope) == (
        401,
        "insufficient_user_authentication",
        "mfa hwk",
        300,
        "payments",
    )
    assert d.as_dict()["acr_values"] == "mfa hwk"
