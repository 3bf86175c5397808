"""One timer for many short operations that share a timeout: the cheap way to bound every lookup.

A store gives each operation the same timeout, so deadlines come in the order the operations
start: a FIFO of entries and a single event-loop timer, armed for the oldest one still running,
replace a timer per operation (each ``call_at`` and its cancellation cost about as much as the
rest of a lookup's own Python work). An operation that outlives its deadline has its ``action``
called (close its connection, fail its future); the operation then sees ``expired``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable

logger = logging.getLogger("fastapps_auth.deadlines")


class Deadline:
    """When an operation must be over, and what to do if it is not."""

    __slots__ = ("action", "at", "expired")

    def __init__(self, at: float, action: Callable[[], object]) -> None:
        self.at = at
        self.action: Callable[[], object] | None = action
        self.expired = False


class Deadlines:
    """Deadlines ``timeout`` seconds after each ``start``, on the running loop's clock."""

    __slots__ = ("_entries", "_loop", "_timer", "_timer_at", "timeout")

    def __init__(self, timeout: float) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.timeout = timeout
        self._entries: deque[Deadline] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    def __len__(self) -> int:
        """Entries kept: running operations, and finished ones not yet dropped from behind a running one."""
        return len(self._entries)

    def start(self, action: Callable[[], object]) -> Deadline:
        """A deadline ``timeout`` from now; ``action()`` runs if it passes before ``finish``."""
        loop = asyncio.get_running_loop()
        deadline = Deadline(loop.time() + self.timeout, action)
        self._entries.append(deadline)
        if self._timer is None or loop is not self._loop:
            self._arm(loop, deadline.at)
        return deadline

    def finish(self, deadline: Deadline) -> None:
        """The operation is over: its action will not run."""
        deadline.action = None
        entries = self._entries
        while entries and entries[0].action is None:
            entries.popleft()

    def expire(self, now: float) -> int:
        """Run the action of every deadline at or before ``now`` (the timer calls this); how many ran."""
        entries = self._entries
        ran = 0
        while entries:
            deadline = entries[0]
            if deadline.action is not None and deadline.at > now:
                break
            entries.popleft()
            action, deadline.action = deadline.action, None
            if action is not None:
                deadline.expired = True
                ran += 1
                try:
                    action()
                except Exception:  # one failing action must not leave the others unbounded
                    logger.exception("a deadline action failed")
        return ran

    def _arm(self, loop: asyncio.AbstractEventLoop, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._loop = loop
        self._timer_at = at
        self._timer = loop.call_at(at, self._fire)

    def _fire(self) -> None:
        loop, self._timer = self._loop, None
        self.expire(self._timer_at)  # the loop ran this timer, so its time has come
        if self._entries and loop is not None and not loop.is_closed():
            self._arm(loop, self._entries[0].at)
