"""Moved to ``fastapps_auth.testing.flow`` (a public helper now, with ``dpop=``); re-exported for older imports."""

from fastapps_auth.testing.flow import REDIRECT, Flow, pkce, redirect_params, register

__all__ = ["REDIRECT", "Flow", "pkce", "redirect_params", "register"]
