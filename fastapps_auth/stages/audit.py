"""The ``audit`` observer: one structured log event per decision (orjson or structlog renderers).

Every decision is logged exactly once (allowed ones may be sampled; rejections and
fail-opens never are) with its trace and a token fingerprint, never the token.
The renderer and the sink (stdlib logging, or buffered stdout/stderr/file lines, see
``fastapps_auth.backends.audit_sink``) are built once in ``__init__``; a sampled-out
decision costs a decrement.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Callable, Mapping, MutableMapping
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

import structlog
from pydantic import Field, ValidationInfo, field_validator

from fastapps_auth.backends.audit_sink import AuditSink, LoggingSink, StreamSink
from fastapps_auth.clock import Clock
from fastapps_auth.component import ComponentOptions
from fastapps_auth.decision import Decision
from fastapps_auth.observer import Observer

Renderer = Literal["json", "logfmt", "console", "structlog"]
EventDict = MutableMapping[str, Any]
Processor = Callable[[Any, str, EventDict], Any]

#: The event name of every audit record.
EVENT = "auth.decision"


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
        description="Fraction of allowed decisions logged (rejections and fail-opens are always logged).",
    )
    include_trace: bool = Field(default=True, description="Include the per-stage trace in each event.")
    sink: Literal["logging", "stdout", "stderr", "file"] = Field(
        default="logging",
        description=(
            "logging: one record per event on the stdlib logger `logger` (your handlers decide where it goes); "
            "stdout, stderr or file: the lines written directly, in batches (see flush_interval), "
            "at a fraction of the cost of a log record."
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


def _json_default(value: object) -> str:
    return str(value)


JsonEncoders = tuple[Callable[[Any], str], Callable[[Any], bytes]]

_stdlib_encode = json.JSONEncoder(default=_json_default, separators=(",", ":")).encode


def _ascii_json(event: EventDict) -> str:
    """The stdlib's rendering, every non-ASCII character escaped; it never loses the event.

    It takes what orjson refuses: a lone surrogate (a JSON-RPC body can carry ``"\\ud800"`` in a
    tool name before any token is checked: refusing it would let a client keep its requests out
    of the audit log), an integer beyond 64 bits, nesting deeper than 254 levels. Claims nested
    too deep even for the stdlib are replaced by a marker.
    """
    try:
        return _stdlib_encode(event)
    except (ValueError, RecursionError):
        return _stdlib_encode({**event, "claims": "<not renderable>"})


def _ascii_line(event: EventDict) -> bytes:
    """``_ascii_json`` as a stream sink's line."""
    return (_ascii_json(event) + "\n").encode()


def _stdlib_encoders() -> JsonEncoders:
    return _ascii_json, _ascii_line


def _orjson_encoders() -> JsonEncoders | None:
    try:
        import orjson
    except ImportError:  # pragma: no cover - orjson is a dependency; the stdlib is the fallback
        return None
    dumps, text_option = orjson.dumps, orjson.OPT_NON_STR_KEYS
    line_option = text_option | orjson.OPT_APPEND_NEWLINE

    def text(event: EventDict) -> str:
        try:
            return dumps(event, default=_json_default, option=text_option).decode()
        except TypeError:  # orjson.JSONEncodeError: see _ascii_json
            return _ascii_json(event)

    def line(event: EventDict) -> bytes:
        try:
            return dumps(event, default=_json_default, option=line_option)
        except TypeError:
            return _ascii_line(event)

    return text, line


#: An event as JSON text (a ``LogRecord``'s message), and as one UTF-8 line with its newline (what
#: a stream sink buffers as it is). orjson renders an event ~7x faster than the stdlib encoder.
_json_text, _json_line = _orjson_encoders() or _stdlib_encoders()


def _ms(seconds: float) -> float:
    """Milliseconds rounded to the microsecond (half up; durations are never negative).

    ``round(x, 3)`` costs five times as much: it goes through a decimal string.
    """
    return int(seconds * 1_000_000 + 0.5) / 1000


