"""Shadow mode (``enforce = false``): a refusal is recorded, the decision goes on as if the stage had passed."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from fastapps_auth import (
    AnyOf,
    ConfigError,
    ManualClock,
    RequestInfo,
    VerifierChain,
    chain_from_config,
)
from fastapps_auth.stages.rate_limit import RateLimitStage
from fastapps_auth.stages.scopes import ScopesStage
from tests.support.observers import Recorder
from tests.support.stages import Counts, Enriches, Fails, TokenIsSubject, registered
from tests.support.user_status import UserStatusChains


@pytest.fixture
def plugins() -> Iterator[None]:
    with registered(TokenIsSubject, Fails, Counts, Enriches):
        yield


async def test_a_shadowed_rejection_is_recorded_and_the_chain_goes_on() -> None:
    after, rec = Counts(name="after"), Recorder()
    chain = VerifierChain(TokenIsSubject(), Fails(error="rejected", enforce=False, name="ban"), after, observers=[rec])
    d = await chain.evaluate("user:alice")
    assert (d.allowed, d.status, d.stage, d.reason) == (True, 200, None, None)
    assert d.shadowed == (("ban", "user_banned"),)
    assert [(t.stage, t.outcome, t.reason) for t in d.trace] == [
        ("token-is-subject", "passed", None),
        ("ban", "shadow-rejected", "user_banned"),
        ("after", "passed", None),
    ]
    assert after.calls == 1 and rec.decisions == [d]
    assert d.as_dict()["shadowed"] == [["ban", "user_banned"]]
    assert not d.failed_open


async def test_an_enforcing_rejection_after_a_shadowed_one_still_refuses_and_keeps_the_record() -> None:
    chain = VerifierChain(
        TokenIsSubject(), Fails(error="rejected", enforce=False, name="new-rule"), Fails(error="rejected")
    )
    d = await chain.evaluate("user:alice")
    assert (d.allowed, d.stage, d.reason) == (False, "fails", "user_banned")
    assert d.shadowed == (("new-rule", "user_banned"),)


@pytest.mark.parametrize(
    ("then", "shadowed"),
    [("pass", ()), ("reject", (("enriches", "not_now"),)), ("fail", (("enriches", "unavailable"),))],
)
async def test_a_stage_that_does_not_enforce_changes_nothing(then: str, shadowed: tuple[tuple[str, str], ...]) -> None:
    """A dry run: its enrichment (scopes, rate-limit state) is undone whatever it decided."""
    seen = Counts()
    chain = VerifierChain(TokenIsSubject(scopes=["read"]), Enriches(then=then, enforce=False), seen)
    d = await chain.evaluate("user:alice")
    assert d.allowed and d.access_token is not None
    assert d.access_token.scopes == ["read"] and d.rate_limit is None
    assert d.shadowed == shadowed


async def test_the_same_stage_enforcing_keeps_its_enrichment() -> None:
    d = await VerifierChain(TokenIsSubject(scopes=["read"]), Enriches()).evaluate("user:alice")
    assert d.access_token is not None and d.access_token.scopes == ["read", "granted"] and d.rate_limit is not None


@pytest.mark.parametrize("on_error", ["deny", "allow"])
async def test_a_transient_failure_of_a_shadowed_stage_is_never_a_503(
    on_error: str, caplog: pytest.LogCaptureFixture
) -> None:
    chain = VerifierChain(TokenIsSubject(), Fails(enforce=False, on_error=on_error, name="db"))
    with caplog.at_level(logging.WARNING, logger="fastapps_auth"):
        d = await chain.evaluate("user:alice")
    assert (d.allowed, d.status) == (True, 200)
    assert d.shadowed == (("db", "unavailable"),)
    assert not d.failed_open  # it was never enforcing: nothing failed open
    (entry,) = [t for t in d.trace if t.stage == "db"]
    assert (entry.outcome, entry.reason, entry.error) == ("shadow-rejected", "unavailable", "ConnectionError")
    assert "'db' failed transiently" in caplog.text and "shadow mode" in caplog.text


def test_an_authenticating_stage_cannot_be_shadowed() -> None:
    with pytest.raises(ConfigError) as err:
        TokenIsSubject(enforce=False, name="issuer")
    assert (err.value.location.stage, err.value.location.key) == ("issuer", "enforce")


@pytest.mark.usefixtures("plugins")
def test_an_authenticating_stage_cannot_be_shadowed_in_a_file(tmp_path: Path) -> None:
    path = tmp_path / "auth.toml"
    path.write_text('[[stages]]\nuse = "token-is-subject"\nenforce = false\n')
    with pytest.raises(ConfigError) as err:
        chain_from_config(path)
    assert str(path) in str(err.value) and "stages[0] (token-is-subject)" in str(err.value)
    assert "key 'enforce'" in str(err.value)


# -- the real stages ------------------------------------------------------------------------------


async def test_a_shadowed_rate_limit_still_counts_every_request(clock: ManualClock) -> None:
    """Turning enforcement on later behaves as the shadow run predicted: the requests were charged."""
    shadow = RateLimitStage(limit=2, window=60, backend="memory://", enforce=False, clock=clock)
    chain = VerifierChain(TokenIsSubject(), shadow, clock=clock)
    decisions = [await chain.evaluate("user:alice") for _ in range(4)]
    assert all(d.allowed for d in decisions)
    over = (("rate-limit", "rate_limited"),)
    assert [d.shadowed for d in decisions] == [(), (), over, over]
    assert all(d.rate_limit is None for d in decisions)  # no RateLimit-* headers from a limit not enforced
    enforcing = RateLimitStage(limit=2, window=60, store=shadow.backend, clock=clock)
    refused = await VerifierChain(TokenIsSubject(), enforcing, clock=clock).evaluate("user:alice")
    assert (refused.allowed, refused.status, refused.reason) == (False, 429, "rate_limited")
    await chain.aclose()


@pytest.fixture
def users_db(tmp_path: Path) -> Path:
    path = tmp_path / "users.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE users (id TEXT PRIMARY KEY, active BOOLEAN, banned BOOLEAN)")
        db.executemany("INSERT INTO users VALUES (?, ?, ?)", [("alice", True, False), ("carol", True, True)])
    return path


async def test_a_shadowed_user_status_lets_a_banned_user_through_and_says_so(
    users_db: Path, clock: ManualClock
) -> None:
    chains = UserStatusChains(clock, dsn=f"sqlite:///{users_db}", enforce=False)
    chain, _ = chains()
    try:
        banned = await chain.evaluate("user:carol")
        unknown = await chain.evaluate("user:zed")
        fine = await chain.evaluate("user:alice")
    finally:
        await chains.aclose()
    assert banned.allowed and banned.shadowed == (("user-status", "user_banned"),)
    assert unknown.allowed and unknown.shadowed == (("user-status", "user_unknown"),)
    assert fine.allowed and fine.shadowed == ()


async def test_a_shadowed_user_status_whose_database_is_missing_passes(tmp_path: Path, clock: ManualClock) -> None:
    chains = UserStatusChains(clock, dsn=f"sqlite:///{tmp_path / 'absent.db'}", enforce=False)
    chain, _ = chains()
    try:
        d = await chain.evaluate("user:alice")
    finally:
        await chains.aclose()
    assert (d.allowed, d.status, d.shadowed) == (True, 200, (("user-status", "unavailable"),))


async def test_a_shadowed_scope_rule_records_the_missing_scope() -> None:
    chain = VerifierChain(
        TokenIsSubject(scopes=["read"]), ScopesStage(tools={"delete": ["files:delete"]}, enforce=False)
    )
    d = await chain.evaluate("user:alice", request=RequestInfo(mcp_method="tools/call", tool_name="delete"))
    assert d.allowed and d.scope is None
    assert d.shadowed == (("scopes", "insufficient_tool_scope"),)


# -- composites -----------------------------------------------------------------------------------


async def test_a_shadowed_nested_chain_records_its_first_refusal() -> None:
    group = VerifierChain(
        Counts(name="a"), Fails(error="rejected", name="b"), Counts(name="c"), name="group", enforce=False
    )
    after = Counts(name="after")
    d = await VerifierChain(TokenIsSubject(scopes=["read"]), group, after).evaluate("user:alice")
    assert d.allowed and after.calls == 1
    assert d.shadowed == (("b", "user_banned"),)
    assert [(t.stage, t.outcome) for t in d.trace] == [
        ("token-is-subject", "passed"),
        ("a", "passed"),
        ("b", "shadow-rejected"),
        ("after", "passed"),
    ]


async def test_a_shadowed_nested_chain_is_a_dry_run_too() -> None:
    group = VerifierChain(Enriches(), name="group", enforce=False)
    d = await VerifierChain(TokenIsSubject(scopes=["read"]), group).evaluate("user:alice")
    assert d.access_token is not None and d.access_token.scopes == ["read"] and d.shadowed == ()


def test_a_composite_holding_an_authenticating_stage_cannot_be_shadowed() -> None:
    with pytest.raises(ConfigError, match="token-is-subject") as err:
        VerifierChain(TokenIsSubject(), Counts(), name="group", enforce=False)
    assert (err.value.location.stage, err.value.location.key) == ("group", "enforce")
    with pytest.raises(ConfigError, match="authenticates"):
        AnyOf(TokenIsSubject(prefix="a:"), TokenIsSubject(prefix="b:"), enforce=False)


def test_an_alternative_of_any_of_cannot_be_shadowed_on_its_own() -> None:
    with pytest.raises(ConfigError, match="alternative 'fails' has enforce = false") as err:
        AnyOf(Fails(error="rejected", enforce=False), Counts())
    assert err.value.location.key == "enforce"


async def test_a_shadowed_any_of_records_its_refusal() -> None:
    either = AnyOf(Fails(error="rejected", name="x"), Fails(error="rejected", name="y"), name="either", enforce=False)
    d = await VerifierChain(TokenIsSubject(), either).evaluate("user:alice")
    assert d.allowed and d.shadowed == (("either", "user_banned"),)
    assert {t.stage: t.outcome for t in d.trace if t.stage in "xy"} == {"x": "shadow-rejected", "y": "shadow-rejected"}


async def test_shadow_records_of_an_alternative_not_taken_are_dropped() -> None:
    """Only the path the decision took reports what it would have refused."""
    first = VerifierChain(
        TokenIsSubject(prefix="user:", name="issuer-a"),
        Fails(error="rejected", enforce=False, name="shadow-a"),
        Fails(error="rejected", name="enforced-a"),
        name="path-a",
    )
    second = VerifierChain(TokenIsSubject(prefix="user:", name="issuer-b"), name="path-b")
    d = await VerifierChain(AnyOf(first, second)).evaluate("user:alice")
    assert d.allowed and d.shadowed == ()
    assert ("shadow-a", "shadow-rejected") in [(t.stage, t.outcome) for t in d.trace]  # the trace keeps what ran


@pytest.mark.usefixtures("plugins")
async def test_enforce_false_from_a_file_on_a_stage_and_on_a_composite(tmp_path: Path) -> None:
    path = tmp_path / "auth.toml"
    path.write_text(
        """
[[stages]]
use = "token-is-subject"

[[stages]]
use = "fails"
name = "one"
error = "rejected"
enforce = false

[[stages]]
use = "chain"
name = "group"
enforce = false
[[stages.stages]]
use = "fails"
name = "two"
error = "rejected"
"""
    )
    chain = chain_from_config(path)
    d = await chain.evaluate("user:alice")
    assert d.allowed and d.shadowed == (("one", "user_banned"), ("two", "user_banned"))


@pytest.mark.usefixtures("plugins")
def test_enforce_on_a_composite_must_be_a_boolean() -> None:
    with pytest.raises(ConfigError, match="true or false") as err:
        chain_from_config(
            {"stages": [{"use": "token-is-subject"}, {"use": "chain", "enforce": "no", "stages": [{"use": "counts"}]}]}
        )
    assert err.value.location.key == "enforce"
