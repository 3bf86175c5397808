"""Rejected's status/error pairs (RFC 6750, RFC 9470), decide(), and Verification.snapshot()/restore()."""

from __future__ import annotations

from typing import Any

import pytest

from fastapps_auth import AccessToken, ManualClock, RateLimitInfo, Rejected, RequestInfo, StageTrace, Verification
from fastapps_auth.decision import decide


@pytest.mark.parametrize(
    ("error", "status"),
    [
        ("invalid_token", 403),
        ("invalid_token", 400),
        ("insufficient_scope", 401),
        ("insufficient_scope", 400),
        ("invalid_request", 401),
        ("insufficient_user_authentication", 403),
    ],
)
def test_a_pair_rfc_6750_forbids_is_refused_at_construction(error: str, status: int) -> None:
    with pytest.raises(ValueError, match=f"{error}.*goes with HTTP status"):
        Rejected("nope", error=error, status=status)


@pytest.mark.parametrize(
    ("error", "status"),
    [
        ("invalid_request", 400),
        ("invalid_token", 401),
        ("insufficient_scope", 403),
        ("insufficient_user_authentication", 401),
        ("rate_limited", 429),
        ("rate_limited", 403),
        ("temporarily_unavailable", 503),
        ("use_dpop_nonce", 401),
        ("acme_policy", 451),
    ],
)
def test_rfc_pairs_and_other_codes_with_any_status_are_accepted(error: str, status: int) -> None:
    r = Rejected("x", error=error, status=status)
    assert (r.error, r.status) == (error, status)


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, "invalid_request"),
        (401, "invalid_token"),
        (403, "insufficient_scope"),
        (429, "rate_limited"),
        (503, "temporarily_unavailable"),
    ],
)
def test_the_default_error_follows_the_status(status: int, error: str) -> None:
    assert Rejected("x", status=status).error == error


@pytest.mark.parametrize(
    ("status", "kind"), [(200, ValueError), (302, ValueError), (600, ValueError), ("403", TypeError), (True, TypeError)]
)
def test_a_status_that_is_not_an_error_status_is_refused(status: Any, kind: type[Exception]) -> None:
    with pytest.raises(kind, match="status"):
        Rejected("x", status=status, error="acme")


def test_a_status_without_a_default_code_needs_an_explicit_error() -> None:
    with pytest.raises(ValueError, match="explicit error"):
        Rejected("teapot", status=418)
    with pytest.raises(TypeError):
        Rejected("x", error="")


def test_decide_takes_every_field_of_a_rejection_by_name() -> None:
    at = AccessToken(token="t", client_id="c", scopes=[], subject="alice")
    r = Rejected(
        "insufficient_user_authentication",
        "step up",
        error="insufficient_user_authentication",
        status=401,
        scope="pay",
        acr_values="mfa",
        max_age=300,
    )
    r.stage = "scopes"
    trace = (StageTrace("scopes", "rejected", 0.001, None, r.reason),)
    d = decide(r, access_token=at, trace=trace, shadowed=(("x", "y"),), fingerprint="abc", started_at=5.0, duration=0.5)
    assert (d.allowed, d.access_token, d.principal, d.status, d.stage, d.error) == (
        False,
        None,
        at,
        401,
        "scopes",
        "insufficient_user_authentication",
    )
    assert (d.description, d.scope, d.acr_values, d.max_age, d.shadowed) == (
        "step up",
        "pay",
        "mfa",
        300,
        (("x", "y"),),
    )
    assert (d.trace, d.fingerprint, d.started_at, d.duration) == (trace, "abc", 5.0, 0.5)
    allowed = decide(None, access_token=at, trace=())
    assert (allowed.allowed, allowed.access_token, allowed.status, allowed.reason) == (True, at, 200, None)


def test_restore_undoes_exactly_what_a_stage_may_change() -> None:
    v = Verification("t", now=0.0, clock=ManualClock(), request=RequestInfo(tool_name="x"))
    before = AccessToken(token="t", client_id="c", scopes=[], subject="alice")
    v.access_token = before
    v.failed_open.append("earlier")
    saved = v.snapshot()
    v.access_token = before.model_copy(update={"scopes": ["more"]})
    v.rate_limit = RateLimitInfo(1, 0, 1.0, 1.0)
    v.failed_open.append("inner")
    v.shadowed.append(("inner", "why"))
    v.trace.append(StageTrace("inner", "passed", 0.0))
    v.cache_hit = True
    v.restore(saved)
    assert v.access_token is before and v.rate_limit is None
    assert v.failed_open == ["earlier"] and v.shadowed == []
    assert len(v.trace) == 1 and v.cache_hit is True  # the record of what ran stays
