"""The ``rate-limit`` stage: GCRA rules per subject, client, claim or IP, in memory or on Redis.

The stage knows the rules (and which tier of them applies to a token); the
backend knows where the state lives (``memory://``, or Redis: one server,
Cluster, Sentinel). A refusal is a 429 ``rate_limited`` with the exact seconds
until a request would be admitted; every check also exposes limit/remaining/reset
of the tightest rule on the Decision for the RateLimit headers.

When the backend fails, the stage applies ``on_error`` itself, so that an outage
is one warning, not one per request: ``allow`` (the default, as Envoy and Kong
do) lets the request through and records it in ``Decision.failed_open``;
``deny`` answers 503; ``local`` enforces the same rules (times ``local_share``)
in this process's memory until the backend answers again. Each such check adds a
trace entry ``<name>/backend`` saying which, and ``stats()`` counts them.
"""

from __future__ import annotations

import logging
import re
from time import perf_counter
from typing import Any, ClassVar, Literal

from mcp.server.auth.provider import AccessToken
from pydantic import Field

from fastapps_auth.backends.ratelimit import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_TIMEOUT,
    RateLimitBackend,
    open_rate_limit_backend,
)
from fastapps_auth.backends.ratelimit.algorithm import US, Outcome, Rule
from fastapps_auth.backends.ratelimit.memory import MemoryRateLimitBackend
from fastapps_auth.backends.ratelimit.outage import Outage
from fastapps_auth.backends.redis_client import CLUSTER_NODE, one_line, parse_redis_url
from fastapps_auth.clock import Clock
from fastapps_auth.component import ComponentOptions
from fastapps_auth.decision import Outcome as TraceOutcome
from fastapps_auth.decision import RateLimitInfo, StageTrace
from fastapps_auth.errors import ConfigError, Rejected, TransientError
from fastapps_auth.keys import KEY_HELP, MAX_KEY_CHARS, KeySelector, stored_key
from fastapps_auth.stage import Stage, StageOptions, Verification
from fastapps_auth.stages.rate_limit_rules import (
    Duration,
    RuleOptions,
    Tier,
    TierOptions,
    compile_rules,
    compile_tier,
)

__all__ = ["MAX_KEY_CHARS", "RateLimitOptions", "RateLimitStage", "stored_key"]

logger = logging.getLogger("fastapps_auth")

RateLimitOnError = Literal["deny", "allow", "local"]
_CONSEQUENCE = {
    "allow": "requests pass without a rate limit (failed open, recorded in each decision)",
    "deny": "requests are refused with 503",
    "local": "each process enforces the rules in its own memory (x{share:g})",
}


