"""The ``rate-limit`` stage: GCRA rules per subject, client, claim or IP, in memory or on Redis.

The stage knows the rules (and which tier of them applies to a token); the
backend knows where the state lives (``memory://`` or ``redis://``). A refusal
is a 429 ``rate_limited`` with the exact seconds until a request would be
admitted; every check also exposes limit/remaining/reset of the tightest rule
on the Decision for the RateLimit headers. A backend failure fails open by
default (``on_error = "allow"``), as Envoy and Kong do.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Annotated, Any, ClassVar

from mcp.server.auth.provider import AccessToken
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from fastapps_auth.backends.ratelimit import RateLimitBackend, open_rate_limit_backend
from fastapps_auth.backends.ratelimit_algorithm import US, Rule
from fastapps_auth.clock import Clock
from fastapps_auth.component import ComponentOptions, OnError
from fastapps_auth.decision import RateLimitInfo
from fastapps_auth.errors import ConfigError, Rejected, TransientError
from fastapps_auth.keys import KEY_HELP, KeySelector
from fastapps_auth.stage import Stage, StageOptions, Verification

#: Keys longer than this are stored as their SHA-256 (bounds memory per key whatever the claim holds).
MAX_KEY_CHARS = 128
#: First characters a key is never stored with: "#" marks a digest, "}" would end the Redis hash tag at once.
_NOT_FIRST = frozenset("#}")

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


class RateLimitOptions(StageOptions):
    """Options of the ``rate-limit`` stage."""

    on_error: OnError = Field(
        default="allow",
        description="Backend down or slower than `timeout`: allow (fail open, recorded; the default) or deny (503).",
    )
    limit: int | None = Field(default=None, ge=1, description="Requests admitted per window (one rule).")
    window: Duration | None = Field(
        default=None, description="The window of `limit`, in seconds (or '1s', '10m', '1h', '1d')."
    )
    burst: int | None = Field(
        default=None, ge=1, description="Requests admitted at once from idle, 1..limit (default: limit)."
    )
    rules: list[RuleOptions] | None = Field(
        default=None,
        description="Several rules that all apply, e.g. [{limit=10, window=1}, {limit=1000, window=3600}].",
    )
    tiers: list[TierOptions] = Field(
        default_factory=list,
        description="Overrides by scope or claim value, first match wins, e.g. [{scope='premium', limit=10000}].",
    )
    key: str = Field(default="subject", description=f"What is limited: {KEY_HELP} (ip needs the HTTP middleware).")
    backend: str = Field(
        default="memory://", description="Where counts live: memory:// (this process) or redis://host:port/db."
    )
    max_keys: int = Field(
        default=100_000, ge=2, description="memory://: most keys kept; idle keys beyond it are forgotten."
    )
    timeout: float = Field(default=0.1, gt=0, description="Redis: seconds a check may take before on_error applies.")
    prefix: str = Field(default="fastapps-auth:rl", description="Redis: key prefix (stage name and key follow).")
    insecure_backend: bool = Field(default=False, description="Allow redis:// (no TLS) to a host other than loopback.")


class _Tier:
    """Compiled tier: how it matches, its rules (``None`` = unlimited), its storage-key prefix."""

    __slots__ = ("claim", "descriptions", "prefix", "rules", "scope", "value")

    def __init__(
        self,
        rules: tuple[Rule, ...] | None,
        prefix: str,
        *,
        scope: str | None = None,
        claim: str | None = None,
        value: Any = None,
    ) -> None:
        self.rules = rules
        self.prefix = prefix
        self.scope = scope
        self.claim = claim
        self.value = value
        # Client-safe 429 text per rule, built once (the exact wait travels in Retry-After).
        self.descriptions = tuple(f"rate limit exceeded ({r.limit} per {r.window:g}s)" for r in rules or ())

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


def _compile(
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


def stored_key(key: str) -> str:
    """``#`` and the SHA-256 of ``key``: the stored form of a key too long, empty, or starting with ``#`` or ``}``.

    No key is stored as itself with a leading ``#``, so no short key can spell another key's digest; and
    every stored key is a non-empty Redis hash tag, so all rules of a key share one Cluster slot.
    """
    return "#" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


class RateLimitStage(Stage[RateLimitOptions]):
    """Charges one request to the token's key; 429 ``rate_limited`` with an exact ``retry_after`` when over.

    ``store`` injects a backend instance instead of opening ``backend`` (tests, shared stores).
    """

    plugin_name: ClassVar[str] = "rate-limit"
    options_model: ClassVar[type[ComponentOptions]] = RateLimitOptions

    def __init__(
        self,
        options: RateLimitOptions | None = None,
        /,
        *,
        clock: Clock | None = None,
        store: RateLimitBackend | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(options, clock=clock, **kwargs)
        o = self.options
        self._key = KeySelector(o.key, stage=self.name)
        self._missing = (
            f"rate-limit key 'ip' needs the client address recorded by the HTTP middleware "
            f"(fastapps_auth.integrations); stage {self.name!r} ran without a request context"
            if self._key.kind == "ip"
            else f"rate-limit key {o.key!r} is missing from the token (stage {self.name!r})"
        )
        default = _compile(o.limit, o.window, o.burst, o.rules, stage=self.name, where="")
        self.rules = default
        # With tiers, every stored key carries its tier's prefix ("d:" or "t<i>:"), so no key of one
        # tier can spell a key of another.
        self._default = _Tier(default, "d:" if o.tiers else "")
        self._tiers = tuple(self._tier(i, t, default) for i, t in enumerate(o.tiers))
        self._backend: RateLimitBackend = store if store is not None else self._open(o)
        self._closed = False

    def _tier(self, i: int, t: TierOptions, default: tuple[Rule, ...]) -> _Tier:
        where = f"tiers[{i}]"
        if (t.scope is None) == (t.claim is None):
            raise ConfigError("a tier names exactly one of scope or claim", stage=self.name, key=f"{where}.scope")
        if t.claim is not None and t.value is None:
            raise ConfigError("a claim tier needs value", stage=self.name, key=f"{where}.value")
        if t.scope is not None and t.value is not None:
            raise ConfigError("value goes with claim, not scope", stage=self.name, key=f"{where}.value")
        if t.unlimited:
            if t.limit is not None or t.window is not None or t.burst is not None or t.rules is not None:
                raise ConfigError("an unlimited tier has no rules", stage=self.name, key=f"{where}.unlimited")
            rules: tuple[Rule, ...] | None = None
        else:
            default_window = default[0].window if len(default) == 1 else None
            rules = _compile(
                t.limit, t.window, t.burst, t.rules, stage=self.name, where=where, default_window=default_window
            )
        return _Tier(rules, f"t{i}:", scope=t.scope, claim=t.claim, value=t.value)

    def _open(self, o: RateLimitOptions) -> RateLimitBackend:
        safe_name = re.sub(r"[{}\s]", "_", self.name)
        try:
            return open_rate_limit_backend(
                o.backend,
                clock=self.clock,
                max_keys=o.max_keys,
                timeout=o.timeout,
                prefix=f"{o.prefix}:{safe_name}:{o.key}",
                allow_plaintext=o.insecure_backend,
            )
        except ImportError as exc:
            raise ConfigError(
                f"backend needs an optional dependency ({exc.name}): pip install 'fastapps-auth[redis]'",
                stage=self.name,
                key="backend",
            ) from None
        except ValueError as exc:
            raise ConfigError(str(exc), stage=self.name, key="backend") from None

    @property
    def backend(self) -> RateLimitBackend:
        return self._backend

    def tier_for(self, at: AccessToken | None) -> tuple[Rule, ...] | None:
        """The rules that apply to ``at`` (``None`` when its tier is unlimited)."""
        return self._select(at).rules

    def _select(self, at: AccessToken | None) -> _Tier:
        for tier in self._tiers:
            if tier.matches(at):
                return tier
        return self._default

    async def __call__(self, v: Verification) -> None:
        key = self._key(v)
        if key is None:
            raise TransientError(self._missing)
        tier = self._select(v.access_token) if self._tiers else self._default
        rules = tier.rules
        if rules is None:
            return
        if len(key) > MAX_KEY_CHARS or not key or key[0] in _NOT_FIRST:
            key = stored_key(key)
        if tier.prefix:
            key = tier.prefix + key
        out = await self._backend.hit(key, rules)
        rule = rules[out.rule]
        wait = out.wait / US
        if out.allowed:
            prior = v.rate_limit
            if prior is None or out.remaining < prior.remaining:
                v.rate_limit = RateLimitInfo(rule.limit, out.remaining, wait, rule.window, rule.policy)
            return
        v.rate_limit = RateLimitInfo(rule.limit, 0, wait, rule.window, rule.policy)
        raise Rejected(
            "rate_limited",
            tier.descriptions[out.rule],
            error="rate_limited",
            status=429,
            retry_after=wait,
        )

    async def start(self) -> None:
        """Connect to Redis now (one PING) instead of at the first request."""
        ping = getattr(self._backend, "ping", None)
        if ping is not None:
            await ping()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._backend.aclose()

    def stats(self) -> dict[str, float]:
        return self._backend.stats()
