"""Injectable time. Every stage that compares against "now" takes a ``Clock``."""

from __future__ import annotations

import time as _time
from typing import Protocol, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    """Wall time (epoch seconds, for token claims) and monotonic time (for intervals)."""

    def time(self) -> float: ...

    def monotonic(self) -> float: ...


class SystemClock:
    """The real clock."""

    __slots__ = ()

    time = staticmethod(_time.time)
    monotonic = staticmethod(_time.monotonic)


class ManualClock:
    """A clock that moves only when told to: tests reach an expiry without sleeping."""

    __slots__ = ("_mono", "_wall")

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._wall = float(start)
        self._mono = 1000.0

    def time(self) -> float:
        return self._wall

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        """Move both clocks forward by ``seconds`` (never backward)."""
        if seconds < 0:
            raise ValueError("a clock does not go backward")
        self._wall += seconds
        self._mono += seconds

    def set(self, epoch: float) -> None:
        """Set the wall clock to ``epoch``; the monotonic clock moves by the same amount."""
        self._mono += max(0.0, epoch - self._wall)
        self._wall = float(epoch)


class FixedClock(ManualClock):
    """Wall time pinned at ``epoch`` (the CLI's ``--now``), monotonic time real."""

    __slots__ = ()

    def monotonic(self) -> float:
        return _time.monotonic()


SYSTEM_CLOCK = SystemClock()
