"""Reaching the real PostgreSQL and Redis; in CI a missing service fails the test, elsewhere skips it."""

from __future__ import annotations

import os
import socket

import pytest

PG_HOST, PG_PORT = "127.0.0.1", 5432
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379

HOW_TO_START = {
    "PostgreSQL": "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
    "Redis": (
        'redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no '
        "--dir /var/lib/redis --logfile /var/log/redis/ci.log"
    ),
}


def services_required() -> bool:
    """True in CI (.ci/run sets FASTAPPS_AUTH_REQUIRE_SERVICES=1): a missing service is a failure."""
    return os.environ.get("FASTAPPS_AUTH_REQUIRE_SERVICES", "") not in ("", "0", "false")


def reachable(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require_service(name: str, host: str, port: int) -> None:
    """Fail (CI) or skip (laptop) when ``name`` does not answer on host:port."""
    if reachable(host, port):
        return
    message = f"{name} is not reachable on {host}:{port}; start it with: {HOW_TO_START[name]}"
    if services_required():
        pytest.fail(message)
    pytest.skip(message)
