"""PostgreSQL-side servers a test starts for itself: PgBouncer, and a primary with a hot standby.

Each runs from its own temporary directory on free loopback ports, as its own process, and is
stopped by that process (never by name). As root, the servers run as the ``postgres`` user
(neither PostgreSQL nor PgBouncer runs as root).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from glob import glob
from pathlib import Path
from typing import Any

import pytest

from tests.support.services import PG_HOST, PG_PORT, services_required

#: Bounded waits for a server to come up or go down; a hang guard, not a timing assertion.
STARTUP = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def binary(name: str, how: str) -> str:
    """The path of ``name`` (PATH, then PostgreSQL's own bin directory); fails in CI, skips elsewhere."""
    found = shutil.which(name) or next(iter(sorted(glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if found:
        return found
    message = f"{name} is not installed ({how})"
    if services_required():
        pytest.fail(message)
    pytest.skip(message)


def _as_server_user() -> dict[str, Any]:
    """``subprocess`` arguments that run a server as ``postgres`` when this process is root."""
    if os.geteuid() != 0:
        return {}
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("running as root without a postgres user to run a server as")
    return {"user": "postgres", "group": "postgres"}


def _workdir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="fastapps-auth-pg-"))
    if os.geteuid() == 0:
        shutil.chown(path, "postgres", "postgres")
    return path


def _wait_ready(port: int, proc: subprocess.Popen[bytes], log: Path, ready: str | None = None) -> None:
    """Until the port accepts connections (and ``log`` says ``ready``, for PostgreSQL's own start-up)."""
    deadline = time.monotonic() + STARTUP
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server on port {port} exited: {log.read_text(errors='replace')[-2000:]}")
        if ready is None or (log.exists() and ready in log.read_text(errors="replace")):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        time.sleep(0.05)
    raise RuntimeError(f"server on port {port} did not start within {STARTUP:g}s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=STARTUP)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=STARTUP)


@contextlib.contextmanager
def pgbouncer(pool_mode: str) -> Iterator[int]:
    """PgBouncer in ``pool_mode`` in front of the shared PostgreSQL (database ``test``); yields its port."""
    exe = binary("pgbouncer", "apt-get install pgbouncer")
    work, port = _workdir(), free_port()
    (work / "users.txt").write_text('"postgres" ""\n')
    (work / "pgbouncer.ini").write_text(
        f"[databases]\ntest = host={PG_HOST} port={PG_PORT} dbname=test user=postgres\n"
        f"[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nauth_type = trust\n"
        f"auth_file = {work}/users.txt\npool_mode = {pool_mode}\nunix_socket_dir =\n"
        f"logfile = {work}/pgbouncer.log\nignore_startup_parameters = extra_float_digits\n"
    )
    for f in work.iterdir():
        if os.geteuid() == 0:
            shutil.chown(f, "postgres", "postgres")
    proc = subprocess.Popen([exe, str(work / "pgbouncer.ini")], stdout=subprocess.DEVNULL, **_as_server_user())
    try:
        _wait_ready(port, proc, work / "pgbouncer.log")
        yield port
    finally:
        _stop(proc)
        shutil.rmtree(work, ignore_errors=True)


def _server(
    exe: str, data: Path, port: int, settings: list[str], log: Path, user: dict[str, Any]
) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen([exe, "-D", str(data), "-p", str(port), *settings], stdout=out, stderr=out, **user)


@contextlib.contextmanager
def hot_standby() -> Iterator[tuple[int, int]]:
    """A primary of its own and a hot standby streaming from it; yields (primary port, standby port)."""
    initdb = binary("initdb", "the PostgreSQL server package")
    postgres = binary("postgres", "the PostgreSQL server package")
    basebackup = binary("pg_basebackup", "the PostgreSQL client package")
    user = _as_server_user()
    work = _workdir()
    primary, standby = work / "primary", work / "standby"
    ports = free_port(), free_port()
    procs: list[subprocess.Popen[bytes]] = []
    quiet: dict[str, Any] = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, **user}
    try:
        subprocess.run([initdb, "-D", str(primary), "-A", "trust", "-U", "postgres", "--no-sync"], check=True, **quiet)
        with (primary / "pg_hba.conf").open("a") as hba:
            hba.write("host replication all 127.0.0.1/32 trust\n")
        settings = ["-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={work}", "-c", "fsync=off"]
        procs.append(_server(postgres, primary, ports[0], settings, work / "primary.log", user))
        _wait_ready(ports[0], procs[0], work / "primary.log", "ready to accept connections")
        source = ["-h", "127.0.0.1", "-p", str(ports[0]), "-U", "postgres"]
        subprocess.run([basebackup, *source, "-D", str(standby), "-R", "--no-sync"], check=True, **quiet)
        procs.append(_server(postgres, standby, ports[1], settings, work / "standby.log", user))
        _wait_ready(ports[1], procs[1], work / "standby.log", "ready to accept read-only connections")
        yield ports
    finally:
        for proc in reversed(procs):
            _stop(proc)
        shutil.rmtree(work, ignore_errors=True)
