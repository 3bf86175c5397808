"""The embedded user store: one SQLite file read through aiosqlite (development and the demo).

The file is opened read-write without ``create``: a missing file is a clear error at
first use instead of a silently created empty database.
"""

from __future__ import annotations

import asyncio
import os
import re
import sqlite3
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote, unquote

import aiosqlite

from fastapps_auth.backends.users.base import PROBE_KEY, StoreUnavailable, UserStoreOptions
from fastapps_auth.errors import ConfigError

MEMORY = ":memory:"


def sqlite_path(dsn: str, *, stage: str | None = None) -> str:
    """The file path in ``sqlite:///relative.db``, ``sqlite:////abs/path.db`` or ``sqlite:///:memory:``."""
    head, sep, rest = dsn.partition("://")
    if not sep or head.lower() != "sqlite":
        raise ConfigError("a SQLite DSN starts with sqlite:///", stage=stage, key="dsn")
    if "?" in rest or "#" in rest:
        raise ConfigError("options in a SQLite DSN are not supported (write sqlite:///path.db)", stage=stage, key="dsn")
    if not rest.startswith("/"):
        raise ConfigError(
            "a SQLite DSN has no host: write sqlite:///relative.db or sqlite:////absolute/path.db",
            stage=stage,
            key="dsn",
        )
    path = unquote(rest[1:])
    if not path:
        raise ConfigError("the SQLite DSN names no file (write sqlite:///users.db)", stage=stage, key="dsn")
    return path


def create_demo_database(path: str | os.PathLike[str], users: Mapping[str, tuple[bool, bool]] | None = None) -> Path:
    """Create (or refill) a SQLite users table for development and the demo: id -> (active, banned)."""
    rows = users if users is not None else {"alice": (True, False), "bob": (False, False), "mallory": (True, True)}
    target = Path(path)
    with sqlite3.connect(target) as db:
        db.execute(
            "CREATE TABLE IF NOT EXISTS users "
            "(id TEXT PRIMARY KEY, active BOOLEAN NOT NULL DEFAULT 1, banned BOOLEAN NOT NULL DEFAULT 0)"
        )
        db.executemany(
            "INSERT OR REPLACE INTO users (id, active, banned) VALUES (?, ?, ?)",
            [(k, bool(a), bool(b)) for k, (a, b) in rows.items()],
        )
    db.close()
    return target


def to_sqlite_placeholders(query: str) -> str:
    """``$1`` (the PostgreSQL placeholder) becomes ``?1``; the value stays a bound parameter."""
    return re.sub(r"\$1(?!\d)", "?1", query)


class SqliteUserStore:
    """Runs the user query on one aiosqlite connection, opened on first use.

    Of the options it reads ``dsn``, ``query`` and ``timeout``; the PostgreSQL ones do not apply.
    """

    notifies: ClassVar[bool] = False

    def __init__(self, options: UserStoreOptions, *, stage: str | None = None) -> None:
        self.path = sqlite_path(options.dsn, stage=stage)
        self.query = to_sqlite_placeholders(options.query)
        self.timeout = options.timeout
        self._conn: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        self.closed = False
        self.queries = 0
        self.failures = 0

    def _where(self) -> str:
        return self.path if self.path == MEMORY else str(Path(self.path).resolve())

    async def _open(self) -> aiosqlite.Connection:
        async with self._lock:
            if self._conn is not None:
                return self._conn
            if self.closed:
                raise StoreUnavailable("the user store is closed")
            if self.path == MEMORY:
                target, uri = MEMORY, False
            else:
                if not await asyncio.to_thread(os.path.isfile, self.path):
                    raise StoreUnavailable(
                        f"SQLite user database not found: {self._where()} "
                        "(create it with a users table, or point the user-status dsn elsewhere)"
                    )
                target, uri = f"file:{quote(self.path)}?mode=rw", True
            try:
                conn = _daemon(aiosqlite.connect(target, uri=uri, timeout=self.timeout))
                await conn
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"cannot open SQLite user database {self._where()}: {exc}") from None
            conn.row_factory = sqlite3.Row
            self._conn = conn
            return conn

    async def fetch(self, key: str) -> Mapping[str, Any] | None:
        """The first row of the query for ``key``, or ``None``."""
        try:
            async with asyncio.timeout(self.timeout):
                conn = self._conn or await self._open()
                rows = await conn.execute_fetchall(self.query, (key,))
        except TimeoutError:
            self.failures += 1
            raise StoreUnavailable(f"SQLite user lookup timed out after {self.timeout:g}s") from None
        except sqlite3.Error as exc:
            self.failures += 1
            raise StoreUnavailable(f"user query failed on SQLite {self._where()}: {exc}{_hint(exc)}") from None
        self.queries += 1
        for row in rows:
            return dict(zip(row.keys(), row, strict=True))
        return None

    def listen(self, channel: str, on_key: Callable[[str], None], on_reset: Callable[[], None]) -> None:
        raise NotImplementedError("SQLite cannot push changes")

    async def wait_listening(self, within: float) -> bool:
        return False

    async def start(self) -> None:
        await self._open()

    async def probe(self) -> None:
        await self.fetch(PROBE_KEY)

    async def aclose(self) -> None:
        self.closed = True
        async with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    def stats(self) -> dict[str, float]:
        return {"queries": self.queries, "failures": self.failures, "open": float(self._conn is not None)}


def _hint(exc: sqlite3.Error) -> str:
    text = str(exc)
    if text.startswith("no such table"):
        return " (create the users table, or set the user-status query option)"
    if text.startswith("no such column"):
        return " (the query names a column the table lacks)"
    return ""


def _daemon(conn: aiosqlite.Connection) -> aiosqlite.Connection:
    """``conn`` with its worker thread (not started yet) made a daemon.

    aiosqlite's thread would otherwise keep the interpreter from exiting when a chain was never
    closed (a script, a notebook): it only reads, so nothing is lost when it stops with the process.
    """
    thread = getattr(conn, "_thread", None)
    if isinstance(thread, threading.Thread) and not thread.is_alive():
        thread.daemon = True
    return conn
