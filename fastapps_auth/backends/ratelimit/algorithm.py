"""GCRA (the generic cell rate algorithm): O(1) time and one integer of state per key and rule.

The algorithm is separate from where its state lives (the ``limits`` library's
strategies/storage split): this module holds the rule arithmetic (``check``) and
its Lua twin (``LUA_GCRA``); ``memory`` and ``redis`` beside it hold the state.

A rule admits ``limit`` requests per ``window`` seconds with bursts of up to
``burst`` (default ``limit``). Its state is the theoretical arrival time (TAT)
in integer microseconds. A request at ``now`` is admitted iff
``TAT - now <= tau`` where ``tau = (burst - 1) * T`` and ``T = ceil(window / limit)``;
admission sets ``TAT = max(TAT, now) + T``. Integer microseconds keep the
arithmetic exact in Python and in Redis' Lua (doubles are exact below 2**53).

**The guarantee** (proved by ``tests/test_rate_limit_property.py`` against a
sliding log): any ``n`` requests admitted within an interval of length ``d``
satisfy ``n <= burst + d / T``, so ``n <= burst + floor(d * limit / window)``.
Any sliding window of length ``window`` therefore holds at most
``limit + burst - 1`` admissions (``2 * limit - 1`` with the default burst),
reached only by a full burst followed by a steady stream at the full rate;
over long periods the rate is at most ``limit / window``. Conversely, a key
that had no admission for ``burst * T`` seconds gets a full burst at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

US = 1_000_000
"""Microseconds per second: the unit of every time in the algorithm."""


@dataclass(frozen=True, slots=True)
class Rule:
    """One compiled rule: ``limit`` per ``window`` seconds, bursts of ``burst``; times in microseconds."""

    limit: int
    window: float
    burst: int
    interval: int  # T: microseconds between admissions at the sustained rate
    tolerance: int  # tau = (burst - 1) * T
    #: A short stable name of the rule's parameters (part of storage keys).
    ident: str = ""

    @classmethod
    def make(cls, limit: int, window: float, burst: int | None = None) -> Rule:
        """Compile a rule; ``ValueError`` for a non-positive limit/window or a burst outside 1..limit."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        if not window > 0:
            raise ValueError("window must be positive")
        b = limit if burst is None else burst
        if not 1 <= b <= limit:
            raise ValueError(f"burst must be between 1 and limit ({limit})")
        window_us = round(window * US)
        interval = max(1, -(-window_us // limit))  # ceil: never faster than limit/window
        tolerance = (b - 1) * interval
        return cls(limit, window, b, interval, tolerance, f"{interval}.{tolerance}")

    def scaled(self, share: float) -> Rule:
        """This rule with ``limit`` and ``burst`` times ``share`` (at least 1): one process's part of a fleet's rule."""
        if share >= 1:
            return self
        limit = max(1, int(self.limit * share))
        return Rule.make(limit, self.window, min(limit, max(1, int(self.burst * share))))

    @property
    def policy(self) -> str:
        """The rule as an IETF RateLimit-Policy item, e.g. ``100;w=3600``."""
        w = int(self.window) if float(self.window).is_integer() else self.window
        burst = f";burst={self.burst}" if self.burst != self.limit else ""
        return f"{self.limit};w={w}{burst}"


class Outcome(NamedTuple):
    """A check's result. ``rule`` indexes the binding rule: the one that refused, else the tightest.

    On admission ``wait`` is the microseconds until that rule is back to a full
    burst (the RateLimit reset); on refusal it is the exact microseconds until a
    request would be admitted (Retry-After), and ``remaining`` is 0.
    """

    allowed: bool
    rule: int
    remaining: int
    wait: int


def remaining_after(rule: Rule, new_tat: int, now: int) -> int:
    """How many more requests the rule would admit at ``now`` once its TAT is ``new_tat``."""
    return max(0, (now + rule.tolerance - new_tat) // rule.interval + 1)


def check(rules: tuple[Rule, ...], tats: list[int], now: int) -> Outcome:
    """Decide one request against every rule (all must admit); update ``tats`` in place only if admitted.

    ``tats[i]`` is rule ``i``'s TAT (use ``0`` for a key never seen). The memory
    backend calls it; the Lua script mirrors it line for line (a property test holds them equal).
    """
    refuse_i, refuse_wait = -1, 0
    news: list[int] = []
    for i, rule in enumerate(rules):
        tat = tats[i] if tats[i] > now else now
        wait = tat - rule.tolerance - now
        if wait > 0 and wait > refuse_wait:
            refuse_i, refuse_wait = i, wait
        news.append(tat + rule.interval)
    if refuse_i >= 0:
        return Outcome(False, refuse_i, 0, refuse_wait)
    best_i, best_rem, best_reset = 0, -1, 0
    for i, rule in enumerate(rules):
        tats[i] = news[i]
        rem = remaining_after(rule, news[i], now)
        reset = news[i] - now
        if best_rem < 0 or rem < best_rem or (rem == best_rem and reset > best_reset):
            best_i, best_rem, best_reset = i, rem, reset
    return Outcome(True, best_i, best_rem, best_reset)


#: The same algorithm as ``check`` for Redis: one round trip, atomic, all rules or none.
#: KEYS: one per rule (hash-tagged to one slot). ARGV[1]: now in microseconds, or "" to use
#: the server's TIME (so every process and machine agrees); then per rule: interval, tolerance.
#: Admission writes each rule's TAT with an expiry at the moment it stops mattering.
LUA_GCRA = """
local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[1])
end
local n = #KEYS
local news = {}
local refuse_i, refuse_wait = -1, 0
for i = 1, n do
  local interval = tonumber(ARGV[2 * i])
  local tolerance = tonumber(ARGV[2 * i + 1])
  local tat = tonumber(redis.call('GET', KEYS[i]))
  if not tat or tat < now then tat = now end
  local wait = tat - tolerance - now
  if wait > 0 and wait > refuse_wait then
    refuse_i, refuse_wait = i, wait
  end
  news[i] = tat + interval
end
if refuse_i >= 0 then
  return {0, refuse_i - 1, 0, refuse_wait}
end
local best_i, best_rem, best_reset = 0, -1, 0
for i = 1, n do
  local interval = tonumber(ARGV[2 * i])
  local tolerance = tonumber(ARGV[2 * i + 1])
  local new = news[i]
  local reset = new - now
  redis.call('SET', KEYS[i], string.format('%.0f', new), 'PX', math.ceil(reset / 1000))
  local rem = math.floor((now + tolerance - new) / interval) + 1
  if rem < 0 then rem = 0 end
  if best_rem < 0 or rem < best_rem or (rem == best_rem and reset > best_reset) then
    best_i, best_rem, best_reset = i, rem, reset
  end
end
return {1, best_i - 1, best_rem, best_reset}
"""
