"""VerifierChain, AnyOf and the on_error policy, with stages that need no network."""

from __future__ import annotations

import json
import logging
from typing import Any, ClassVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastapps_auth import (
    AccessToken,
    AnyOf,
    ConfigError,
    Decision,
    Observer,
    Rejected,
    RequestInfo,
    Stage,
    StageOptions,
    TransientError,
    Verification,
    VerifierChain,
    request_context,
)
from fastapps_auth.chain import MAX_TOKEN_CHARS
from fastapps_auth.component import ComponentOptions
from tests.support.observers import Recorder
from tests.support.stages import Counts, Fails, TokenIsSubject


class Broken(Observer[ComponentOptions]):
    plugin_name = "broken"

    def __call__(self, decision: Decision) -> None:
        raise RuntimeError("observer bug")


async def test_allowed_decision_carries_token_and_trace() -> None:
    counts = Counts()
    chain = VerifierChain(TokenIsSubject(), counts)
    d = await chain.evaluate("user:alice")
    assert d.allowed and d.status == 200
    assert d.access_token is not None and d.access_token.subject == "alice"
    assert [t.stage for t in d.trace] == ["token-is-subject", "counts"]
    assert all(t.outcome == "passed" for t in d.trace)
    assert counts.seen == ["alice"]
    assert len(d.fingerprint) == 12 and "alice" not in d.fingerprint


async def test_first_rejection_stops_the_chain() -> None:
    after = Counts()
    chain = VerifierChain(TokenIsSubject(), Fails(error="rejected", name="db"), after)
    d = await chain.evaluate("user:bob")
    assert not d.allowed
    assert (d.stage, d.reason, d.status, d.error) == ("db", "user_banned", 401, "invalid_token")
    assert d.description == "account disabled"
    assert after.calls == 0
    assert [t.outcome for t in d.trace] == ["passed", "rejected"]
    assert await chain.verify_token("user:bob") is None


async def test_transient_failure_denies_with_503_by_default(caplog: pytest.LogCaptureFixture) -> None:
    chain = VerifierChain(TokenIsSubject(), Fails(retry_after=7))
    with caplog.at_level(logging.WARNING, logger="fastapps_auth"):
        d = await chain.evaluate("user:carol")
    assert (d.allowed, d.status, d.error, d.reason, d.retry_after) == (
        False,
        503,
        "temporarily_unavailable",
        "unavailable",
        7,
    )
    assert d.trace[-1].outcome == "error-denied" and d.trace[-1].error == "ConnectionError"
    assert "fails" in caplog.text and "user:carol" not in caplog.text


async def test_transient_failure_fails_open_when_allowed_and_is_recorded() -> None:
    after = Counts()
    chain = VerifierChain(TokenIsSubject(), Fails(on_error="allow"), after)
    d = await chain.evaluate("user:dave")
    assert d.allowed and d.access_token is not None
    assert d.failed_open == ("fails",)
    assert d.trace[1].outcome == "error-allowed"
    assert after.calls == 1


async def test_a_bug_in_a_stage_is_a_transient_failure_not_a_crash() -> None:
    d = await VerifierChain(TokenIsSubject(), Fails(error="bug")).evaluate("user:eve")
    assert d.status == 503 and d.trace[-1].error == "KeyError"


def test_an_authenticating_stage_cannot_fail_open() -> None:
    with pytest.raises(ConfigError, match="on_error"):
        TokenIsSubject(on_error="allow")


def test_unknown_option_is_named_at_construction() -> None:
    with pytest.raises(ConfigError) as err:
        Fails(eror="bug")
    assert "eror" in str(err.value) and "fails" in str(err.value)


def test_wrong_type_is_named_at_construction() -> None:
    with pytest.raises(ConfigError, match="retry_after"):
        Fails(retry_after="soon")


async def test_chain_without_authenticator_never_allows() -> None:
    d = await VerifierChain(Counts()).evaluate("anything")
    assert not d.allowed and d.reason == "unauthenticated" and d.status == 401


@pytest.mark.parametrize("token", ["", None, 42, b"user:alice", "x" * (MAX_TOKEN_CHARS + 1)])
async def test_garbage_input_is_a_clean_rejection(token: Any) -> None:
    chain = VerifierChain(TokenIsSubject(prefix="x"))
    d = await chain.evaluate(token)
    assert not d.allowed and d.status == 401
    assert await chain.verify_token(token) is None


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
async def test_verify_token_never_raises(token: str) -> None:
    chain = VerifierChain(TokenIsSubject(), Fails(error="bug", on_error="allow"))
    result = await chain.verify_token(token)
    assert result is None or (token.startswith("user:") and result.subject == token[5:])


