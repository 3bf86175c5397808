"""Moved to ``fastapps_auth.backends.ratelimit.memory``; this name keeps working for one release."""

from fastapps_auth.backends.ratelimit.memory import *  # noqa: F403
