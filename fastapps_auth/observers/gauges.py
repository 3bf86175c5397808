"""Gauges read from the stages' ``stats()``: cache sizes, key-set age, the other numbers a stage reports.

In one process they are a prometheus-client custom collector, read from the attached chains at
scrape time. Custom collectors do not work in multiprocess mode, so there they are ``Gauge``s
that each worker writes to the shared directory (before each scrape it serves, and every
``stats_interval`` while it decides), merged per ``multiprocess_mode``:

- ``cache_entries``: ``livesum``, the entries held by all live workers (each has its own cache);
- ``jwks_age_seconds``: ``livemax``, the stalest key set in any live worker;
- ``stage_stat``: ``liveall``, one series per live worker (``pid`` label): these numbers mix
  counters and levels, so no one merge is right for all.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Literal

from prometheus_client import Gauge
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from fastapps_auth.chain import VerifierChain

logger = logging.getLogger("fastapps_auth.metrics")

Kind = Literal["cache_entries", "jwks_age_seconds", "stage_stat"]

_HELP: dict[Kind, str] = {
    "cache_entries": "Entries in a stage's cache.",
    "jwks_age_seconds": "Age of a stage's key set.",
    "stage_stat": "Other numbers a stage reports.",
}
_LABELS: dict[Kind, list[str]] = {
    "cache_entries": ["stage", "cache"],
    "jwks_age_seconds": ["stage"],
    "stage_stat": ["stage", "stat"],
}
_MODES: dict[Kind, Literal["livesum", "livemax", "liveall"]] = {
    "cache_entries": "livesum",
    "jwks_age_seconds": "livemax",
    "stage_stat": "liveall",
}


def kind_of(stat: str) -> Kind:
    """``jwks_age*``; a cache's size (``cache_entries``, ``*cache*_size``, ``cached_*``); or anything else."""
    if "jwks_age" in stat:
        return "jwks_age_seconds"
    if stat.startswith("cached_") or ("cache" in stat and stat.endswith(("_entries", "_size"))):
        return "cache_entries"
    return "stage_stat"


class StatsGauges:
    """The attached chains (held weakly) and their gauges."""

    def __init__(self, prefix: str, *, multiprocess: bool) -> None:
        self.prefix = prefix
        self.multiprocess = multiprocess
        self.chains: weakref.WeakSet[VerifierChain] = weakref.WeakSet()
        self._gauges: dict[Kind, Gauge] = {}
        if multiprocess:
            self._gauges = {
                kind: Gauge(
                    f"{prefix}_{kind}", _HELP[kind], _LABELS[kind], multiprocess_mode=_MODES[kind], registry=None
                )
                for kind in _HELP
            }

    def attach(self, chain: VerifierChain) -> None:
        self.chains.add(chain)

    def collectors(self) -> list[Collector]:
        return list(self._gauges.values()) if self.multiprocess else [_StatsCollector(self)]

    def readings(self) -> Iterator[tuple[Kind, list[str], float]]:
        """(gauge, label values, value) of every attached chain's ``stats()``; a failing one is skipped."""
        for chain in list(self.chains):
            try:
                stats = chain.stats()
            except Exception as exc:  # a stage's stats() must not break the scrape
                logger.warning("stats() of %r failed during a scrape (%s)", chain.name, type(exc).__name__)
                continue
            for key, value in stats.items():
                stage, _, stat = key.partition(".")
                kind = kind_of(stat)
                yield kind, ([stage] if kind == "jwks_age_seconds" else [stage, stat]), value

    def publish(self) -> None:
        """Multiprocess mode: write this worker's readings to the shared directory."""
        for kind, labels, value in self.readings():
            self._gauges[kind].labels(*labels).set(value)


class _StatsCollector(Collector):
    """One process: the gauges built from the attached chains when scraped."""

    def __init__(self, gauges: StatsGauges) -> None:
        self._gauges = gauges

    def describe(self) -> Iterable[Metric]:
        return self._families().values()

    def collect(self) -> Iterable[Metric]:
        families = self._families()
        for kind, labels, value in self._gauges.readings():
            families[kind].add_metric(labels, value)
        return families.values()

    def _families(self) -> dict[Kind, GaugeMetricFamily]:
        p = self._gauges.prefix
        return {kind: GaugeMetricFamily(f"{p}_{kind}", _HELP[kind], labels=_LABELS[kind]) for kind in _HELP}
