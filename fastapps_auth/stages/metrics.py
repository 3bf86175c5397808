"""Moved to ``fastapps_auth.observers.metrics`` ; this import path keeps working."""

from fastapps_auth.observers.metrics import (
    DEFAULT_BUCKETS,
    OVERFLOW,
    MetricsApp,
    MetricsObserver,
    MetricsOptions,
    attach_chain,
    metrics_app,
    metrics_route,
    render_metrics,
)

__all__ = [
    "DEFAULT_BUCKETS",
    "OVERFLOW",
    "MetricsApp",
    "MetricsObserver",
    "MetricsOptions",
    "attach_chain",
    "metrics_app",
    "metrics_route",
    "render_metrics",
]
