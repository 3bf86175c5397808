"""An outage of a shared backend, told once: one warning when it starts, one line when it is over.

A backend that fails for every request must not become a log line per request (a flood that
hides everything else), nor be silent. ``Outage`` logs the first failure with its consequence,
counts the rest, and logs the end once the backend has answered for ``quiet`` seconds without a
failure (so a backend failing for some keys only, such as one dead node of a cluster, is one outage,
not a warning per flip). Times come from the injected clock.
"""

from __future__ import annotations

import logging

from fastapps_auth.backends.redis_client import one_line
from fastapps_auth.clock import Clock

logger = logging.getLogger("fastapps_auth")


class Outage:
    """The state of one backend's availability, as a stage sees it through its checks."""

    __slots__ = (
        "active",
        "clock",
        "failures",
        "last_failure",
        "outages",
        "quiet",
        "since",
        "subject",
        "total_failures",
    )

    def __init__(self, subject: str, *, clock: Clock, quiet: float = 10.0) -> None:
        self.subject = subject
        self.clock = clock
        self.quiet = quiet
        self.active = False
        self.outages = 0
        self.failures = 0  # in the current outage
        self.total_failures = 0
        self.since = 0.0
        self.last_failure = 0.0

    def failure(self, exc: BaseException, consequence: str) -> None:
        """Count a failed check; the first of an outage is logged, with what the stage does meanwhile."""
        now = self.clock.monotonic()
        self.total_failures += 1
        self.failures += 1
        self.last_failure = now
        if self.active:
            return
        self.active = True
        self.outages += 1
        self.failures = 1
        self.since = now
        logger.warning(
            "%s is unavailable (%s); %s until it answers again (one warning per outage; stats() counts the checks)",
            self.subject,
            one_line(exc),
            consequence,
        )

    def success(self) -> bool:
        """Note a check that worked; True when it ends an outage (quiet for ``quiet`` seconds)."""
        if not self.active:
            return False
        now = self.clock.monotonic()
        if now - self.last_failure < self.quiet:
            return False
        self.active = False
        logger.info(
            "%s answers again: its outage lasted %.1f s, %d checks failed",
            self.subject,
            self.last_failure - self.since,
            self.failures,
        )
        return True
