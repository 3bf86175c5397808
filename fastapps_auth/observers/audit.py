"""The ``audit`` observer: one structured event per decision, with its trace and a token fingerprint.

Every decision is logged exactly once. Allowed decisions may be sampled (``sample_allowed``);
rejections, 503s, fail-opens and shadowed rejections never are. The event never holds the
token, only its fingerprint. Rendering and delivery belong to the sink (``observers.sinks``):
stdlib logging (default), structlog, or buffered lines on stdout, stderr or a file.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Literal

from pydantic import Field, ValidationInfo, field_validator

from fastapps_auth.clock import Clock
from fastapps_auth.component import ComponentOptions
from fastapps_auth.decision import Decision
from fastapps_auth.observer import Observer
from fastapps_auth.observers.render import renderer
from fastapps_auth.observers.sinks import EVENT, LoggingSink, Sink, StreamSink, StructlogSink

__all__ = ["EVENT", "AuditObserver", "AuditOptions", "decision_outcome"]

Renderer = Literal["json", "logfmt", "console", "structlog"]


def decision_outcome(decision: Decision) -> str:
    """``allowed``, ``failed-open`` (allowed although a stage could not be asked), ``rejected`` or ``unavailable``."""
    if decision.allowed:
        return "failed-open" if decision.failed_open else "allowed"
    return "unavailable" if decision.status == 503 else "rejected"


class AuditOptions(ComponentOptions):
    """Options of the ``audit`` observer."""

    logger: str = Field(
        default="fastapps_auth.audit",
        min_length=1,
        description="Name of the logger the events go to (a stdlib logger, or structlog's with renderer=structlog).",
    )
    renderer: Renderer = Field(
        default="json",
        description=(
            "json: one JSON object per line; logfmt: key=value; console: human-readable; "
            "structlog: hand the event to the application's own structlog configuration."
        ),
    )
    claims: list[str] = Field(
        default_factory=list,
        max_length=64,
        description="Token claims copied into the event (an allow-list; nothing else of the token's claims is logged).",
    )
    sample_allowed: float = Field(
        default=1.0,
        ge=0.0,
        le=1.0,
        description="Fraction of allowed decisions logged (rejections, fail-opens and shadowed rejections: all).",
    )
    include_trace: bool = Field(default=True, description="Include the per-stage trace in each event.")
    sink: Literal["logging", "stdout", "stderr", "file"] = Field(
        default="logging",
        description=(
            "logging: one record per event on the stdlib logger `logger` (your handlers decide where it goes); "
            "stdout, stderr or file: the lines written directly, in batches (see flush_interval)."
        ),
    )
    path: str | None = Field(
        default=None,
        min_length=1,
        validate_default=True,
        description="The file the lines are appended to (sink = file).",
    )
    flush_interval: float = Field(
        default=0.5,
        ge=0.0,
        le=60.0,
        description="stdout/stderr/file sinks: longest wait of a line in the buffer (seconds; 0: write at once).",
    )
    max_buffer: int = Field(
        default=1000, ge=1, le=1_000_000, description="stdout/stderr/file sinks: lines buffered before a write."
    )

    @field_validator("sink")
    @classmethod
    def _sink_renders(cls, value: str, info: ValidationInfo) -> str:
        renderer = info.data.get("renderer")
        if value != "logging" and renderer in ("structlog", "console"):
            raise ValueError(f"renderer = {renderer!r} needs sink = 'logging'")
        return value

    @field_validator("path")
    @classmethod
    def _path_for_file(cls, value: str | None, info: ValidationInfo) -> str | None:
        sink = info.data.get("sink")
        if sink == "file" and value is None:
            raise ValueError("sink = 'file' needs a path")
        if sink not in ("file", None) and value is not None:
            raise ValueError("path is only used with sink = 'file'")
        return value

    @field_validator("claims")
    @classmethod
    def _claim_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not name or len(name) > 128:
                raise ValueError("claim names must be 1-128 characters")
        return value


def _sink(opts: AuditOptions) -> Sink:
    if opts.renderer == "structlog":
        return StructlogSink(opts.logger)
    render = renderer(opts.renderer)
    if opts.sink == "logging":
        return LoggingSink(logging.getLogger(opts.logger), render.text)
    return StreamSink(
        opts.sink, path=opts.path, flush_interval=opts.flush_interval, max_buffer=opts.max_buffer, encode=render.line
    )


def _ms(seconds: float) -> float:
    """Milliseconds to the microsecond, half up (``round(x, 3)`` goes through a decimal string: slower)."""
    return int(seconds * 1_000_000 + 0.5) / 1000


class AuditObserver(Observer[AuditOptions]):
    """Logs every decision as one structured event (see ``docs/observers.md`` for the fields).

    ``rng`` (a ``random.Random``) decides the sampling of allowed decisions; tests seed it.
    """

    plugin_name: ClassVar[str] = "audit"
    options_model: ClassVar[type[ComponentOptions]] = AuditOptions

    def __init__(
        self,
        options: AuditOptions | None = None,
        /,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(options, clock=clock, **kwargs)
        opts = self.options
        self._claims: tuple[str, ...] = tuple(dict.fromkeys(opts.claims))
        self._rate = opts.sample_allowed
        self._random: Callable[[], float] = (rng or random.Random()).random
        self._trace = opts.include_trace
        self.sink: Sink = _sink(opts)
        #: (second, its ISO 8601 date and time): formatted once per second, replaced in one assignment.
        self._second: tuple[int, str] = (-1, "")
        #: Decisions logged and sampled out, for stats().
        self.logged = 0
        self.sampled_out = 0

    def __call__(self, decision: Decision) -> None:
        if decision.allowed and not decision.failed_open and not decision.shadowed:
            if self._rate < 1.0 and not self._random() < self._rate:
                self.sampled_out += 1
                return
            level = logging.INFO
        else:
            level = logging.WARNING
        if self.sink.enabled(level):
            self.logged += 1
            self.sink.emit(level, self.event(decision))

    def _timestamp(self, epoch: float) -> str:
        """ISO 8601 UTC with microseconds, as ``datetime.isoformat`` writes it (a property test says so)."""
        second = math.floor(epoch)
        micro = round((epoch - second) * 1_000_000)
        if micro == 1_000_000:
            second, micro = second + 1, 0
        cached, text = self._second
        if second != cached:
            text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = (second, text)
        return f"{text}.{micro:06d}+00:00"

    def event(self, decision: Decision) -> dict[str, Any]:
        """The fields of ``decision``'s audit event (never the token).

        Subject and client come from the authenticated principal, so a user rejected by a
        later stage (banned, rate limited) is named.
        """
        at = decision.principal
        out: dict[str, Any] = {
            "event": EVENT,
            "timestamp": self._timestamp(decision.started_at),
            "outcome": decision_outcome(decision),
            "status": decision.status,
            "subject": at.subject if at is not None else None,
            "client_id": at.client_id if at is not None else None,
            "scopes": list(at.scopes) if at is not None else None,
            "stage": decision.stage,
            "reason": decision.reason,
            "token_fingerprint": decision.fingerprint or None,
            "duration_ms": _ms(decision.duration),
        }
        if not decision.allowed:
            out["error"] = decision.error
            if decision.retry_after is not None:
                out["retry_after"] = decision.retry_after
        if decision.failed_open:
            out["failed_open"] = list(decision.failed_open)
        if decision.shadowed:
            out["shadowed"] = [{"stage": stage, "reason": reason} for stage, reason in decision.shadowed]
        req = decision.request
        if req is not None:
            out["method"] = req.method
            out["path"] = req.path
            out["client_ip"] = req.client_ip
            if req.mcp_method is not None:
                out["mcp_method"] = req.mcp_method
            if req.tool_name is not None:
                out["tool"] = req.tool_name
        if self._claims and at is not None and at.claims:
            claims: Mapping[str, Any] = at.claims
            out["claims"] = {k: claims[k] for k in self._claims if k in claims}
        if self._trace:
            out["trace"] = [
                {
                    "stage": t.stage,
                    "outcome": t.outcome,
                    "ms": _ms(t.duration),
                    "cache_hit": t.cache_hit,
                    "reason": t.reason,
                    "error": t.error,
                }
                for t in decision.trace
            ]
        return out

    def flush(self) -> None:
        """Write what a stdout/stderr/file sink still buffers (``aclose`` does it too)."""
        self.sink.flush()

    async def aclose(self) -> None:
        self.sink.close()
        self.closed = True

    def stats(self) -> dict[str, float]:
        out = {"logged": float(self.logged), "sampled_out": float(self.sampled_out)}
        if isinstance(self.sink, StreamSink):
            out.update({f"sink_{k}": v for k, v in self.sink.stats().items()})
        return out
