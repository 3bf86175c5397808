"""Where audit lines go: the stdlib ``logging`` module, or a stream written in batches.

The ``audit`` observer renders one line per decision; a sink delivers it. ``LoggingSink`` hands
each line to a stdlib logger as one ``LogRecord`` (the application's handlers decide the rest).
``StreamSink`` appends encoded lines to standard output, standard error or a file, buffered in
one ``bytearray`` and written at most ``flush_interval`` seconds later in one ``write`` call,
the way a container's log collector wants JSON lines; it costs a buffer append per event
instead of a ``LogRecord`` and a handler call.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import sys
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, Literal, Protocol, TextIO

logger = logging.getLogger("fastapps_auth.audit.sink")


def _running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running in this thread, or ``None``."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


StreamTarget = Literal["stdout", "stderr", "file"]


class AuditSink(Protocol):
    """What the observer flushes and closes.

    Each sink has its own ``write`` (a text line for ``LoggingSink``, an encoded one for
    ``StreamSink``), called on the hot path; it must not raise.
    """

    def flush(self) -> None: ...

    def close(self) -> None: ...


class RecordFactory:
    """``LogRecord``s for one logger, cloned from a template per (level, thread).

    ``Logger.makeRecord`` recomputes per call what never changes between audit events
    (process, thread and file names, the level's name): about 40% of the cost of an
    event. Here that is done once; only the message and the times are set per record.
    """

    __slots__ = ("_logger", "_templates")

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._templates: dict[tuple[int, int], dict[str, Any]] = {}

    def make(self, level: int, message: str) -> logging.LogRecord:
        key = (level, threading.get_ident())
        template = self._templates.get(key)
        if template is None:
            if len(self._templates) >= 64:  # bounded: threads come and go
                self._templates.clear()
            record = self._logger.makeRecord(self._logger.name, level, __file__, 0, "", (), None, "__call__")
            template = self._templates[key] = dict(record.__dict__)
        record = _new_record(logging.LogRecord)
        fields = record.__dict__
        fields.update(template)
        fields["msg"] = message
        created = time.time()
        fields["created"] = created
        fields["msecs"] = (created - int(created)) * 1000
        fields["relativeCreated"] = template["relativeCreated"] + (created - template["created"]) * 1000
        return record


_new_record = logging.LogRecord.__new__


class LoggingSink:
    """One ``LogRecord`` per line on a stdlib logger; nothing is built when the level is disabled."""

    __slots__ = ("_logger", "_records")

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._records = RecordFactory(logger)

    def enabled(self, level: int) -> bool:
        return self._logger.isEnabledFor(level)

    def write(self, level: int, line: str) -> None:
        self._logger.handle(self._records.make(level, line))

    def flush(self) -> None:
        """Nothing is buffered here (the handlers flush themselves)."""

    def close(self) -> None:
        """The logger belongs to the application; nothing to close."""


class StreamSink:
    """JSON (or logfmt) lines to stdout, stderr or a file, buffered and written in batches.

    ``write`` takes one line already encoded as UTF-8 and ending in a newline (orjson renders
    straight to that form), so a batch is written without a join or a text encoder.

    A line is written at most ``flush_interval`` seconds after it was logged (a timer on the
    running event loop), as soon as ``max_buffer`` lines are waiting, on ``flush()`` and
    ``close()``, and at interpreter exit. Without a running event loop, or with
    ``flush_interval = 0``, every line is written at once. A write that fails (a full disk,
    a closed pipe) drops that batch, counts the lines in ``dropped`` and logs a warning at
    most once a minute; it never reaches the decision.
    """

    def __init__(
        self,
        target: StreamTarget,
        *,
        path: str | None = None,
        flush_interval: float = 0.5,
        max_buffer: int = 1000,
    ) -> None:
        if target == "file" and not path:
            raise ValueError("a file sink needs a path")
        self._target = target
        self._path = Path(path) if path else None
        self._interval = flush_interval
        self._max = max_buffer
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
        loop = _running_loop()
        if loop is None:  # no event loop in this thread: nobody would flush later
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
