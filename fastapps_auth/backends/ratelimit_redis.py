"""Moved to ``fastapps_auth.backends.ratelimit.redis``; this name keeps working for one release."""

from fastapps_auth.backends.ratelimit.redis import *  # noqa: F403
