"""The ``metrics`` observer: Prometheus counters and histograms per decision, and an ASGI app to expose them.

``fastapps_auth_decisions_total{stage,outcome,reason}``, ``fastapps_auth_stage_seconds{stage}``,
``fastapps_auth_decision_seconds`` (if enabled), and gauges read from the stages' ``stats()`` at scrape time
(``fastapps_auth_cache_entries{stage,cache}``, ``fastapps_auth_jwks_age_seconds{stage}``,
``fastapps_auth_stage_stat{stage,stat}``). prometheus-client is the ``metrics`` extra.
"""

from __future__ import annotations

import itertools
import logging
import threading
import weakref
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import REGISTRY, Collector
from prometheus_client.utils import floatToGoString
from pydantic import Field, field_validator

from fastapps_auth.clock import Clock
from fastapps_auth.component import ComponentOptions
from fastapps_auth.decision import Decision
from fastapps_auth.errors import ConfigError
from fastapps_auth.observer import Observer

if TYPE_CHECKING:
    from fastapps_auth.chain import VerifierChain

logger = logging.getLogger("fastapps_auth.metrics")

#: Sub-millisecond to seconds: cached decisions take microseconds, a JWKS fetch or a cold pool much longer.
DEFAULT_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

#: Label value used once ``max_label_sets`` distinct label sets exist (a stage inventing reasons per request).
OVERFLOW = "other"

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class MetricsOptions(ComponentOptions):
    """Options of the ``metrics`` observer."""

    prefix: str = Field(
        default="fastapps_auth",
        pattern=r"^[a-zA-Z_][a-zA-Z0-9_]*$",
        description="Prefix of every metric name.",
    )
    registry: Literal["default", "private"] = Field(
        default="default",
        description="default: prometheus-client's global registry (shared by observers with the same prefix); "
        "private: a registry of this observer's own (see MetricsObserver.registry).",
    )
    buckets: list[float] = Field(
        default_factory=lambda: list(DEFAULT_BUCKETS),
        min_length=1,
        max_length=40,
        description="Histogram buckets (seconds) of the stage and decision durations.",
    )
    decision_seconds: bool = Field(
        default=False,
        description="Also keep fastapps_auth_decision_seconds, a histogram of whole decisions "
        "(the stage histograms are always kept).",
    )
    max_label_sets: int = Field(
        default=1000,
        ge=10,
        le=100_000,
        description="Bound on distinct (stage, outcome, reason) label sets; beyond it reason is reported as 'other'.",
    )

    @field_validator("buckets")
    @classmethod
    def _increasing(cls, value: list[float]) -> list[float]:
        if any(b <= 0 for b in value) or any(b >= c for b, c in itertools.pairwise(value)):
            raise ValueError("buckets must be positive and strictly increasing")
        return value


class _Histogram:
    """Bucket counts (not cumulative; the last is +Inf) and a sum; ``MetricsObserver`` fills them inline.

    ``bisect_left`` puts a value equal to a bound in that bound's bucket: Prometheus buckets are "<=".
    """

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.total = 0.0

    def cumulative(self) -> list[tuple[str, float]]:
        out, running = [], 0
        for bound, count in zip((*map(floatToGoString, self.bounds), "+Inf"), self.counts, strict=True):
            running += count
            out.append((bound, float(running)))
        return out