class RateLimitOptions(StageOptions):
    """Options of the ``rate-limit`` stage."""

    on_error: RateLimitOnError = Field(  # type: ignore[assignment]  # widens StageOptions' deny/allow
        default="allow",
        description="Backend down or slower than `timeout`: allow (fail open, recorded; the default), deny (503), "
        "or local (the same rules in this process's memory, times local_share, until the backend is back).",
    )
    local_share: float = Field(
        default=1.0,
        gt=0,
        le=1,
        description="on_error = local: the part of each limit one process enforces alone (e.g. 0.25 for 4 workers).",
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
        default="memory://",
        description="Where counts live: memory:// (this process), redis://host:port/db, "
        "redis+cluster://host:port,host:port, redis+sentinel://host:port/service (rediss… for TLS).",
    )
    max_keys: int = Field(
        default=100_000, ge=2, description="memory:// (and on_error = local): most keys kept; idle ones are forgotten."
    )
    timeout: float = Field(
        default=DEFAULT_TIMEOUT,
        gt=0,
        description="Redis: seconds a check may take, waiting for a free connection included, before on_error applies.",
    )
    max_connections: int = Field(
        default=DEFAULT_MAX_CONNECTIONS, ge=1, description="Redis: connections (checks in flight) per process and node."
    )
    prefix: str = Field(default="fastapps-auth:rl", description="Redis: key prefix (stage name and key follow).")
    insecure_backend: bool = Field(default=False, description="Allow redis:// (no TLS) to a host other than loopback.")


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
        self.policy: RateLimitOnError = o.on_error
        # What the chain applies to failures this stage does not handle itself (a missing key): "local"
        # cannot help there, so it fails open like "allow".
        self.on_error = "deny" if o.on_error == "deny" else "allow"
        self._key = KeySelector(o.key, stage=self.name, stored=True)
        self._missing = (
            f"rate-limit key 'ip' needs the client address recorded by the HTTP middleware "
            f"(fastapps_auth.integrations); stage {self.name!r} ran without a request context"
            if self._key.kind == "ip"
            else f"rate-limit key {o.key!r} is missing from the token, or not a string or number (stage {self.name!r})"
        )
        share = o.local_share
        if share != 1.0 and o.on_error != "local":
            raise ConfigError("local_share applies only with on_error = 'local'", stage=self.name, key="local_share")
        default = compile_rules(o.limit, o.window, o.burst, o.rules, stage=self.name, where="")
        self.rules = default
        # With tiers, every stored key carries its tier's prefix ("d:" or "t<i>:"), so no key of one
        # tier can spell a key of another.
        self._default = Tier(default, "d:" if o.tiers else "", local_share=share)
        self._tiers = tuple(
            compile_tier(i, t, default, stage=self.name, local_share=share) for i, t in enumerate(o.tiers)
        )
        self._backend: RateLimitBackend = store if store is not None else self._open(o)
        self._local = MemoryRateLimitBackend(max_keys=o.max_keys, clock=self.clock) if o.on_error == "local" else None
        backend_name = _safe(o.backend) if store is None else type(store).__name__
        self._outage = Outage(f"rate-limit stage {self.name!r}: {backend_name}", clock=self.clock)
        self._consequence = _CONSEQUENCE[o.on_error].format(share=share)
        self._backend_trace = f"{self.name}/backend"
        self.failed_open = 0
        self.denied = 0
        self.local_checks = 0

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
                max_connections=o.max_connections,
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

    def _select(self, at: AccessToken | None) -> Tier:
        for tier in self._tiers:
            if tier.matches(at):
                return tier
        return self._default

    async def __call__(self, v: Verification) -> None:
        if self.closed:
            raise _unavailable(self.retry_after)
        key = self._key(v)
        if key is None:
            raise TransientError(self._missing)
        tier = self._select(v.access_token) if self._tiers else self._default
        rules = tier.rules
        if rules is None:
            return
        if tier.prefix:
            key = tier.prefix + key
        descriptions = tier.descriptions
        t0 = perf_counter()
        try:
            out = await self._backend.hit(key, rules)
        except Exception as exc:  # the backend failed: this stage's on_error, logged once per outage
            self._outage.failure(exc, self._consequence)
            if self._local is None or tier.local_rules is None:
                self._refuse_or_pass(v, exc, perf_counter() - t0)
                return
            rules, descriptions = tier.local_rules, tier.local_descriptions
            out = self._local.hit_now(key, rules)
            self.local_checks += 1
            self._trace(v, "error-allowed", perf_counter() - t0, "degraded-local", exc)
        else:
            if self._outage.active and self._outage.success() and self._local is not None:
                self._local.clear()  # the backend decides again; what was counted locally is let go
        self._apply(v, out, rules, descriptions)

    def _refuse_or_pass(self, v: Verification, exc: Exception, duration: float) -> None:
        if self.policy == "deny":
            self.denied += 1
            self._trace(v, "error-denied", duration, "unavailable", exc)
            raise _unavailable(self.retry_after) from None
        self.failed_open += 1
        self._trace(v, "error-allowed", duration, "failed-open", exc)
        v.failed_open.append(self.name)

    def _trace(self, v: Verification, outcome: TraceOutcome, duration: float, reason: str, exc: Exception) -> None:
        v.trace.append(StageTrace(self._backend_trace, outcome, duration, None, reason, type(exc).__name__))

    @staticmethod
    def _apply(v: Verification, out: Outcome, rules: tuple[Rule, ...], descriptions: tuple[str, ...]) -> None:
        rule = rules[out.rule]
        wait = out.wait / US
        if out.allowed:
            prior = v.rate_limit
            if prior is None or out.remaining < prior.remaining:
                v.rate_limit = RateLimitInfo(rule.limit, out.remaining, wait, rule.window, rule.policy)
            return
        v.rate_limit = RateLimitInfo(rule.limit, 0, wait, rule.window, rule.policy)
        raise Rejected("rate_limited", descriptions[out.rule], error="rate_limited", status=429, retry_after=wait)

    async def start(self) -> None:
        """Connect to Redis now (warm connections, load the script). Never raises: Redis may come later."""
        start = getattr(self._backend, "start", None)
        if start is None or self.closed:
            return
        try:
            await start()
        except Exception as exc:
            message = one_line(exc)
            level = logging.ERROR if CLUSTER_NODE in message else logging.WARNING
            logger.log(
                level,
                "rate-limit stage %r: %s could not be reached at start (%s); checks will connect on use",
                self.name,
                _safe(self.options.backend),
                message,
            )

    async def probe(self) -> None:
        """Reach the backend once: Redis PING (every primary of a cluster), a cluster node behind redis:// refused."""
        probe = getattr(self._backend, "probe", None)
        if probe is not None:
            await probe()

    async def aclose(self) -> None:
        if self.closed:
            return
        self.closed = True
        await self._backend.aclose()
        if self._local is not None:
            self._local.clear()

    def stats(self) -> dict[str, float]:
        out = dict(self._backend.stats())
        out.update(
            backend_failures=float(self._outage.total_failures),
            outages=float(self._outage.outages),
            outage_active=float(self._outage.active),
            failed_open=float(self.failed_open),
            denied_unavailable=float(self.denied),
        )
        if self._local is not None:
            out.update(local_checks=float(self.local_checks), local_keys=float(len(self._local)))
        return out


def _unavailable(retry_after: float) -> Rejected:
    """The 503 the chain gives a transient failure, raised here so that the chain does not log it again.

    (The cause is logged once per outage and named in the trace; it is never sent to the client.)
    """
    return Rejected(
        "unavailable",
        "the authorization service is temporarily unavailable",
        error="temporarily_unavailable",
        status=503,
        retry_after=retry_after,
        transient=True,
    )


def _safe(uri: str) -> str:
    """``uri`` as logs may show it: a Redis URL without its passwords."""
    try:
        return str(parse_redis_url(uri, allow_plaintext=True))
    except ValueError:
        return uri.partition("://")[0] + "://"
