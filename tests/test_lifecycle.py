"""Lifecycle: start() never raises for an unreachable service; after aclose() every stage refuses (503 closed)."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from fastapps_auth import AnyOf, ConfigError, VerifierChain
from fastapps_auth.stages.roles import RolesStage
from fastapps_auth.stages.scopes import ScopesStage
from fastapps_auth.stages.tenant import TenantStage
from tests.support.observers import Recorder
from tests.support.stages import Counts, Probes, TokenIsSubject


async def test_a_closed_chain_refuses_without_calling_any_stage_or_observer() -> None:
    counts, rec = Counts(), Recorder()
    chain = VerifierChain(TokenIsSubject(), counts, observers=[rec], name="main")
    await chain.aclose()
    d = await chain.evaluate("user:alice")
    assert (d.allowed, d.status, d.error, d.reason, d.stage) == (
        False,
        503,
        "temporarily_unavailable",
        "closed",
        "main",
    )
    assert d.retry_after == 5.0 and d.trace == ()
    assert counts.calls == 0 and rec.decisions == []
    assert await chain.verify_token("user:alice") is None


@pytest.mark.parametrize(
    "stage",
    [
        TenantStage(required=False),
        RolesStage(scopes={"admin": ["x"]}),
        ScopesStage(required=["read"]),
        VerifierChain(Counts(), name="inner"),
        AnyOf(Counts(), name="either"),
    ],
    ids=["tenant", "roles", "scopes", "chain", "any-of"],
)
async def test_a_stage_closed_on_its_own_is_refused_with_503_without_being_called(stage: Any) -> None:
    after = Counts(name="after")
    chain = VerifierChain(TokenIsSubject(scopes=["read"]), stage, after)
    assert (await chain.evaluate("user:alice")).allowed
    await stage.aclose()
    assert stage.closed
    d = await chain.evaluate("user:alice")
    assert (d.status, d.error, d.reason, d.stage) == (503, "temporarily_unavailable", "closed", stage.name)
    assert d.trace[-1].outcome == "error-denied" and d.trace[-1].reason == "closed"
    assert after.calls == 1  # only the first, open, evaluation reached it


async def test_a_closed_stage_refuses_even_when_it_would_fail_open() -> None:
    """``on_error = "allow"`` is about a service failing, not about a stage used after it was closed."""
    stage = ScopesStage(required=["read"], on_error="allow")
    await stage.aclose()
    d = await VerifierChain(TokenIsSubject(), stage).evaluate("user:alice")
    assert (d.status, d.reason) == (503, "closed")


async def test_a_closed_stage_that_does_not_enforce_is_recorded_not_refused() -> None:
    stage = ScopesStage(required=["read"], enforce=False)
    await stage.aclose()
    d = await VerifierChain(TokenIsSubject(), stage).evaluate("user:alice")
    assert d.allowed and d.shadowed == (("scopes", "closed"),)


async def test_a_stage_whose_aclose_forgets_to_mark_it_is_marked_by_the_chain() -> None:
    shared = Counts(name="shared")  # overrides aclose without setting ``closed``
    first = VerifierChain(TokenIsSubject(), shared)
    second = VerifierChain(TokenIsSubject(), shared)
    await first.aclose()
    assert shared.closed and shared.closes == 1
    d = await second.evaluate("user:alice")
    assert (d.status, d.stage, d.reason) == (503, "shared", "closed") and shared.calls == 0


async def test_aclose_marks_nested_components_closed() -> None:
    a, b = Counts(name="a"), Counts(name="b")
    inner = VerifierChain(a, name="inner")
    either = AnyOf(b, name="either")
    rec = Recorder()
    chain = VerifierChain(TokenIsSubject(), inner, either, observers=[rec])
    await chain.aclose()
    await chain.aclose()
    assert all(c.closed for c in (chain, inner, either, a, b, rec))
    assert (a.closes, b.closes) == (1, 1)


async def test_start_logs_an_unreachable_service_once_and_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    down, up = Probes(start="fail", name="redis-limit"), Probes(name="fine")
    nested = Probes(start="fail", name="deep")
    chain = VerifierChain(TokenIsSubject(), down, up, AnyOf(VerifierChain(nested), Counts()))
    with caplog.at_level(logging.WARNING, logger="fastapps_auth"):
        await chain.start()
    assert (down.started, up.started, nested.started) == (1, 1, 1)
    failures = [r for r in caplog.records if "starting" in r.getMessage()]
    assert sorted(r.getMessage().split("'")[1] for r in failures) == ["deep", "redis-limit"]
    assert "ConnectionError" in failures[0].getMessage() and "first use" in failures[0].getMessage()
    assert (await chain.evaluate("user:alice")).allowed
    await chain.aclose()


async def test_start_still_raises_a_config_error() -> None:
    chain = VerifierChain(TokenIsSubject(), Probes(start="config", name="bad"), Probes(start="fail"))
    with pytest.raises(ConfigError) as err:
        await chain.start()
    assert (err.value.location.stage, err.value.location.key) == ("bad", "start")
    await chain.aclose()


class SyncStart(Counts):
    """A plugin that got ``start`` wrong: a plain method that raises before anything is awaited."""

    def start(self) -> None:  # type: ignore[override]
        raise OSError("no route to host")


async def test_a_start_that_is_not_a_coroutine_fails_alone(caplog: pytest.LogCaptureFixture) -> None:
    other = Probes(name="other")
    chain = VerifierChain(TokenIsSubject(), SyncStart(name="sync"), other)
    with caplog.at_level(logging.WARNING, logger="fastapps_auth"):
        await chain.start()
    assert other.started == 1 and "starting 'sync' failed (OSError: no route to host)" in caplog.text
