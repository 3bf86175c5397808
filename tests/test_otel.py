"""The otel observer: a span per decision with a child per stage, semantic-convention attributes, never the token."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any, ClassVar

import httpx
import pytest
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from starlette.responses import JSONResponse

from fastapps_auth import (
    AccessToken,
    ConfigError,
    Decision,
    Rejected,
    RequestInfo,
    Stage,
    StageOptions,
    StageTrace,
    Verification,
    VerifierChain,
    chain_from_config,
    fingerprint,
    request_context,
)
from fastapps_auth.observers.otel import DECISION_SPAN, STAGE_SPAN, OTelObserver
from tests.support.stages import Fails, registered

ALICE = "tok-ALICE-Zq8Kx2PnVw7RtYuIoPlMnBvCxZaSdFgHjKl"
MALLORY = "tok-MALLORY-Qw3ErTyUiOpAsDfGhJkLzXcVbNmQwErTy"
UNKNOWN = "tok-UNKNOWN-MnBvCxZaSdFgHjKlPoIuYtReWqAsDfGhJ"
SUBJECTS = {ALICE: "alice", MALLORY: "mallory"}
TOOL_CALL = RequestInfo(
    method="POST", path="/mcp", client_ip="203.0.113.9", mcp_method="tools/call", tool_name="search"
)


class TableAuth(Stage[StageOptions]):
    """Authenticates the tokens of ``SUBJECTS`` from a cache."""

    plugin_name: ClassVar[str] = "table-auth"
    authenticates: ClassVar[bool] = True

    async def __call__(self, v: Verification) -> None:
        subject = SUBJECTS.get(v.token)
        if subject is None:
            raise Rejected("bad_signature", "the token signature is invalid")
        v.cache_hit = True
        v.access_token = AccessToken(
            token=v.token, client_id=f"client-{subject}", scopes=["read", "write"], subject=subject, claims={}
        )


class Ban(Stage[StageOptions]):
    plugin_name: ClassVar[str] = "ban"

    async def __call__(self, v: Verification) -> None:
        if v.access_token is not None and v.access_token.subject == "mallory":
            raise Rejected("user_banned", "the user is banned", status=403)


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider
    provider.shutdown()


def by_name(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


async def test_one_span_per_decision_with_a_child_per_stage(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    chain = VerifierChain(TableAuth(), Ban(), observers=[OTelObserver(tracer_provider=provider)])
    with request_context(TOOL_CALL):
        decision = await chain.evaluate(ALICE)
    spans = exporter.get_finished_spans()
    [span] = by_name(spans, DECISION_SPAN)
    assert span.kind == SpanKind.INTERNAL
    assert dict(span.attributes or {}) == {
        "fastapps_auth.outcome": "allowed",
        "fastapps_auth.allowed": True,
        "fastapps_auth.status": 200,
        "fastapps_auth.token_fingerprint": fingerprint(ALICE),
        "fastapps_auth.client_id": "client-alice",
        "enduser.id": "alice",
        "enduser.scope": "read write",
        "http.request.method": "POST",
        "url.path": "/mcp",
        "client.address": "203.0.113.9",
        "mcp.method.name": "tools/call",
        "gen_ai.tool.name": "search",
    }
    assert span.status.status_code == StatusCode.UNSET
    # the decision's real start and duration; the stages one after the other inside it
    assert span.start_time == int(decision.started_at * 1e9)
    assert span.end_time == span.start_time + int(decision.duration * 1e9)
    stages = [s for s in spans if s.name.startswith(STAGE_SPAN)]
    assert [s.name for s in stages] == [f"{STAGE_SPAN} table-auth", f"{STAGE_SPAN} ban"]
    assert all(s.parent is not None and s.parent.span_id == span.context.span_id for s in stages)
    assert stages[0].start_time == span.start_time
    assert stages[1].start_time == stages[0].end_time
    assert (stages[1].end_time or 0) <= (span.end_time or 0)
    assert dict(stages[0].attributes or {}) == {
        "fastapps_auth.stage": "table-auth",
        "fastapps_auth.outcome": "passed",
        "fastapps_auth.cache_hit": True,
    }


async def test_a_rejection_is_not_an_error(provider: TracerProvider, exporter: InMemorySpanExporter) -> None:
    chain = VerifierChain(TableAuth(), Ban(), observers=[OTelObserver(tracer_provider=provider)])
    await chain.evaluate(MALLORY)
    await chain.evaluate(UNKNOWN)
    banned, unknown = by_name(exporter.get_finished_spans(), DECISION_SPAN)
    attrs = dict(banned.attributes or {})
    assert (attrs["fastapps_auth.outcome"], attrs["fastapps_auth.stage"], attrs["fastapps_auth.reason"]) == (
        "rejected",
        "ban",
        "user_banned",
    )
    assert attrs["fastapps_auth.status"] == 403
    assert attrs["enduser.id"] == "mallory"  # who was refused
    assert dict(unknown.attributes or {})["fastapps_auth.reason"] == "bad_signature"
    assert "enduser.id" not in dict(unknown.attributes or {})
    assert [s.status.status_code for s in (banned, unknown)] == [StatusCode.UNSET, StatusCode.UNSET]


async def test_transient_failures_are_errors(provider: TracerProvider, exporter: InMemorySpanExporter) -> None:
    otel = OTelObserver(tracer_provider=provider)
    denied = VerifierChain(TableAuth(), Fails(name="db"), observers=[otel])
    opened = VerifierChain(TableAuth(), Fails(name="db", on_error="allow"), observers=[otel])
    assert not (await denied.evaluate(ALICE)).allowed
    assert (await opened.evaluate(ALICE)).allowed
    spans = exporter.get_finished_spans()
    unavailable, failed_open = by_name(spans, DECISION_SPAN)
    assert unavailable.status.status_code == StatusCode.ERROR
    assert unavailable.status.description == "db: unavailable"
    assert dict(unavailable.attributes or {})["fastapps_auth.outcome"] == "unavailable"
    assert failed_open.status.status_code == StatusCode.ERROR
    assert dict(failed_open.attributes or {})["fastapps_auth.failed_open"] == ("db",)
    db_spans = by_name(spans, f"{STAGE_SPAN} db")
    assert [dict(s.attributes or {})["error.type"] for s in db_spans] == ["ConnectionError", "ConnectionError"]
    assert [dict(s.attributes or {})["fastapps_auth.outcome"] for s in db_spans] == ["error-denied", "error-allowed"]
    assert all(s.status.status_code == StatusCode.ERROR for s in db_spans)


def test_stage_events_instead_of_spans_and_shadowed_rejections(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    otel = OTelObserver(tracer_provider=provider, per_stage="events")
    decision = Decision(
        True,
        None,
        trace=(
            StageTrace("jwt", "passed", 0.001, cache_hit=False),
            StageTrace("rate-limit", "shadow-rejected", 0.002, reason="rate_limited"),
        ),
        shadowed=(("rate-limit", "rate_limited"),),
        fingerprint="0123456789ab",
        started_at=1_800_000_000.5,
        duration=0.004,
    )
    otel(decision)
    [span] = exporter.get_finished_spans()
    assert span.name == DECISION_SPAN
    assert dict(span.attributes or {})["fastapps_auth.shadowed"] == ("rate-limit:rate_limited",)
    assert span.status.status_code == StatusCode.UNSET  # shadow mode refuses nobody
    first, second = span.events
    assert (first.name, first.timestamp) == (STAGE_SPAN, 1_800_000_000_500_000_000)
    assert dict(first.attributes or {}) == {
        "fastapps_auth.stage": "jwt",
        "fastapps_auth.outcome": "passed",
        "fastapps_auth.cache_hit": False,
        "fastapps_auth.duration_ms": 1.0,
    }
    assert dict(second.attributes or {})["fastapps_auth.outcome"] == "shadow-rejected"
    assert second.timestamp == first.timestamp + 1_000_000
    assert span.end_time == 1_800_000_000_504_000_000


async def test_the_decision_span_is_a_child_of_the_instrumented_requests_span(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    from fastapps_auth.integrations.starlette import ChainAuthMiddleware

    async def endpoint(scope: Any, receive: Any, send: Any) -> None:
        await JSONResponse({"ok": True})(scope, receive, send)

    chain = VerifierChain(TableAuth(), Ban(), observers=[OTelObserver(tracer_provider=provider)])
    app = OpenTelemetryMiddleware(ChainAuthMiddleware(endpoint, chain), tracer_provider=provider)
    body = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search","arguments":{}}}'
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as client:
        for token in (ALICE, MALLORY):
            headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
            await client.post("/mcp", content=body, headers=headers)
    spans = exporter.get_finished_spans()
    requests = [s for s in spans if s.kind == SpanKind.SERVER]
    decisions = by_name(spans, DECISION_SPAN)
    assert len(requests) == len(decisions) == 2
    for request, decision in zip(requests, decisions, strict=True):
        assert decision.parent is not None
        assert decision.parent.span_id == request.context.span_id
        assert decision.context.trace_id == request.context.trace_id
    assert dict(decisions[1].attributes or {})["gen_ai.tool.name"] == "search"


async def test_no_span_attribute_or_event_holds_the_token_or_a_slice_of_it(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    class Leaky(Stage[StageOptions]):
        plugin_name: ClassVar[str] = "leaky"

        async def __call__(self, v: Verification) -> None:
            raise ConnectionError(f"the database refused {v.token}")

    for per_stage in ("spans", "events"):
        otel = OTelObserver(tracer_provider=provider, per_stage=per_stage)
        chains = [
            VerifierChain(TableAuth(), Ban(), observers=[otel]),
            VerifierChain(TableAuth(), Leaky(), observers=[otel]),
            VerifierChain(TableAuth(), Leaky(on_error="allow"), observers=[otel]),
        ]
        for chain in chains:
            for token in (ALICE, MALLORY, UNKNOWN):
                with request_context(TOOL_CALL):
                    await chain.evaluate(token)
    texts: list[str] = []
    spans = exporter.get_finished_spans()
    assert len(by_name(spans, DECISION_SPAN)) == 18
    for span in spans:
        texts += [span.name, str(span.status.description)]
        texts += [f"{k}={v!r}" for k, v in (span.attributes or {}).items()]
        for event in span.events:
            texts += [event.name, *(f"{k}={v!r}" for k, v in (event.attributes or {}).items())]
    everything = "\n".join(texts)
    for token in (ALICE, MALLORY, UNKNOWN):
        slices = {token[i : i + 12] for i in range(len(token) - 11)}
        assert not [s for s in slices if s in everything], f"a slice of the token {fingerprint(token)} is in a span"
    assert fingerprint(ALICE) in everything


def test_a_client_sent_lone_surrogate_is_escaped(provider: TracerProvider, exporter: InMemorySpanExporter) -> None:
    OTelObserver(tracer_provider=provider)(Decision(False, None, request=RequestInfo(tool_name="\ud800evil")))
    [span] = exporter.get_finished_spans()
    name = dict(span.attributes or {})["gen_ai.tool.name"]
    assert name == "\\ud800evil"
    assert isinstance(name, str)
    name.encode("utf-8")  # what an exporter does: it must not raise


def test_built_from_config_by_name() -> None:
    with registered(TableAuth):
        chain = chain_from_config({"stages": [{"use": "table-auth"}, {"use": "otel", "per_stage": "events"}]})
    [otel] = chain.observers
    assert isinstance(otel, OTelObserver)
    assert otel.options.per_stage == "events"
    with registered(TableAuth), pytest.raises(ConfigError) as info:
        chain_from_config({"stages": [{"use": "table-auth"}, {"use": "otel", "per_stage": "logs"}]})
    assert info.value.location.key == "per_stage"


def test_without_opentelemetry_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # what an import of a missing package does
    with pytest.raises(ConfigError, match=r"fastapps-auth\[otel\]") as info:
        OTelObserver()
    assert info.value.location.stage == "otel"


def test_the_core_imports_no_opentelemetry_and_no_prometheus_client() -> None:
    code = (
        "import sys, asyncio\n"
        "import fastapps_auth, fastapps_auth.observers, fastapps_auth.stages.audit\n"
        "from fastapps_auth import VerifierChain\n"
        "from fastapps_auth.observers import AuditObserver\n"
        "asyncio.run(VerifierChain(observers=[AuditObserver()]).evaluate('x'))\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'opentelemetry', 'prometheus_client'}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"
