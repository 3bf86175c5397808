"""The documented guarantee of the GCRA rate limiter, against a reference sliding log of admissions.

For each rule (interval ``T = ceil(window / limit)`` microseconds, burst ``B``),
any ``n`` admissions within ``d`` microseconds satisfy ``n <= B + d / T``; so a
sliding window of ``window`` seconds never holds more than ``limit + B - 1``.
And GCRA is the tightest limiter with that bound: it refuses a request only
when admitting it would break the bound for some interval ending now. Time is
an injected clock that the state machine moves; nothing sleeps.
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from fastapps_auth.backends.ratelimit.algorithm import US, Outcome, Rule, check
from fastapps_auth.backends.ratelimit.memory import MemoryRateLimitBackend
from fastapps_auth.clock import ManualClock

rule_params = st.tuples(
    st.integers(min_value=1, max_value=12),  # limit
    st.sampled_from([0.001, 0.5, 1.0, 3.0, 10.0, 3600.0]),  # window, seconds
    st.integers(min_value=1, max_value=12),  # burst (clamped to limit)
)


def would_break(rule: Rule, log: list[int], now: int) -> bool:
    """True if one more admission at ``now`` breaks ``n <= B + d/T`` for an interval ending now."""
    n = len(log)
    for i, t in enumerate(log):
        count = n - i + 1  # admissions from log[i] through the new one
        if (count - rule.burst) * rule.interval > now - t:
            return True
    return False


class GCRAAgainstSlidingLog(RuleBasedStateMachine):
    """Random request bursts and clock moves; the memory backend must match the log-derived verdict."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = ManualClock(1_800_000_000.0)
        self.store = MemoryRateLimitBackend(max_keys=100, clock=self.clock)
        self.log: list[int] = []  # admission times (microseconds), the sliding log
        self.rate_rules: tuple[Rule, ...] = ()  # not ``rules``: RuleBasedStateMachine owns that attribute
        self.shadow: list[int] = []
        self.last: Outcome | None = None

    @initialize(params=st.lists(rule_params, min_size=1, max_size=2))
    def setup(self, params: list[tuple[int, float, int]]) -> None:
        self.rate_rules = tuple(Rule.make(limit, window, min(burst, limit)) for limit, window, burst in params)
        self.shadow = [0] * len(self.rate_rules)

    @rule(
        seconds=st.one_of(
            st.integers(min_value=0, max_value=5_000).map(lambda us: us / US),
            st.floats(min_value=0, max_value=5.0, allow_nan=False),
            st.sampled_from([0.999999, 1.0, 1.000001, 600.0, 3600.0]),
        )
    )
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.last = None

    @rule(count=st.integers(min_value=1, max_value=15))
    def requests(self, count: int) -> None:
        for _ in range(count):
            now = self.store.now()
            expected = not any(would_break(r, self.log, now) for r in self.rate_rules)
            out = self.store.hit_now("user", self.rate_rules)
            reference = check(self.rate_rules, self.shadow, now)
            assert out == reference  # the inlined fast path is the reference algorithm
            assert out.allowed == expected, (out, now, self.log)
            if out.allowed:
                self.log.append(now)
            self.last = out

    @precondition(lambda self: self.last is not None and not self.last.allowed)
    @rule(early=st.booleans())
    def retry_after_is_exact(self, early: bool) -> None:
        """Coming back ``retry_after`` later is admitted; one microsecond earlier is not."""
        assert self.last is not None
        self.clock.advance((self.last.wait - (1 if early else 0)) / US)
        self.requests(1)
        assert self.last.allowed is not early

    @invariant()
    def sliding_window_bound(self) -> None:
        for r in self.rate_rules:
            window_us = round(r.window * US)
            cap = r.limit + r.burst - 1
            start = 0
            for j, t in enumerate(self.log):  # count admissions in (t - window, t]
                while self.log[start] <= t - window_us:
                    start += 1
                assert j - start + 1 <= cap
            for i in range(len(self.log)):  # and the general n <= B + d/T
                for j in range(i, len(self.log)):
                    assert (j - i + 1 - r.burst) * r.interval <= self.log[j] - self.log[i]


GCRAAgainstSlidingLog.TestCase.settings = settings(max_examples=150, stateful_step_count=30, deadline=None)
TestGCRAAgainstSlidingLog = GCRAAgainstSlidingLog.TestCase


def test_default_burst_allows_at_most_twice_the_limit_minus_one_per_window() -> None:
    """The documented worst case is reachable: a full burst, then a steady stream at the full rate."""
    clock = ManualClock()
    store = MemoryRateLimitBackend(clock=clock)
    rules = (Rule.make(10, 10.0),)
    start = store.now()
    admitted = [store.now() for _ in range(30) if store.hit_now("u", rules).allowed]
    assert len(admitted) == 10
    while store.now() - start < 10 * US - 1:
        clock.advance(min(1.0, (10 * US - 1 - (store.now() - start)) / US))
        if store.hit_now("u", rules).allowed:
            admitted.append(store.now())
    in_window = [t for t in admitted if t - start < 10 * US]
    assert len(in_window) == 19