async def test_nested_chains_trace_every_inner_stage() -> None:
    inner = VerifierChain(Counts(name="inner-a"), Fails(error="rejected", name="inner-b"), name="inner")
    d = await VerifierChain(TokenIsSubject(), inner).evaluate("user:frank")
    assert d.stage == "inner-b"
    assert [t.stage for t in d.trace] == ["token-is-subject", "inner-a", "inner-b"]


async def test_any_of_takes_the_first_alternative_that_accepts() -> None:
    chain = VerifierChain(
        AnyOf(TokenIsSubject(prefix="a:", name="issuer-a"), TokenIsSubject(prefix="b:", name="issuer-b"))
    )
    d = await chain.evaluate("b:grace")
    assert d.allowed and d.access_token is not None and d.access_token.subject == "grace"
    assert [(t.stage, t.outcome) for t in d.trace] == [("issuer-a", "rejected"), ("issuer-b", "passed")]


async def test_any_of_reports_why_each_alternative_failed() -> None:
    chain = VerifierChain(
        AnyOf(TokenIsSubject(prefix="a:", name="issuer-a"), Fails(error="rejected", name="issuer-b"), name="issuers")
    )
    d = await chain.evaluate("c:heidi")
    assert not d.allowed and d.stage == "issuers" and d.reason == "no_alternative_accepted"
    assert d.description is not None
    assert "issuer-a: bad_signature" in d.description and "issuer-b: user_banned" in d.description


async def test_any_of_is_transient_when_an_alternative_could_not_answer() -> None:
    chain = VerifierChain(AnyOf(TokenIsSubject(prefix="a:"), Fails()))
    d = await chain.evaluate("b:ivan")
    assert d.status == 503 and d.error == "temporarily_unavailable"


async def test_observers_see_every_decision_once_and_cannot_break_it(caplog: pytest.LogCaptureFixture) -> None:
    rec = Recorder()
    chain = VerifierChain(TokenIsSubject(), observers=[Broken(), rec])
    with caplog.at_level(logging.ERROR, logger="fastapps_auth"):
        allowed = await chain.verify_token("user:judy")
        denied = await chain.verify_token("nope")
    assert allowed is not None and denied is None
    assert [d.allowed for d in rec.decisions] == [True, False]
    assert "observer 'broken' failed" in caplog.text


async def test_observer_cannot_change_a_decision_already_returned() -> None:
    class Meddler(Observer[ComponentOptions]):
        plugin_name = "meddler"

        def __call__(self, decision: Decision) -> None:
            decision.allowed = True  # type: ignore[misc]

    chain = VerifierChain(TokenIsSubject(), observers=[Meddler()])
    assert await chain.verify_token("nope") is None
    d = await chain.evaluate("nope")
    assert d.allowed is False


async def test_request_context_reaches_the_stages() -> None:
    seen: list[RequestInfo | None] = []

    class Peek(Counts):
        async def __call__(self, v: Any) -> None:
            seen.append(v.request)

    chain = VerifierChain(TokenIsSubject(), Peek())
    info = RequestInfo(method="POST", path="/mcp", client_ip="127.0.0.1", tool_name="search")
    with request_context(info):
        d = await chain.evaluate("user:kim")
    assert seen == [info] and d.request == info
    await chain.evaluate("user:kim")
    assert seen[-1] is None


async def test_start_and_aclose_reach_every_stage_once() -> None:
    a, b = Counts(name="a"), Counts(name="b")
    async with VerifierChain(TokenIsSubject(), VerifierChain(a), b) as chain:
        await chain.start()
    await chain.aclose()
    assert (a.started, b.started, a.closes, b.closes) == (1, 1, 1, 1)


def test_chain_rejects_non_stages() -> None:
    with pytest.raises(TypeError, match="observers"):
        VerifierChain(Recorder())  # type: ignore[arg-type]


