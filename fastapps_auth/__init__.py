"""fastapps-auth: composable bearer-token verification for MCP servers.

Layers (imports flow one way, top to bottom):
``integrations`` → ``chain``/``config``/``registry``/``cli`` → ``stages`` → ``backends`` →
core types (``errors``, ``clock``, ``decision``, ``request``, ``component``, ``stage``, ``runner``, ``observer``,
``keys``, ``scope_policy``).
"""

from __future__ import annotations

from fastapps_auth.access_token import AccessToken
from fastapps_auth.chain import AnyOf, VerifierChain, run_stage
from fastapps_auth.clock import Clock, FixedClock, ManualClock, SystemClock
from fastapps_auth.config import chain_from_config
from fastapps_auth.decision import Decision, RateLimitInfo, StageTrace
from fastapps_auth.errors import ConfigError, PluginError, Rejected, TransientError
from fastapps_auth.fingerprint import fingerprint
from fastapps_auth.observer import Observer
from fastapps_auth.request import RequestInfo, request_context
from fastapps_auth.scope_policy import ScopePolicy
from fastapps_auth.stage import Stage, StageOptions, Verification

__all__ = [
    "AccessToken",
    "AnyOf",
    "Clock",
    "ConfigError",
    "Decision",
    "FixedClock",
    "ManualClock",
    "Observer",
    "PluginError",
    "RateLimitInfo",
    "Rejected",
    "RequestInfo",
    "ScopePolicy",
    "Stage",
    "StageOptions",
    "StageTrace",
    "SystemClock",
    "TransientError",
    "Verification",
    "VerifierChain",
    "chain_from_config",
    "fingerprint",
    "request_context",
    "run_stage",
]

__version__ = "0.1.0"
