"""Moved to ``fastapps_auth.observers.sinks``; this import path keeps working."""

from fastapps_auth.observers.sinks import LoggingSink, Sink, StreamSink, StreamTarget, StructlogSink

#: The old name of the sink protocol.
AuditSink = Sink

__all__ = ["AuditSink", "LoggingSink", "Sink", "StreamSink", "StreamTarget", "StructlogSink"]
