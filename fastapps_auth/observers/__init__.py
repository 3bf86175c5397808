"""Observers: they see every decision exactly once, after it is made, and can never change it.

``audit`` (a structured log event per decision), ``metrics`` (Prometheus, multiprocess-aware)
and ``otel`` (an OpenTelemetry span per decision). Each is registered, like every stage, in
the ``fastapps_auth.stages`` entry-point group. ``metrics`` and ``otel`` need their extras, so
they are imported only when used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapps_auth.observers.audit import AuditObserver

if TYPE_CHECKING:
    from fastapps_auth.observers.metrics import MetricsObserver
    from fastapps_auth.observers.otel import OTelObserver

__all__ = ["AuditObserver", "MetricsObserver", "OTelObserver"]


def __getattr__(name: str) -> Any:
    if name == "MetricsObserver":
        from fastapps_auth.observers.metrics import MetricsObserver

        return MetricsObserver
    if name == "OTelObserver":
        from fastapps_auth.observers.otel import OTelObserver

        return OTelObserver
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
