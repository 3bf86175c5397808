"""The ``metrics`` observer: Prometheus counters and histograms per decision, and the exposition of them.

``fastapps_auth_decisions_total{stage,outcome,reason}``, ``fastapps_auth_stage_seconds{stage}``,
``fastapps_auth_decision_seconds`` (if enabled), and gauges from the stages' ``stats()``
(``fastapps_auth_cache_entries{stage,cache}``, ``fastapps_auth_jwks_age_seconds{stage}``,
``fastapps_auth_stage_stat{stage,stat}``), all prometheus-client's own metrics. Under its
multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` set before the process starts) they live in that
directory, and a scrape of any worker returns the totals of all. prometheus-client is the
``metrics`` extra.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import REGISTRY
from pydantic import Field, field_validator

from fastapps_auth.clock import Clock
from fastapps_auth.component import ComponentOptions
from fastapps_auth.decision import Decision
from fastapps_auth.errors import ConfigError
from fastapps_auth.observer import Observer
from fastapps_auth.observers.families import OVERFLOW, Families, multiprocess_dir, publish_gauges, shared

if TYPE_CHECKING:
    from fastapps_auth.chain import VerifierChain

__all__ = [
    "DEFAULT_BUCKETS",
    "OVERFLOW",
    "SHADOW_REJECTED",
    "MetricsApp",
    "MetricsObserver",
    "MetricsOptions",
    "attach_chain",
    "metrics_app",
    "metrics_route",
    "render_metrics",
]

#: Sub-millisecond to seconds: cached decisions take microseconds, a JWKS fetch or a cold pool much longer.
DEFAULT_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

#: The outcome label of a rejection a stage with ``enforce = false`` would have made.
SHADOW_REJECTED = "shadow_rejected"

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
        "private: a registry of this observer's own (see MetricsObserver.registry; not in multiprocess mode).",
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
    stats_interval: float = Field(
        default=5.0,
        gt=0.0,
        le=3600.0,
        description="Multiprocess mode: how often (seconds) a worker that is deciding writes its stages' stats() "
        "gauges to the shared directory (it also writes them before each scrape it serves).",
    )

    @field_validator("buckets")
    @classmethod
    def _increasing(cls, value: list[float]) -> list[float]:
        if any(b <= 0 for b in value) or any(b >= c for b, c in itertools.pairwise(value)):
            raise ValueError("buckets must be positive and strictly increasing")
        return value


class MetricsObserver(Observer[MetricsOptions]):
    """Counts decisions and times stages; ``attach(chain)`` adds its stages' gauges to scrapes."""

    plugin_name: ClassVar[str] = "metrics"
    options_model: ClassVar[type[ComponentOptions]] = MetricsOptions

    def __init__(self, options: MetricsOptions | None = None, /, *, clock: Clock | None = None, **kwargs: Any) -> None:
        super().__init__(options, clock=clock, **kwargs)
        opts = self.options
        buckets = tuple(opts.buckets)
        if opts.registry == "private":
            if multiprocess_dir() is not None:
                raise ConfigError(
                    "registry = 'private' cannot be used in prometheus-client's multiprocess mode "
                    "(PROMETHEUS_MULTIPROC_DIR is set): every worker's metrics share that directory",
                    stage=self.name,
                    key="registry",
                )
            self.registry: CollectorRegistry = CollectorRegistry()
            families = Families(opts.prefix, buckets, opts.max_label_sets, self.registry, stage=self.name)
        else:
            self.registry = REGISTRY
            families = shared(opts.prefix, buckets, opts.max_label_sets, stage=self.name)
        self._m = families
        self._total = families.whole_decisions() if opts.decision_seconds else None
        self._interval = opts.stats_interval
        self._next_publish = 0.0  # multiprocess mode: the first decision writes the gauges

    def __call__(self, decision: Decision) -> None:
        m = self._m
        if decision.allowed and not decision.failed_open:
            m.allowed.inc()
        elif decision.allowed:
            m.count((decision.failed_open[0], "failed-open", "unavailable")).inc()
        else:
            outcome = "unavailable" if decision.status == 503 else "rejected"
            m.count((decision.stage or "", outcome, decision.reason or "")).inc()
        for stage, reason in decision.shadowed:
            m.count((stage, SHADOW_REJECTED, reason)).inc()
        for t in decision.trace:
            m.stage(t.stage).observe(t.duration)
        if self._total is not None:
            self._total.observe(decision.duration)
        if m.gauges.multiprocess:
            now = self.clock.monotonic()
            if now >= self._next_publish:
                self._next_publish = now + self._interval
                m.gauges.publish()

    def attach(self, chain: VerifierChain) -> None:
        """Report ``chain.stats()`` (cache sizes, JWKS age) as gauges on every scrape (held weakly)."""
        self._m.gauges.attach(chain)

    def publish_gauges(self) -> None:
        """Multiprocess mode: write this worker's gauges now (the exposition does it before each scrape)."""
        self._m.gauges.publish()

    def stats(self) -> dict[str, float]:
        return {"label_sets": float(self._m.label_sets())}


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


def exposition(registry: CollectorRegistry) -> bytes:
    """``registry`` in the Prometheus text format; in multiprocess mode, every worker's metrics instead."""
    path = multiprocess_dir()
    if path is None:
        return generate_latest(registry)
    publish_gauges()
    merged = CollectorRegistry()
    MultiProcessCollector(merged, path=path)  # type: ignore[no-untyped-call]  # prometheus-client leaves it unannotated
    return generate_latest(merged)


def render_metrics(chain: VerifierChain | None = None, *, registry: CollectorRegistry | None = None) -> bytes:
    """The Prometheus text exposition of ``chain``'s metrics registry (or ``registry``; in
    multiprocess mode, of every worker)."""
    if chain is not None:
        attach_chain(chain)
    return exposition(_registry_of(chain, registry))


class MetricsApp:
    """An ASGI app answering GET with the Prometheus exposition (of every worker, in multiprocess mode)."""

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
        body = exposition(self.registry)
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
