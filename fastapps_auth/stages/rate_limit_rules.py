"""The rules of the ``rate-limit`` stage: durations, rules and tiers as configured, and compiled.

The stage's options are validated by pydantic (these models); ``compile_rules`` turns them into
``Rule`` tuples and reports every inconsistency as a ``ConfigError`` naming the key.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated, Any

from mcp.server.auth.provider import AccessToken
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from fastapps_auth.backends.ratelimit.algorithm import Rule
from fastapps_auth.errors import ConfigError

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|min|m|h|d)?\s*$")


def parse_duration(value: Any) -> Any:
    """Seconds as a number, or a string such as ``"1s"``, ``"10m"``, ``"1h"``, ``"1d"``, ``"250ms"``."""
    if isinstance(value, str):
        m = _DURATION.match(value)
        if not m:
            raise ValueError("a duration is a number of seconds or a string like '30s', '10m', '1h', '1d'")
        return float(m.group(1)) * _UNITS[m.group(2) or "s"]
    return value


Duration = Annotated[float, BeforeValidator(parse_duration), Field(gt=0, allow_inf_nan=False)]


class RuleOptions(BaseModel):
    """One rule: ``limit`` requests per ``window``, with bursts of up to ``burst``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    limit: int = Field(ge=1, description="Requests admitted per window.")
    window: Duration = Field(description="Window in seconds (or '1s', '10m', '1h', '1d').")
    burst: int | None = Field(default=None, ge=1, description="Requests admitted at once from idle (default: limit).")


class TierOptions(BaseModel):
    """Rules that replace the default ones for tokens with a scope, or with a claim value."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scope: str | None = Field(default=None, description="Tokens granted this scope get this tier.")
    claim: str | None = Field(default=None, description="Tokens whose claim `claim` equals (or contains) `value`.")
    value: str | int | bool | None = Field(default=None, description="The claim value that selects this tier.")
    limit: int | None = Field(default=None, ge=1, description="This tier's limit (window: the default rule's).")
    window: Duration | None = Field(default=None, description="This tier's window.")
    burst: int | None = Field(default=None, ge=1, description="This tier's burst (default: its limit).")
    rules: list[RuleOptions] | None = Field(default=None, description="Several rules for this tier.")
    unlimited: bool = Field(default=False, description="Tokens of this tier are not rate limited.")


class Tier:
    """Compiled tier: how it matches, its rules (``None`` = unlimited), its storage-key prefix.

    ``local_rules`` are its rules scaled by ``local_share``, for ``on_error = "local"``.
    """

    __slots__ = ("claim", "descriptions", "local_descriptions", "local_rules", "prefix", "rules", "scope", "value")

    def __init__(
        self,
        rules: tuple[Rule, ...] | None,
        prefix: str,
        *,
        scope: str | None = None,
        claim: str | None = None,
        value: Any = None,
        local_share: float = 1.0,
    ) -> None:
        self.rules = rules
        self.local_rules = None if rules is None else tuple(r.scaled(local_share) for r in rules)
        self.prefix = prefix
        self.scope = scope
        self.claim = claim
        self.value = value
        # Client-safe 429 text per rule, built once (the exact wait travels in Retry-After).
        self.descriptions = tuple(f"rate limit exceeded ({r.limit} per {r.window:g}s)" for r in rules or ())
        self.local_descriptions = tuple(
            f"rate limit exceeded ({r.limit} per {r.window:g}s)" for r in self.local_rules or ()
        )

    def matches(self, at: AccessToken | None) -> bool:
        if at is None:
            return False
        if self.scope is not None:
            return self.scope in at.scopes
        got = (at.claims or {}).get(self.claim or "")
        if isinstance(got, list):
            return any(_same(g, self.value) for g in got)
        if isinstance(got, str) and isinstance(self.value, str) and " " in got:
            return self.value in got.split()  # space-separated lists, as in `scope`
        return _same(got, self.value)


def _same(a: Any, b: Any) -> bool:
    return isinstance(a, bool) == isinstance(b, bool) and a == b


def compile_rules(
    limit: int | None,
    window: float | None,
    burst: int | None,
    rules: Sequence[RuleOptions] | None,
    *,
    stage: str,
    where: str,
    default_window: float | None = None,
) -> tuple[Rule, ...]:
    """The rules of the top level or of a tier; ``ConfigError`` naming the key for any inconsistency."""
    key = f"{where}." if where else ""
    try:
        if rules is not None:
            if limit is not None or window is not None or burst is not None:
                raise ConfigError("give either rules, or limit/window/burst, not both", stage=stage, key=f"{key}rules")
            if not rules:
                raise ConfigError("needs at least one rule", stage=stage, key=f"{key}rules")
            return tuple(Rule.make(r.limit, r.window, r.burst) for r in rules)
        if limit is None:
            raise ConfigError(
                "needs limit and window (or rules = [{limit=..., window=...}, ...])", stage=stage, key=f"{key}limit"
            )
        w = window if window is not None else default_window
        if w is None:
            raise ConfigError("needs window (seconds, or '1s', '10m', '1h')", stage=stage, key=f"{key}window")
        return (Rule.make(limit, w, burst),)
    except ValueError as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(str(exc), stage=stage, key=f"{key}burst") from None


def compile_tier(i: int, t: TierOptions, default: tuple[Rule, ...], *, stage: str, local_share: float) -> Tier:
    """Tier ``i`` of the options, compiled; its storage keys are prefixed ``t<i>:``."""
    where = f"tiers[{i}]"
    if (t.scope is None) == (t.claim is None):
        raise ConfigError("a tier names exactly one of scope or claim", stage=stage, key=f"{where}.scope")
    if t.claim is not None and t.value is None:
        raise ConfigError("a claim tier needs value", stage=stage, key=f"{where}.value")
    if t.scope is not None and t.value is not None:
        raise ConfigError("value goes with claim, not scope", stage=stage, key=f"{where}.value")
    if t.unlimited:
        if t.limit is not None or t.window is not None or t.burst is not None or t.rules is not None:
            raise ConfigError("an unlimited tier has no rules", stage=stage, key=f"{where}.unlimited")
        rules: tuple[Rule, ...] | None = None
    else:
        default_window = default[0].window if len(default) == 1 else None
        rules = compile_rules(
            t.limit, t.window, t.burst, t.rules, stage=stage, where=where, default_window=default_window
        )
    return Tier(rules, f"t{i}:", scope=t.scope, claim=t.claim, value=t.value, local_share=local_share)
