"""The ``otel`` observer: one OpenTelemetry span per decision, with a child span (or an event) per stage.

The span ``fastapps_auth.decision`` covers the decision's own start and duration, and is a
child of the current span: the request's, when the app is instrumented (observers run inside
the request's context). Attributes follow the semantic conventions where they exist
(``enduser.id``, ``enduser.scope``, ``http.request.method``, ``url.path``, ``client.address``,
``mcp.method.name``, ``gen_ai.tool.name``, ``error.type``); ours are under ``fastapps_auth.*``.
The token is never an attribute: its fingerprint is. The status is an error only for a
transient failure (503, or a stage that failed open): a rejection is the system working.
Needs the ``otel`` extra (opentelemetry-api), imported when the observer is built, so that
``fastapps-auth plugins`` lists it without the extra; without an SDK configured, spans cost
next to nothing.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from fastapps_auth.clock import Clock
from fastapps_auth.component import ComponentOptions
from fastapps_auth.decision import Decision, StageTrace
from fastapps_auth.errors import ConfigError
from fastapps_auth.observer import Observer
from fastapps_auth.observers.audit import decision_outcome

if TYPE_CHECKING:
    from opentelemetry.trace import Span, TracerProvider

__all__ = ["DECISION_SPAN", "STAGE_SPAN", "OTelObserver", "OTelOptions"]

#: The name of the decision's span, and the prefix of its stages' spans (``fastapps_auth.stage jwt``).
DECISION_SPAN = "fastapps_auth.decision"
STAGE_SPAN = "fastapps_auth.stage"

Attributes = dict[str, Any]


class OTelOptions(ComponentOptions):
    """Options of the ``otel`` observer."""

    tracer: str = Field(default="fastapps_auth", min_length=1, description="The tracer's name (instrumentation scope).")
    per_stage: Literal["spans", "events"] = Field(
        default="spans",
        description="spans: a child span per stage (its outcome, cache hit, timing); "
        "events: one event per stage on the decision's span instead (fewer spans to export).",
    )


def _version() -> str | None:
    """This distribution's version, the tracer's instrumentation-scope version."""
    try:
        return version("fastapps-auth")
    except PackageNotFoundError:
        return None


def _text(value: str) -> str:
    """A client-sent string as one exporters can encode (a lone surrogate becomes an escape)."""
    return value if value.isascii() else value.encode("utf-8", "backslashreplace").decode("utf-8")


def _error(decision: Decision) -> str | None:
    """What failed, when the decision involves a transient failure; else ``None``."""
    if decision.status == 503:
        return f"{decision.stage}: {decision.reason}"
    if decision.failed_open:
        return f"failed open: {', '.join(decision.failed_open)}"
    return None


def decision_attributes(decision: Decision) -> Attributes:
    """The decision span's attributes (never the token)."""
    out: Attributes = {
        "fastapps_auth.outcome": decision_outcome(decision),
        "fastapps_auth.allowed": decision.allowed,
        "fastapps_auth.status": decision.status,
    }
    if decision.fingerprint:
        out["fastapps_auth.token_fingerprint"] = decision.fingerprint
    if not decision.allowed:
        out["fastapps_auth.stage"] = decision.stage or ""
        out["fastapps_auth.reason"] = decision.reason or ""
        if decision.error:
            out["fastapps_auth.error"] = decision.error
    if decision.failed_open:
        out["fastapps_auth.failed_open"] = list(decision.failed_open)
    if decision.shadowed:
        out["fastapps_auth.shadowed"] = [f"{stage}:{reason}" for stage, reason in decision.shadowed]
    at = decision.principal
    if at is not None:
        if at.subject:
            out["enduser.id"] = at.subject
        if at.scopes:
            out["enduser.scope"] = " ".join(at.scopes)
        if at.client_id:
            out["fastapps_auth.client_id"] = at.client_id
    req = decision.request
    if req is not None:
        if req.method:
            out["http.request.method"] = req.method
        if req.path:
            out["url.path"] = _text(req.path)
        if req.client_ip:
            out["client.address"] = req.client_ip
        if req.mcp_method:
            out["mcp.method.name"] = _text(req.mcp_method)
        if req.tool_name:
            out["gen_ai.tool.name"] = _text(req.tool_name)
    return out


def stage_attributes(step: StageTrace) -> Attributes:
    out: Attributes = {"fastapps_auth.stage": step.stage, "fastapps_auth.outcome": step.outcome}
    if step.cache_hit is not None:
        out["fastapps_auth.cache_hit"] = step.cache_hit
    if step.reason:
        out["fastapps_auth.reason"] = step.reason
    if step.error:
        out["error.type"] = step.error
    return out


class OTelObserver(Observer[OTelOptions]):
    """A span per decision on ``tracer_provider`` (default: the global one, set by the application)."""

    plugin_name: ClassVar[str] = "otel"
    options_model: ClassVar[type[ComponentOptions]] = OTelOptions

    def __init__(
        self,
        options: OTelOptions | None = None,
        /,
        *,
        clock: Clock | None = None,
        tracer_provider: TracerProvider | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(options, clock=clock, **kwargs)
        try:
            from opentelemetry import trace
        except ImportError:
            raise ConfigError(
                "the otel observer needs opentelemetry-api: pip install 'fastapps-auth[otel]'", stage=self.name
            ) from None
        self._trace = trace
        self._tracer = trace.get_tracer(self.options.tracer, _version(), tracer_provider=tracer_provider)
        self._spans = self.options.per_stage == "spans"

    def __call__(self, decision: Decision) -> None:
        start = int(decision.started_at * 1e9)
        span = self._tracer.start_span(
            DECISION_SPAN,
            kind=self._trace.SpanKind.INTERNAL,
            start_time=start,
            attributes=decision_attributes(decision),
        )
        if span.is_recording():
            self._stages(span, decision, start)
            error = _error(decision)
            if error is not None:
                span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, error))
        span.end(end_time=start + int(decision.duration * 1e9))

    def _stages(self, span: Span, decision: Decision, at: int) -> None:
        """The stages, one after the other from the decision's start (they run in sequence)."""
        context = self._trace.set_span_in_context(span) if self._spans else None
        for step in decision.trace:
            attributes = stage_attributes(step)
            end = at + int(step.duration * 1e9)
            if context is None:
                attributes["fastapps_auth.duration_ms"] = step.duration * 1000
                span.add_event(STAGE_SPAN, attributes, timestamp=at)
            else:
                child = self._tracer.start_span(
                    f"{STAGE_SPAN} {step.stage}", context=context, start_time=at, attributes=attributes
                )
                if step.error:
                    child.set_status(self._trace.Status(self._trace.StatusCode.ERROR, step.error))
                child.end(end_time=end)
            at = end
