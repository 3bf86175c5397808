"""Where audit events go: one ``Sink`` protocol, three sinks (stdlib logging, structlog, a buffered stream).

``emit(level, event)`` takes the event's fields (a fresh dict per event, the sink's to consume)
and the stdlib level (``INFO`` for an allowed decision, ``WARNING`` for the rest). A sink never
raises into the decision: the logging and structlog sinks leave errors to their handlers
(``logging`` reports a failing handler itself); the stream sink counts the lines it could not write.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import sys
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, Literal, Protocol, TextIO

import structlog

from fastapps_auth.observers.render import EventDict, json_line

logger = logging.getLogger("fastapps_auth.audit.sink")

#: The event name of every audit record.
EVENT = "auth.decision"

StreamTarget = Literal["stdout", "stderr", "file"]


class Sink(Protocol):
    """What the ``audit`` observer writes to."""

    def enabled(self, level: int) -> bool:
        """False when an event at ``level`` would be thrown away (the observer then builds none)."""
        ...

    def emit(self, level: int, event: EventDict) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class LoggingSink:
    """One record per event on ``logger``, its message the rendered event.

    Each record is made by the logger's own ``makeRecord``, so every field it computes per record is this
    record's own: the time, the thread, ``taskName`` (Python 3.12+), and whatever a
    ``logging.setLogRecordFactory`` hook adds (OpenTelemetry's trace and span ids).
    """

    def __init__(self, logger: logging.Logger, render: Callable[[EventDict], str]) -> None:
        self.logger = logger
        self._render = render

    def enabled(self, level: int) -> bool:
        return self.logger.isEnabledFor(level)

    def emit(self, level: int, event: EventDict) -> None:
        # makeRecord + handle is logger.log minus findCaller's stack walk: the caller is always this line.
        logger = self.logger
        logger.handle(logger.makeRecord(logger.name, level, __file__, 0, self._render(event), (), None))

    def flush(self) -> None:
        """Nothing is buffered here (handlers flush themselves)."""

    def close(self) -> None:
        """The logger belongs to the application; nothing to close."""


class StructlogSink:
    """The event handed to ``structlog.get_logger(name)`` as keyword arguments; the application's
    structlog configuration (processors, renderer, output, level filtering) does the rest."""

    def __init__(self, name: str) -> None:
        self.logger: Any = structlog.get_logger(name)

    def enabled(self, level: int) -> bool:
        return True  # structlog filters in its own bound logger or processors

    def emit(self, level: int, event: EventDict) -> None:
        event.pop("event", None)
        log = self.logger.info if level < logging.WARNING else self.logger.warning
        log(EVENT, **event)

    def flush(self) -> None:
        """structlog's loggers write as they go."""

    def close(self) -> None:
        """The logger belongs to the application; nothing to close."""


class StreamSink:
    """Encoded lines to stdout, stderr or a file, buffered and written in batches.

    A line is written at most ``flush_interval`` seconds after it was logged (a timer on the
    running event loop), as soon as ``max_buffer`` lines are waiting, on ``flush()`` and
    ``close()``, and at interpreter exit. Without a running event loop, or with
    ``flush_interval = 0``, every line is written at once. A write that fails (a full disk, a
    closed pipe) drops that batch, counts the lines in ``dropped`` and logs a warning at most
    once a minute; it never reaches the decision.
    """

    def __init__(
        self,
        target: StreamTarget,
        *,
        path: str | None = None,
        flush_interval: float = 0.5,
        max_buffer: int = 1000,
        encode: Callable[[EventDict], bytes] = json_line,
    ) -> None:
        if target == "file" and not path:
            raise ValueError("a file sink needs a path")
        self._target = target
        self._path = Path(path) if path else None
        self._interval = flush_interval
        self._max = max_buffer
        self._encode = encode
        self._buffer = bytearray()
        self._lines = 0  # in the buffer
        self._file: BinaryIO | None = None  # opened on the first write: no I/O in constructors
        self._timer: asyncio.TimerHandle | None = None
        self._timer_loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._warned_at = -1e9
        #: Lines written and lines lost to failed writes, for stats().
        self.written = 0
        self.dropped = 0
        ref = weakref.ref(self)
        self._at_exit: Callable[[], None] = lambda: _flush_ref(ref)
        atexit.register(self._at_exit)

    def enabled(self, level: int) -> bool:
        return True

    def emit(self, level: int, event: EventDict) -> None:
        self.write(self._encode(event))

    def write(self, line: bytes) -> None:
        """Buffer one newline-terminated UTF-8 line."""
        self._buffer += line
        self._lines += 1
        if self._lines >= self._max or self._interval <= 0:
            self.flush()
        elif self._lines == 1 or (self._timer_loop is not None and self._timer_loop.is_closed()):
            # The batch's first line, or its timer is on a loop that has closed (asyncio.run returned).
            self._schedule()

    def _schedule(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop in this thread: nobody would flush later
            self.flush()
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_loop = loop
        self._timer = loop.call_later(self._interval, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = self._timer_loop = None
        data, lines = self._buffer, self._lines
        if not lines:
            return
        self._buffer, self._lines = bytearray(), 0
        try:
            self._write(data)
        except Exception as exc:  # an audit write never reaches the decision
            self.dropped += lines
            now = time.monotonic()
            if now - self._warned_at >= 60:
                self._warned_at = now
                logger.warning("audit sink %s: %d line(s) lost (%s)", self.describe(), lines, type(exc).__name__)
            return
        self.written += lines

    def _write(self, data: bytearray) -> None:
        if self._target == "file":
            if self._file is None:
                if self._closed:
                    raise ValueError("the audit sink is closed")
                assert self._path is not None
                self._file = self._path.open("ab")
            self._file.write(data)
            self._file.flush()
            return
        # Looked up per write: the application (or pytest) may replace sys.stdout.
        text: TextIO = sys.stdout if self._target == "stdout" else sys.stderr
        binary = getattr(text, "buffer", None)
        if binary is None:  # a text-only stream (io.StringIO, a capture)
            text.write(data.decode("utf-8"))
            text.flush()
            return
        text.flush()  # what was printed before goes first
        binary.write(data)
        binary.flush()

    def describe(self) -> str:
        return str(self._path) if self._target == "file" else self._target

    def close(self) -> None:
        self.flush()
        self._closed = True
        atexit.unregister(self._at_exit)
        if self._file is not None:
            self._file.close()
            self._file = None

    def stats(self) -> dict[str, float]:
        return {"written": float(self.written), "dropped": float(self.dropped), "buffered": float(self._lines)}


def _flush_ref(ref: weakref.ReferenceType[StreamSink]) -> None:
    sink = ref()
    if sink is not None:
        sink.flush()