class AuditObserver(Observer[AuditOptions]):
    """Logs every decision as one structured event (see ``docs/observers.md`` for the fields)."""

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
        self._sampling = opts.sample_allowed < 1.0
        # Sampling draws the number of allowed decisions to skip before the next logged one
        # (geometric: the same distribution as one coin flip per decision), so a skipped
        # decision costs a decrement, not a random draw.
        self._log_1_minus_p = math.log1p(-opts.sample_allowed) if 0.0 < opts.sample_allowed < 1.0 else 0.0
        self._never = opts.sample_allowed == 0.0
        self._random: Callable[[], float] = (rng or random.Random()).random
        self._skip = self._draw_skip() if self._sampling else 0
        self._trace = opts.include_trace
        self._structlog: Any = None
        #: The event as text (a ``LogRecord``'s message), and as one encoded line (a stream sink's).
        self._text: Callable[[EventDict], str]
        self._encoded: Callable[[EventDict], bytes]
        if opts.renderer == "structlog":
            self._structlog = structlog.get_logger(opts.logger)
        elif opts.renderer == "json":
            self._text, self._encoded = _json_text, _json_line  # structlog's JSONRenderer would wrap the same call
        else:
            render: Processor = (
                structlog.processors.KeyValueRenderer(key_order=["event", "timestamp", "outcome"], drop_missing=True)
                if opts.renderer == "logfmt"
                else structlog.dev.ConsoleRenderer(colors=False)
            )
            self._text = lambda event: render(None, "info", event)
            self._encoded = lambda event: (render(None, "info", event) + "\n").encode()
        self._logging: LoggingSink | None = None
        self._stream: StreamSink | None = None
        self._sink: AuditSink
        if opts.sink == "logging":
            self._sink = self._logging = LoggingSink(logging.getLogger(opts.logger))
        else:
            self._sink = self._stream = StreamSink(
                opts.sink, path=opts.path, flush_interval=opts.flush_interval, max_buffer=opts.max_buffer
            )
        self._stamp_second = -1
        self._stamp_prefix = ""
        #: Decisions logged and sampled out, for stats().
        self.logged = 0
        self.sampled_out = 0

    def __call__(self, decision: Decision) -> None:
        if decision.allowed and not decision.failed_open:
            if self._sampling:
                if self._skip > 0:
                    self._skip -= 1
                    self.sampled_out += 1
                    return
                self._skip = self._draw_skip()
            level = logging.INFO
        else:
            level = logging.WARNING
        if self._structlog is not None:
            event = self.event(decision)
            self.logged += 1
            del event["event"]
            if level == logging.INFO:
                self._structlog.info(EVENT, **event)
            else:
                self._structlog.warning(EVENT, **event)
            return
        if self._stream is not None:
            self.logged += 1
            self._stream.write(self._encoded(self.event(decision)))
            return
        assert self._logging is not None
        if not self._logging.enabled(level):
            return
        self.logged += 1
        self._logging.write(level, self._text(self.event(decision)))

    def _draw_skip(self) -> int:
        """How many allowed decisions to drop before logging one: Geometric(p) failures before a success."""
        if self._never:
            return 1 << 62
        return int(math.log(1.0 - self._random()) / self._log_1_minus_p)  # 1 - random() is in (0, 1]

    def _timestamp(self, epoch: float) -> str:
        """ISO 8601 UTC with microseconds; the date-and-second part is formatted once per second."""
        second = int(epoch)
        if second > epoch:  # floor, for the (theoretical) negative epoch
            second -= 1
        micro = round((epoch - second) * 1_000_000)  # rounded like datetime.isoformat
        if micro >= 1_000_000:
            second, micro = second + 1, micro - 1_000_000
        if second != self._stamp_second:
            self._stamp_second = second
            self._stamp_prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return f"{self._stamp_prefix}.{micro:06d}+00:00"

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
        """Write the lines a stdout/stderr/file sink still buffers (``aclose`` does it too)."""
        self._sink.flush()

    async def aclose(self) -> None:
        self._sink.close()

    def stats(self) -> dict[str, float]:
        out = {"logged": float(self.logged), "sampled_out": float(self.sampled_out)}
        if isinstance(self._sink, StreamSink):
            out.update({f"sink_{k}": v for k, v in self._sink.stats().items()})
        return out
