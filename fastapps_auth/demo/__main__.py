"""``python -m fastapps_auth.demo``, the same as ``fastapps-auth demo``."""

from fastapps_auth.demo import run

raise SystemExit(run())