class _Store(Collector):
    """The counts of one (registry, prefix), kept in plain dicts and turned into metric families at scrape time.

    Updating a prometheus-client child takes a lock per value and a Python call per bucket; an
    observer runs on the event loop's thread, so plain additions are enough and cost far less.
    """

    def __init__(self, prefix: str, buckets: tuple[float, ...], max_label_sets: int) -> None:
        self.prefix = prefix
        self.buckets = buckets
        self.max_label_sets = max_label_sets
        self.decisions: dict[tuple[str, str, str], int] = {}
        #: Clean allowed decisions, the common case, counted apart (a tuple key is hashed per use).
        self.allowed = 0
        self.stages: dict[str, _Histogram] = {}
        self.total = _Histogram(buckets)
        self.total_enabled = False
        self.chains: weakref.WeakSet[VerifierChain] = weakref.WeakSet()

    def count(self, key: tuple[str, str, str]) -> None:
        decisions = self.decisions
        if key in decisions:
            decisions[key] += 1
            return
        if len(decisions) >= self.max_label_sets:
            stage = key[0] if key[0] in self.stages else OVERFLOW
            key = (stage, key[1], OVERFLOW)
        decisions[key] = decisions.get(key, 0) + 1

    def stage(self, name: str) -> _Histogram:
        h = self.stages.get(name)
        if h is None:
            if len(self.stages) >= self.max_label_sets:
                name = OVERFLOW
            h = self.stages.get(name)
            if h is None:
                h = self.stages[name] = _Histogram(self.buckets)
        return h

    def describe(self) -> Iterable[Metric]:
        return self._families(with_values=False)

    def collect(self) -> Iterable[Metric]:
        return self._families(with_values=True)

    def _families(self, *, with_values: bool) -> list[Metric]:
        p = self.prefix
        decisions = CounterMetricFamily(
            f"{p}_decisions",
            "Verification decisions by deciding stage, outcome and reason.",
            labels=["stage", "outcome", "reason"],
        )
        stage_seconds = HistogramMetricFamily(f"{p}_stage_seconds", "Time spent in each stage.", labels=["stage"])
        decision_seconds = HistogramMetricFamily(f"{p}_decision_seconds", "Time of a whole verification.")
        cache = GaugeMetricFamily(f"{p}_cache_entries", "Entries in a stage's cache.", labels=["stage", "cache"])
        jwks = GaugeMetricFamily(f"{p}_jwks_age_seconds", "Age of a stage's key set.", labels=["stage"])
        other = GaugeMetricFamily(f"{p}_stage_stat", "Other numbers a stage reports.", labels=["stage", "stat"])
        families: list[Metric] = [decisions, stage_seconds, decision_seconds, cache, jwks, other]
        if not with_values:
            return families
        if self.allowed:
            decisions.add_metric(list(_ALLOWED), float(self.allowed))
        for labels, n in list(self.decisions.items()):
            decisions.add_metric(list(labels), float(n))
        for name, h in list(self.stages.items()):
            stage_seconds.add_metric([name], h.cumulative(), h.total)
        if self.total_enabled:
            decision_seconds.add_metric([], self.total.cumulative(), self.total.total)
        for chain in list(self.chains):
            try:
                stats = chain.stats()
            except Exception as exc:  # a stage's stats() must not break the scrape
                logger.warning("stats() of %r failed during a scrape (%s)", chain.name, type(exc).__name__)
                continue
            for key, value in stats.items():
                stage, _, stat = key.partition(".")
                if "jwks_age" in stat:
                    jwks.add_metric([stage], value)
                elif _is_cache_size(stat):
                    cache.add_metric([stage, stat], value)
                else:
                    other.add_metric([stage, stat], value)
        return families


def _is_cache_size(stat: str) -> bool:
    """``cache_entries``, ``cache_size``, ``cached_tokens``: a cache's size (hits and misses are not)."""
    return stat.startswith("cached_") or ("cache" in stat and stat.endswith(("_entries", "_size")))


_shared_lock = threading.Lock()
_shared: dict[str, _Store] = {}