def test_access_token_is_the_mcp_sdk_type() -> None:
    from mcp.server.auth.provider import AccessToken as SdkAccessToken

    # A subclass, so every host takes it; it only keeps the raw token out of repr and str.
    assert issubclass(AccessToken, SdkAccessToken)
    assert {"subject", "claims", "expires_at", "resource"} <= set(AccessToken.model_fields)
    at = AccessToken(token="raw.bearer.value", client_id="c", scopes=["s"], subject="alice")
    assert "raw.bearer.value" not in repr(at) and "raw.bearer.value" not in str(at) and "raw.bearer" not in f"{at}"
    assert at.model_copy(update={"scopes": []}).token == "raw.bearer.value"


def test_rejected_defaults_are_client_safe() -> None:
    r = Rejected("user_banned")
    assert (r.status, r.error, r.description) == (401, "invalid_token", "user banned")


async def test_a_rejection_after_authentication_keeps_the_principal_for_audit() -> None:
    d = await VerifierChain(TokenIsSubject(), Fails(error="rejected")).evaluate("user:mallory")
    assert not d.allowed and d.access_token is None
    assert d.principal is not None and d.subject == "mallory"
    assert d.as_dict()["subject"] == "mallory"


async def test_a_rejection_before_authentication_has_no_principal() -> None:
    d = await VerifierChain(TokenIsSubject()).evaluate("forged")
    assert d.principal is None and d.subject is None


@pytest.mark.parametrize("quote", [lambda t: t, lambda t: t[:20], lambda t: repr(t[5:40]), lambda t: t[-17:]])
async def test_failure_messages_that_quote_the_token_are_withheld(quote: Any, caplog: pytest.LogCaptureFixture) -> None:
    raw = "user:" + "eyJhbGciOiJSUzI1NiJ9.payload-part-0123456789.signature-part-abcdefghijk"

    class Leaky(Counts):
        async def __call__(self, v: Any) -> None:
            raise ConnectionError(f"cannot check {quote(v.token)}")

    with caplog.at_level(logging.WARNING, logger="fastapps_auth"):
        d = await VerifierChain(TokenIsSubject(), Leaky(name="leaky")).evaluate(raw)
    assert d.status == 503
    assert "withheld" in caplog.text
    assert raw[0:20] not in caplog.text
    assert raw[-17:] not in caplog.text


def test_a_nested_chain_with_observers_is_refused() -> None:
    inner = VerifierChain(TokenIsSubject(), observers=[Recorder()], name="inner")
    with pytest.raises(TypeError, match="'inner' has observers \\(recorder\\)"):
        VerifierChain(inner)
    with pytest.raises(TypeError, match="outermost chain"):
        AnyOf(inner)


class SyncClose(Counts):
    """A plugin that got ``aclose`` wrong: a plain method (returns ``None``, or raises before any await)."""

    def __init__(self, *args: Any, raises: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.raises = raises

    def aclose(self) -> None:  # type: ignore[override]
        if self.raises:
            raise RuntimeError("closed twice")


@pytest.mark.parametrize("raises", [False, True])
async def test_a_stage_with_a_broken_aclose_does_not_stop_the_others_closing(
    raises: bool, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = Counts(name="a"), Counts(name="b")
    chain = VerifierChain(TokenIsSubject(), SyncClose(name="bad", raises=raises), a, AnyOf(SyncClose(name="alt"), b))
    await chain.aclose()
    assert (a.closes, b.closes) == (1, 1)
    assert "closing 'bad' failed" in caplog.text and "closing 'alt' failed" in caplog.text


class WaitsForever(Stage[StageOptions]):
    """A store that is down and says to come back in an infinite (or undefined) time."""

    plugin_name: ClassVar[str] = "waits-forever"

    def __init__(self, wait: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.wait = wait

    async def __call__(self, v: Verification) -> None:
        raise TransientError("down", retry_after=self.wait)


@pytest.mark.parametrize(("wait", "told"), [(float("inf"), 2.0**31), (float("nan"), None), (-5.0, 0.0), (7.5, 7.5)])
async def test_a_wait_a_client_cannot_be_told_is_bounded(wait: float, told: float | None) -> None:
    d = await VerifierChain(TokenIsSubject(), WaitsForever(wait)).evaluate("user:alice")
    assert (d.status, d.retry_after) == (503, told)
    json.dumps(d.as_dict(), allow_nan=False)  # no Infinity or NaN: valid JSON for the CLI's --json and any log
    assert Rejected("rate_limited", retry_after=wait).retry_after == told
