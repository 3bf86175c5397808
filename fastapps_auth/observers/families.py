"""The prometheus-client metrics of one (registry, prefix): the decision counter, the stage histograms,
the optional whole-decision histogram and the stats gauges, with their children bounded by ``max_label_sets``.

Observers on the default registry with the same prefix share one set (``shared``), so several
chains in one process add up and nothing is registered twice.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.registry import REGISTRY

from fastapps_auth.errors import ConfigError
from fastapps_auth.observers.gauges import StatsGauges

if TYPE_CHECKING:
    from prometheus_client.registry import Collector

#: Label value used once ``max_label_sets`` distinct label sets exist (a stage inventing reasons per request).
OVERFLOW = "other"


def multiprocess_dir() -> str | None:
    """prometheus-client's multiprocess directory, if this process runs in that mode."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class Families:
    """The metrics of one (registry, prefix), and their children, bounded by ``max_label_sets``."""

    def __init__(
        self, prefix: str, buckets: tuple[float, ...], max_label_sets: int, registry: CollectorRegistry, *, stage: str
    ) -> None:
        self.prefix, self.buckets, self.max_label_sets, self.registry = prefix, buckets, max_label_sets, registry
        self.stage_name = stage
        self.lock = threading.Lock()
        self.decisions = Counter(
            f"{prefix}_decisions",
            "Verification decisions by deciding stage, outcome and reason.",
            ["stage", "outcome", "reason"],
            registry=None,
        )
        self.stage_seconds = Histogram(
            f"{prefix}_stage_seconds", "Time spent in each stage.", ["stage"], buckets=buckets, registry=None
        )
        self.decision_seconds: Histogram | None = None
        self.gauges = StatsGauges(prefix, multiprocess=multiprocess_dir() is not None)
        _register(registry, [self.decisions, self.stage_seconds, *self.gauges.collectors()], stage=stage, key="prefix")
        self._counts: dict[tuple[str, str, str], Counter] = {}
        self._stages: dict[str, Histogram] = {}
        #: Clean allowed decisions (not counted against the bound; present from the start, at 0).
        self.allowed = self.decisions.labels("", "allowed", "")

    def count(self, key: tuple[str, str, str]) -> Counter:
        """The counter child of ``key`` (the reason becomes ``other`` once the bound is reached)."""
        child = self._counts.get(key)
        if child is not None:
            return child
        with self.lock:
            if len(self._counts) >= self.max_label_sets:
                key = (key[0] if key[0] in self._stages else OVERFLOW, key[1], OVERFLOW)
            child = self._counts.get(key)
            if child is None:
                child = self._counts[key] = self.decisions.labels(*key)
            return child

    def stage(self, name: str) -> Histogram:
        child = self._stages.get(name)
        if child is not None:
            return child
        with self.lock:
            if len(self._stages) >= self.max_label_sets:
                name = OVERFLOW
            child = self._stages.get(name)
            if child is None:
                child = self._stages[name] = self.stage_seconds.labels(name)
            return child

    def whole_decisions(self) -> Histogram:
        """The whole-decision histogram, registered on first use (absent from scrapes until asked for)."""
        with self.lock:
            if self.decision_seconds is None:
                h = Histogram(
                    f"{self.prefix}_decision_seconds",
                    "Time of a whole verification.",
                    buckets=self.buckets,
                    registry=None,
                )
                _register(self.registry, [h], stage=self.stage_name, key="decision_seconds")
                self.decision_seconds = h
            return self.decision_seconds

    def label_sets(self) -> int:
        return len(self._counts) + 1


def _register(registry: CollectorRegistry, collectors: list[Collector], *, stage: str, key: str) -> None:
    done: list[Collector] = []
    try:
        for c in collectors:
            registry.register(c)
            done.append(c)
    except ValueError as exc:  # another library (or observer) registered the same names
        for c in done:
            registry.unregister(c)
        raise ConfigError(f"{exc}; choose another prefix", stage=stage, key=key) from None


_shared_lock = threading.Lock()
_shared: dict[str, Families] = {}


def shared(prefix: str, buckets: tuple[float, ...], max_label_sets: int, *, stage: str) -> Families:
    """The families of ``prefix`` on prometheus-client's default registry, made on first use."""
    with _shared_lock:
        families = _shared.get(prefix)
        if families is None:
            families = _shared[prefix] = Families(prefix, buckets, max_label_sets, REGISTRY, stage=stage)
    if families.buckets != buckets:
        raise ConfigError(
            f"another metrics observer with prefix {prefix!r} uses other buckets "
            "(use the same buckets, another prefix, or registry = 'private')",
            stage=stage,
            key="buckets",
        )
    return families


def publish_gauges() -> None:
    """Multiprocess mode: write this worker's gauges of every observer now (done before each scrape)."""
    with _shared_lock:
        families = list(_shared.values())
    for f in families:
        if f.gauges.multiprocess:
            f.gauges.publish()
