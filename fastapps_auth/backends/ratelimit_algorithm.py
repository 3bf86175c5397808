"""Moved to ``fastapps_auth.backends.ratelimit.algorithm``; this name keeps working for one release."""

from fastapps_auth.backends.ratelimit.algorithm import *  # noqa: F403
