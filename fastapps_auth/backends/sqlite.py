"""Kept importable for one release: the SQLite store now lives in ``fastapps_auth.backends.users.sqlite``."""

from fastapps_auth.backends.users.sqlite import create_demo_database

__all__ = ["create_demo_database"]
