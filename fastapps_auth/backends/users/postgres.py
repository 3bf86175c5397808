"""The PostgreSQL user store: asyncpg's own pool for lookups, and a LISTEN connection for changes.

Each lookup is one ``fetchrow`` on a pooled connection, the whole of it (waiting for a
connection, dialling one, the query) bounded by ``timeout``. The pool opens on first use,
or at ``start()``, and after a failed open is opened again by the next lookup.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import asyncpg

from fastapps_auth.backends.users.base import (
    PROBE_KEY,
    StoreUnavailable,
    UserStoreOptions,
    describe,
    scheme_of,
)
from fastapps_auth.backends.users.listener import PostgresListener
from fastapps_auth.errors import ConfigError

POSTGRES_SCHEMES = ("postgresql", "postgres")

#: Errors that mean the connection (not the query) failed.
BROKEN: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,
    OSError,
)


async def _light_reset(_con: asyncpg.Connection) -> None:
    """The pool's ``reset`` hook for a connection that only ever ran the one read: nothing to undo.

    asyncpg still rolls back an open transaction itself before calling it.
    """


def _hint(exc: BaseException) -> str:
    if isinstance(exc, asyncpg.UndefinedTableError):
        return " (create the users table, or set the user-status query option)"
    if isinstance(exc, asyncpg.UndefinedColumnError):
        return " (the query names a column the table lacks)"
    if isinstance(exc, asyncpg.InvalidSQLStatementNameError):
        return " (PgBouncer in transaction or statement mode? set statement_cache_size = 0)"
    return ""


class PostgresUserStore:
    """Runs the user query on an ``asyncpg.create_pool`` pool; optionally LISTENs for changes."""

    notifies: ClassVar[bool] = True

    def __init__(self, options: UserStoreOptions, *, stage: str | None = None) -> None:
        listen_dsn, key = options.listen_dsn, "listen_dsn"
        if listen_dsn is not None:
            if scheme_of(listen_dsn) not in POSTGRES_SCHEMES:
                raise ConfigError("listen_dsn is a postgresql:// DSN", stage=stage, key=key)
            if options.notify_channel is None:
                raise ConfigError("listen_dsn is where notify_channel is listened to: set both", stage=stage, key=key)
        self.options = options
        self.query = options.query
        self.timeout = options.timeout
        self._pool: asyncpg.Pool | None = None
        self._opening = asyncio.Lock()
        self._listener: PostgresListener | None = None
        self.closed = False
        self.lookups = 0
        self.queries = 0
        self.failures = 0

    # -- lookups ------------------------------------------------------------------------------------

    async def fetch(self, key: str) -> Mapping[str, Any] | None:
        """The first row of the query for ``key`` (``$1``), or ``None``. Failures are ``StoreUnavailable``."""
        if self._listener is not None:
            self._listener.ensure_running()
        try:
            # One timer for the whole lookup. acquire(timeout=) would bound only the wait for a
            # connection, at the cost of a task per lookup (asyncio.wait_for on Python 3.11).
            async with asyncio.timeout(self.timeout):
                pool = self._pool if self._pool is not None else await self._open()
                try:
                    row = await self._fetchrow(pool, key)
                except BROKEN:
                    if self.closed:
                        raise
                    # A pooled connection the server dropped (a restart, a failover) is replaced by
                    # the pool: one more try, within the same timeout, usually succeeds.
                    row = await self._fetchrow(pool, key)
        except Exception as exc:
            self.failures += 1
            raise self._unavailable(exc) from None
        self.lookups += 1
        return row

    async def _fetchrow(self, pool: asyncpg.Pool, key: str) -> dict[str, Any] | None:
        async with pool.acquire() as con:
            row = await con.fetchrow(self.query, key)
        self.queries += 1
        return None if row is None else dict(row.items())

    async def _open(self) -> asyncpg.Pool:
        """Create the pool (``pool_min_size`` connections); a failed open leaves nothing behind."""
        async with self._opening:
            if self._pool is not None:
                return self._pool
            if self.closed:
                raise StoreUnavailable("the user store is closed")
            o = self.options
            pool = asyncpg.create_pool(
                o.dsn,
                min_size=o.pool_min_size,
                max_size=o.pool_max_size,
                reset=_light_reset if o.pool_reset == "light" else None,
                statement_cache_size=o.statement_cache_size,
                timeout=o.timeout,  # to dial one connection
                command_timeout=o.timeout,  # also bounds asyncpg's cancelling of a query that overran
            )
            await pool
            if self.closed:  # aclose() ran while the pool was opening
                pool.terminate()
                raise StoreUnavailable("the user store is closed")
            self._pool = pool
            return pool

    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        """The transient failure a lookup reports for ``exc``: one line, without the DSN or its password."""
        dsn = self.options.dsn
        if isinstance(exc, StoreUnavailable):
            return StoreUnavailable(*exc.args)
        if isinstance(exc, TimeoutError):
            return StoreUnavailable(f"PostgreSQL user lookup timed out after {self.timeout:g}s")
        if self.closed:
            return StoreUnavailable("the user store is closed")
        if isinstance(exc, BROKEN):
            return StoreUnavailable(f"PostgreSQL is unreachable: {describe(exc, dsn)}")
        if isinstance(exc, asyncpg.PostgresError):  # the server answered with an error
            return StoreUnavailable(f"user query failed on PostgreSQL: {describe(exc, dsn)}{_hint(exc)}")
        return StoreUnavailable(f"PostgreSQL lookup failed: {describe(exc, dsn)}")

    # -- LISTEN --------------------------------------------------------------------------------------

    def listen(self, channel: str, on_key: Callable[[str], None], on_reset: Callable[[], None]) -> None:
        """Listen on ``channel`` (at ``listen_dsn``, else ``dsn``) from ``start`` or the first lookup on."""
        o = self.options
        self._listener = PostgresListener(o.listen_dsn or o.dsn, channel, on_key, on_reset, timeout=o.timeout)

    async def wait_listening(self, within: float) -> bool:
        if self._listener is None or self.closed:
            return False
        self._listener.ensure_running()
        return await self._listener.wait_connected(within)

    # -- lifecycle -----------------------------------------------------------------------------------

    async def start(self) -> None:
        if self.closed:
            return
        if self._listener is not None:
            self._listener.ensure_running()
        try:
            async with asyncio.timeout(self.timeout * 2):
                await self._open()
        except Exception as exc:
            raise self._unavailable(exc) from None

    async def probe(self) -> None:
        """Open the pool and run the query once; with a channel, check that LISTEN works at ``listen_dsn``."""
        if self.closed:
            raise StoreUnavailable("the user store is closed")
        await self.fetch(PROBE_KEY)
        if self._listener is not None:
            await self._listener.probe()

    async def aclose(self) -> None:
        """Stop the listener and close the pool; lookups still in flight get their ``timeout``, then are cut."""
        self.closed = True
        if self._listener is not None:
            await self._listener.aclose()
        async with self._opening:
            pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            async with asyncio.timeout(self.timeout):
                await pool.close()
        except Exception:  # lookups still in flight past their timeout: cut them (close() cuts on cancellation)
            pool.terminate()

    def stats(self) -> dict[str, float]:
        pool = self._pool
        out: dict[str, float] = {
            "lookups": self.lookups,
            "queries": self.queries,
            "failures": self.failures,
            "pool_size": pool.get_size() if pool is not None else 0,
            "pool_idle": pool.get_idle_size() if pool is not None else 0,
        }
        if self._listener is not None:
            out.update(self._listener.stats())
        return out