class MetricsObserver(Observer[MetricsOptions]):
    """Counts decisions and times stages; ``attach(chain)`` adds its stages' gauges to scrapes."""

    plugin_name: ClassVar[str] = "metrics"
    options_model: ClassVar[type[ComponentOptions]] = MetricsOptions

    def __init__(self, options: MetricsOptions | None = None, /, *, clock: Clock | None = None, **kwargs: Any) -> None:
        super().__init__(options, clock=clock, **kwargs)
        opts = self.options
        buckets = tuple(opts.buckets)
        if opts.registry == "private":
            self.registry: CollectorRegistry = CollectorRegistry()
            store = _Store(opts.prefix, buckets, opts.max_label_sets)
            self.registry.register(store)
        else:
            self.registry = REGISTRY
            store = self._shared_store(opts, buckets)
        self._store = store
        #: The whole-decision histogram, if asked for (a fifth of this observer's cost per decision).
        self._total: _Histogram | None = None
        if opts.decision_seconds:
            store.total_enabled = True
            self._total = store.total

    def _shared_store(self, opts: MetricsOptions, buckets: tuple[float, ...]) -> _Store:
        with _shared_lock:
            store = _shared.get(opts.prefix)
            if store is None:
                store = _Store(opts.prefix, buckets, opts.max_label_sets)
                try:
                    REGISTRY.register(store)
                except ValueError as exc:  # another library registered the same names
                    raise ConfigError(f"{exc}; choose another prefix", stage=self.name, key="prefix") from None
                _shared[opts.prefix] = store
        if store.buckets != buckets:
            raise ConfigError(
                f"another metrics observer with prefix {opts.prefix!r} uses other buckets "
                "(use the same buckets, another prefix, or registry = 'private')",
                stage=self.name,
                key="buckets",
            )
        return store

    def __call__(self, decision: Decision) -> None:
        # The hot path, inlined (no method calls for the common case): an increment and a bisect per stage.
        store = self._store
        if decision.allowed and not decision.failed_open:
            store.allowed += 1
        else:
            if decision.allowed:
                key = (decision.failed_open[0], "failed-open", "unavailable")
            else:
                outcome = "unavailable" if decision.status == 503 else "rejected"
                key = (decision.stage or "", outcome, decision.reason or "")
            try:
                store.decisions[key] += 1
            except KeyError:
                store.count(key)
        stages = store.stages
        bounds = store.buckets
        for t in decision.trace:
            duration = t.duration
            try:
                h = stages[t.stage]
            except KeyError:
                h = store.stage(t.stage)
            h.counts[bisect_left(bounds, duration)] += 1
            h.total += duration
        total = self._total
        if total is not None:
            total.counts[bisect_left(bounds, decision.duration)] += 1
            total.total += decision.duration

    def attach(self, chain: VerifierChain) -> None:
        """Report ``chain.stats()`` (cache sizes, JWKS age) as gauges on every scrape (held weakly)."""
        self._store.chains.add(chain)

    def stats(self) -> dict[str, float]:
        store = self._store
        return {"label_sets": float(len(store.decisions) + (1 if store.allowed else 0))}


_ALLOWED = ("", "allowed", "")


def _registry_of(chain: VerifierChain | None, registry: CollectorRegistry | None) -> CollectorRegistry:
    if registry is not None:
        return registry
    if chain is not None:
        for obs in chain.observers:
            if isinstance(obs, MetricsObserver):
                return obs.registry
    return REGISTRY


def attach_chain(chain: VerifierChain) -> None:
    """Attach ``chain`` to each of its ``MetricsObserver``s, so scrapes include its stages' gauges."""
    for obs in chain.observers:
        if isinstance(obs, MetricsObserver):
            obs.attach(chain)


def render_metrics(chain: VerifierChain | None = None, *, registry: CollectorRegistry | None = None) -> bytes:
    """The Prometheus text exposition of ``chain``'s metrics registry (or ``registry``)."""
    if chain is not None:
        attach_chain(chain)
    return generate_latest(_registry_of(chain, registry))


class MetricsApp:
    """An ASGI app answering GET with the Prometheus exposition of one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        method = scope.get("method", "GET")
        if method not in ("GET", "HEAD"):
            await _respond(send, 405, b"method not allowed\n", b"text/plain; charset=utf-8", [(b"allow", b"GET, HEAD")])
            return
        body = generate_latest(self.registry)
        await _respond(send, 200, b"" if method == "HEAD" else body, CONTENT_TYPE_LATEST.encode())


def metrics_app(chain: VerifierChain | None = None, *, registry: CollectorRegistry | None = None) -> MetricsApp:
    """An ASGI app serving the Prometheus exposition; mount it at ``/metrics``.

    Given a chain, it serves the registry of the chain's ``metrics`` observer and
    includes the chain's gauges (cache sizes, JWKS age).
    """
    if chain is not None:
        attach_chain(chain)
    return MetricsApp(_registry_of(chain, registry))


async def _respond(
    send: Send, status: int, body: bytes, content_type: bytes, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def metrics_route(chain: VerifierChain | None = None, *, path: str = "/metrics") -> Any:
    """A Starlette ``Route`` serving ``metrics_app(chain)`` at ``path`` (Starlette imported here, lazily)."""
    from starlette.routing import Route

    return Route(path, endpoint=metrics_app(chain), methods=["GET", "HEAD"])
