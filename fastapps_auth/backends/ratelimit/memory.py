"""In-process rate-limit state: one int per key (one rule), bounded by ``max_keys``.

Keys live in two generations of plain dicts (no per-key linked list, which
would double the memory of a key). A key seen in the older generation moves to
the younger one; when the younger one holds ``max_keys // 2`` keys it becomes
the older one and the previous older generation is dropped whole. So a key is
forgotten only after ``max_keys // 2`` other distinct keys arrived while it
stayed idle; most such keys have expired state anyway (a GCRA key whose TAT has
passed is the same as a key never seen). No thread scans the keys: every
operation is O(1), and the drop is one dict release.
"""

from __future__ import annotations

from fastapps_auth.backends.ratelimit.algorithm import US, Outcome, Rule, check
from fastapps_auth.clock import SYSTEM_CLOCK, Clock


class MemoryRateLimitBackend:
    """GCRA state in this process. Time is the injected clock's monotonic time."""

    __slots__ = ("_half", "_old", "_young", "clock", "dropped", "max_keys", "rotations")

    def __init__(self, *, max_keys: int = 100_000, clock: Clock = SYSTEM_CLOCK) -> None:
        if max_keys < 2:
            raise ValueError("max_keys must be at least 2")
        self.max_keys = max_keys
        self.clock = clock
        self._half = max_keys // 2
        # One rule: the TAT itself (an int is the smallest state there is); several: a list of TATs.
        self._young: dict[str, int | list[int]] = {}
        self._old: dict[str, int | list[int]] = {}
        self.rotations = 0
        self.dropped = 0

    def now(self) -> int:
        """The clock's monotonic time in microseconds."""
        return round(self.clock.monotonic() * US)

    def hit_now(self, key: str, rules: tuple[Rule, ...]) -> Outcome:
        """The synchronous check (the async ``hit`` wraps it): O(1), no I/O."""
        state = self._young.get(key)
        if state is None and self._old:
            state = self._old.pop(key, None)
            if state is not None:
                self._adopt(key, state)
        if type(state) is int:
            tats = [state]
        elif type(state) is list and len(state) == len(rules):
            tats = state
        else:
            tats = [0] * len(rules)
        out = check(rules, tats, self.now())
        if out.allowed:
            if state is None:
                self._adopt(key, tats[0] if len(tats) == 1 else tats)
            elif len(tats) == 1:
                self._young[key] = tats[0]
            else:
                self._young[key] = tats
        return out

    async def hit(self, key: str, rules: tuple[Rule, ...]) -> Outcome:
        return self.hit_now(key, rules)

    def _adopt(self, key: str, state: int | list[int]) -> None:
        """Insert a key into the young generation, rotating generations when it is full."""
        if len(self._young) >= self._half:
            self.dropped += len(self._old)
            self._old = self._young
            self._young = {}
            self.rotations += 1
        self._young[key] = state

    def __len__(self) -> int:
        return len(self._young) + len(self._old)

    def peek(self, key: str) -> int | list[int] | None:
        """The stored TAT(s) of ``key`` (microseconds), without touching its age. For tests and tools."""
        state = self._young.get(key)
        return state if state is not None else self._old.get(key)

    def clear(self) -> None:
        """Forget every key (the stage's local fallback does this when the shared backend is back)."""
        self._young = {}
        self._old = {}

    async def aclose(self) -> None:
        self.clear()

    def stats(self) -> dict[str, float]:
        return {"keys": float(len(self)), "rotations": float(self.rotations), "dropped_keys": float(self.dropped)}
