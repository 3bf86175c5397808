"""Moved to ``fastapps_auth.observers.audit``; this import path keeps working."""

from fastapps_auth.observers.audit import EVENT, AuditObserver, AuditOptions, Renderer, decision_outcome

__all__ = ["EVENT", "AuditObserver", "AuditOptions", "Renderer", "decision_outcome"]
