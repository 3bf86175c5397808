"""The PostgreSQL user store: a small pool of asyncpg connections, and a LISTEN connection.

Connections are dialled on first use and the pool heals itself: a connection that failed
or timed out is terminated and a new one is dialled on the next acquire. asyncpg prepares
each statement once per connection and reuses it. Concurrent lookups are batched
(``batcher``, ``postgres_batch``). The listener is a dedicated connection that reconnects
with backoff and reports every (re)connect, since notifications may have been lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

import asyncpg

from fastapps_auth.backends.batcher import Batcher
from fastapps_auth.backends.deadlines import Deadlines
from fastapps_auth.backends.postgres_batch import ORDINAL, BatchQuery, batch_query, confirm
from fastapps_auth.backends.users import (
    DEFAULT_BATCH_INFLIGHT,
    DEFAULT_BATCH_MAX_SIZE,
    PoolReset,
    StoreUnavailable,
)

logger = logging.getLogger("fastapps_auth.postgres")

Row = dict[str, Any]
_A = TypeVar("_A")
_T = TypeVar("_T")

#: Seconds between listener health checks (a silent network drop is noticed this late at most).
LISTEN_PING_INTERVAL = 10.0
LISTEN_BACKOFF = (0.1, 2.0)


#: Errors that mean the connection (not the query) failed.
_BROKEN: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,
    OSError,
)


def _hint(exc: BaseException) -> str:
    if isinstance(exc, asyncpg.UndefinedTableError):
        return " (create the users table, or set the user-status query option)"
    if isinstance(exc, asyncpg.UndefinedColumnError):
        return " (the query names a column the table lacks)"
    return ""


def _describe(exc: BaseException, dsn: str = "") -> str:
    """Exception class and first line, without the DSN or its password (a driver may echo them)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if dsn:
        text = text.replace(dsn, "<dsn>")
        try:
            password = urlsplit(dsn).password
        except ValueError:
            password = None
        if password:
            text = text.replace(password, "***")
    return f"{type(exc).__name__}: {text}"[:200] if text else type(exc).__name__


class ConnectionPool:
    """At most ``max_size`` asyncpg connections, reused last-in first-out, dialled on demand.

    Deliberately small: ``acquire`` of an idle connection and ``release`` are plain list
    operations with no task, timer or proxy object, which the benchmark shows is several
    times the throughput of ``asyncpg.Pool`` for one short query under concurrency. A
    connection that is closed, or released as broken, is dropped and its slot freed, so the
    pool heals by dialling a new one when the database is back.
    """

    def __init__(self, connect: Callable[[], Awaitable[asyncpg.Connection]], *, max_size: int) -> None:
        self._connect = connect
        self.max_size = max_size
        self._idle: list[asyncpg.Connection] = []
        self._size = 0  # connections open or being dialled
        self._waiters: deque[asyncio.Future[asyncpg.Connection | None]] = deque()
        self._closed = False

    @property
    def size(self) -> int:
        return self._size

    @property
    def idle(self) -> int:
        return len(self._idle)

    def take_idle(self) -> asyncpg.Connection | None:
        """An idle open connection at once, or ``None`` (then ``acquire`` dials or waits)."""
        idle = self._idle
        while idle:
            con = idle.pop()
            if not con.is_closed():
                return con
            self._size -= 1
        return None

    async def acquire(self) -> asyncpg.Connection:
        """An open connection: an idle one, a new one if there is room, else the next one released."""
        while True:
            con = self.take_idle()
            if con is not None:
                return con
            if self._closed:
                raise StoreUnavailable("the user store is closed")
            if self._size < self.max_size:
                self._size += 1
                try:
                    return await self._connect()
                except BaseException:
                    self._size -= 1
                    self._hand_slot()
                    raise
            fut: asyncio.Future[asyncpg.Connection | None] = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            try:
                con = await fut
            except BaseException:
                if fut.done() and not fut.cancelled() and fut.exception() is None:
                    # Handed a connection, or a free slot (None), just as this waiter gave up: pass it on.
                    handed = fut.result()
                    if handed is not None:
                        self.release(handed)
                    else:
                        self._hand_slot()
                raise
            if con is not None:
                return con
            # None: a slot was freed; loop round to dial

    def release(self, con: asyncpg.Connection, *, broken: bool = False) -> None:
        """Give ``con`` back; a broken or closed one is terminated and its slot freed."""
        if broken or self._closed or con.is_closed():
            con.terminate()
            self._size -= 1
            self._hand_slot()
            return
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(con)
                return
        self._idle.append(con)

    def _hand_slot(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    async def fill(self, n: int) -> None:
        """Dial until ``n`` connections are open (the pool's warm-up)."""
        missing = min(n, self.max_size) - self._size
        if missing > 0 and not self._closed:
            await asyncio.gather(*(self._dial_idle() for _ in range(missing)))

    async def _dial_idle(self) -> None:
        self._size += 1
        try:
            con = await self._connect()
        except BaseException:
            self._size -= 1
            self._hand_slot()
            raise
        self.release(con)

    async def aclose(self, grace: float) -> None:
        """Refuse new work, fail the waiters, close idle connections (``grace`` seconds each)."""
        self._closed = True
        for fut in self._waiters:
            if not fut.done():
                fut.set_exception(StoreUnavailable("the user store is closed"))
        self._waiters.clear()
        idle, self._idle = self._idle, []
        for con in idle:
            self._size -= 1
            try:
                await asyncio.wait_for(con.close(), grace)
            except (Exception, asyncio.CancelledError):
                con.terminate()


class PostgresUserStore:
    """Runs the user query on a small pool of asyncpg connections; optionally LISTENs for changes.

    Concurrent lookups are batched (``Batcher``): a lookup that finds fewer than
    ``batch_inflight`` queries running sends its own one-key query at once; lookups that
    arrive while they run go out together as one many-key query (``postgres_batch``) when
    one finishes. A query whose shape cannot be batched safely keeps one query per lookup.
    """

    supports_notify = True

    def __init__(
        self,
        dsn: str,
        *,
        query: str,
        timeout: float = 1.0,
        min_size: int = 1,
        max_size: int = 10,
        reset: PoolReset = "light",
        batch_max_size: int = DEFAULT_BATCH_MAX_SIZE,
        batch_inflight: int = DEFAULT_BATCH_INFLIGHT,
    ) -> None:
        if min_size > max_size:
            raise ValueError("min_size is greater than max_size")
        self._dsn = dsn
        self.query = query
        self.timeout = timeout
        self.min_size = min_size
        self.max_size = max_size
        self.reset = reset
        self._pool = ConnectionPool(self._dial, max_size=max_size)
        self._closed = False
        self._listener: PostgresListener | None = None
        #: The confirmed many-key query; ``None`` until a first batch confirms it with the server.
        self._batch: BatchQuery | None = None
        self._deadlines = Deadlines(timeout)
        self._batcher: Batcher[str, Row | None] = Batcher(
            functools.partial(self._run, self._one_on),
            functools.partial(self._run, self._many_on),
            failure=self._unavailable,
            max_batch=batch_max_size,
            max_inflight=min(batch_inflight, max_size),
            batchable=self._carries,
            deadlines=self._deadlines,
        )
        if batch_query(query) is None:
            self._batcher.enabled = False
        self.lookups = 0
        self.queries = 0
        self.failures = 0

    async def _dial(self) -> asyncpg.Connection:
        return await asyncpg.connect(self._dsn, timeout=self.timeout)

    @property
    def coalesces(self) -> bool:
        """True while lookups are batched: those of one key waiting together share a slot of one query.

        False once the query is known not to batch, or with ``batch_max_size = 1``: one query per lookup.
        """
        return self._batcher.enabled

    async def fetch(self, key: str) -> Mapping[str, Any] | None:
        """The first row of the query for ``key`` (``$1``), or ``None``. Failures are ``StoreUnavailable``.

        Every path bounds its own time by ``timeout``: a query on an idle connection by a shared
        deadline that closes the connection, a lookup waiting for a batch by one that fails it,
        anything else (waiting for a connection, dialling, a retry) by ``asyncio.timeout``.
        """
        try:
            row = await self._batcher.load(key)
        except Exception as exc:
            self.failures += 1
            raise self._unavailable(exc) from None
        self.lookups += 1
        return row

    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        """The transient failure a lookup reports for ``exc`` (a fresh exception, without the DSN)."""
        if isinstance(exc, StoreUnavailable):
            return StoreUnavailable(*exc.args)
        if isinstance(exc, TimeoutError):
            return StoreUnavailable(f"PostgreSQL user lookup timed out after {self.timeout:g}s")
        if isinstance(exc, asyncio.CancelledError):
            return StoreUnavailable("the user store is closed")
        if isinstance(exc, _BROKEN):
            return StoreUnavailable(f"PostgreSQL is unreachable: {_describe(exc, self._dsn)}")
        if isinstance(exc, asyncpg.PostgresError):  # the server answered with an error
            why = _describe(exc, self._dsn)
            return StoreUnavailable(f"user query failed on PostgreSQL: {why}{_hint(exc)}")
        return StoreUnavailable(f"PostgreSQL lookup failed: {_describe(exc, self._dsn)}")

    def _carries(self, key: str) -> bool:
        batch = self._batch
        if batch is not None:
            return batch.carries(key)
        return key.isascii() and "\x00" not in key  # safe on any server until it is confirmed

    # -- one key, many keys -----------------------------------------------------------------------

    async def _one_on(self, con: asyncpg.Connection, key: str) -> Row | None:
        row = await con.fetchrow(self.query, key)
        self.queries += 1
        return None if row is None else dict(row.items())

    async def _confirm_on(self, con: asyncpg.Connection, _: object = None) -> BatchQuery | None:
        """Confirm the many-key query with the server once; batching stops if it does not hold."""
        batch = self._batch = await confirm(con, self.query)
        if batch is None:
            logger.info("the user-status query cannot be batched safely; one query per lookup")
            self._batcher.enabled = False
        return batch

    async def _many_on(self, con: asyncpg.Connection, keys: Sequence[str]) -> list[Row | None]:
        batch = self._batch or await self._confirm_on(con)
        if batch is None:
            return [await self._one_on(con, k) for k in keys]
        rows = await con.fetch(batch.sql, list(keys))
        self.queries += 1
        out: list[Row | None] = [None] * len(keys)
        for r in rows:
            row = dict(r.items())
            i = row.pop(ORDINAL) - 1
            if out[i] is None:  # the first row, as fetchrow would take
                out[i] = row
        return out

    # -- running on a pooled connection, within the timeout -----------------------------------------

    async def _run(self, work: Callable[[asyncpg.Connection, _A], Awaitable[_T]], arg: _A) -> _T:
        """``work(con, arg)`` on a pooled connection, within ``timeout``."""
        con = self._pool.take_idle()
        if con is None:
            async with asyncio.timeout(self.timeout):
                return await self._attempt(work, arg, retry=True)
        deadline = self._deadlines.start(con.terminate)
        try:
            return await self._use(con, work, arg)
        except BaseException as exc:
            if deadline.expired and not isinstance(exc, asyncio.CancelledError):
                raise TimeoutError from None  # the deadline closed the connection under the query
            if not isinstance(exc, _BROKEN):
                raise
        finally:
            self._deadlines.finish(deadline)
        async with asyncio.timeout_at(deadline.at):
            return await self._attempt(work, arg, retry=False)

    async def _attempt(self, work: Callable[[asyncpg.Connection, _A], Awaitable[_T]], arg: _A, *, retry: bool) -> _T:
        try:
            return await self._use(await self._pool.acquire(), work, arg)
        except _BROKEN:
            if not retry:
                raise
        # A pooled connection the server dropped (restart, failover, network): the pool dials a
        # fresh one, so one more try (within the same timeout) usually succeeds.
        return await self._use(await self._pool.acquire(), work, arg)

    async def _use(
        self, con: asyncpg.Connection, work: Callable[[asyncpg.Connection, _A], Awaitable[_T]], arg: _A
    ) -> _T:
        """``work(con, arg)``, then give ``con`` back to the pool (closed if its state is unknown)."""
        pool = self._pool
        try:
            result = await work(con, arg)
            if self.reset == "full":
                await con.reset()
        except asyncpg.PostgresError as exc:
            pool.release(con, broken=isinstance(exc, _BROKEN))
            raise
        except BaseException:  # timeout, cancellation, I/O error: the connection's state is unknown
            pool.release(con, broken=True)
            raise
        pool.release(con)
        return result

    # -- LISTEN ----------------------------------------------------------------------------

    def listen(self, channel: str, on_key: Callable[[str], None], on_reset: Callable[[], None]) -> None:
        """Register the invalidation callbacks; the listener connects on ``start`` or first lookup."""
        self._listener = PostgresListener(self._dsn, channel, on_key, on_reset, timeout=self.timeout)

    async def wait_listening(self, within: float) -> bool:
        if self._listener is None:
            return False
        self._listener.ensure_running()
        return await self._listener.wait_connected(within)

    @property
    def listener(self) -> PostgresListener | None:
        return self._listener

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        if self._listener is not None:
            self._listener.ensure_running()
        try:
            async with asyncio.timeout(self.timeout * 2):
                await self._pool.fill(max(1, self.min_size))
        except TimeoutError:
            raise StoreUnavailable(f"PostgreSQL did not answer within {self.timeout * 2:g}s") from None
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreUnavailable(f"PostgreSQL is unreachable: {_describe(exc, self._dsn)}") from None
        if self._batcher.enabled and self._batch is None:
            try:
                await self._run(self._confirm_on, None)
            except Exception as exc:  # a missing table, say: the first batch confirms it instead
                logger.debug("batch query not confirmed at start: %s", _describe(exc, self._dsn))

    def ensure_listening(self) -> None:
        """Start the listener task if there is one and it is not running (cheap; called per lookup miss)."""
        if self._listener is not None and not self._closed:
            self._listener.ensure_running()

    async def aclose(self) -> None:
        self._closed = True
        await self._batcher.aclose(StoreUnavailable("the user store is closed"))
        if self._listener is not None:
            await self._listener.aclose()
        await self._pool.aclose(max(self.timeout, 1.0))

    def stats(self) -> dict[str, float]:
        pool = self._pool
        batcher = self._batcher
        out: dict[str, float] = {
            "lookups": self.lookups,
            "queries": self.queries,
            "failures": self.failures,
            "batches": batcher.batches,
            "batched_lookups": batcher.batched,
            "lookups_queued": batcher.queued,
            "pool_size": pool.size,
            "pool_idle": pool.idle,
        }
        if self._listener is not None:
            out["listener_connected"] = float(self._listener.connected.is_set())
            out["listener_connects"] = self._listener.connects
            out["notifications"] = self._listener.notifications
        return out


class PostgresListener:
    """A dedicated connection that LISTENs on ``channel`` and reconnects by itself.

    ``on_key(payload)`` for each notification; ``on_reset()`` after every successful
    (re)connect, because notifications sent while it was not listening are lost.
    """

    def __init__(
        self,
        dsn: str,
        channel: str,
        on_key: Callable[[str], None],
        on_reset: Callable[[], None],
        *,
        timeout: float = 1.0,
        ping_interval: float = LISTEN_PING_INTERVAL,
        backoff: tuple[float, float] = LISTEN_BACKOFF,
    ) -> None:
        self._dsn = dsn
        self.channel = channel
        self._on_key = on_key
        self._on_reset = on_reset
        self.timeout = timeout
        self.ping_interval = ping_interval
        self.backoff = backoff
        self.connected = asyncio.Event()
        self.connects = 0
        self.notifications = 0
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def ensure_running(self) -> None:
        if self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"listen:{self.channel}")

    async def wait_connected(self, within: float) -> bool:
        """True once connected, False if that takes longer than ``within`` seconds."""
        try:
            async with asyncio.timeout(within):
                await self.connected.wait()
        except TimeoutError:
            return False
        return True

    def _notified(self, _con: object, _pid: int, _channel: str, payload: str) -> None:
        self.notifications += 1
        key = payload.strip()
        try:
            if key == "*":
                self._on_reset()
                return
            if payload:
                self._on_key(payload)  # the id as sent: one with surrounding spaces is a user too
            if key and key != payload:
                self._on_key(key)  # and as trimmed, for a trigger or script that padded it
        except Exception:
            logger.exception("handling a notification on %r failed", self.channel)

    async def _run(self) -> None:
        delay, failing = self.backoff[0], False
        while not self._closed:
            con: asyncpg.Connection | None = None
            lost = asyncio.Event()
            try:
                async with asyncio.timeout(self.timeout * 2):
                    con = await asyncpg.connect(self._dsn, timeout=self.timeout)
                    con.add_termination_listener(lambda _c, ev=lost: ev.set())
                    await con.add_listener(self.channel, self._notified)
            except asyncio.CancelledError:
                if con is not None:
                    con.terminate()
                raise
            except Exception as exc:
                if con is not None:
                    con.terminate()
                # Loud once per outage, quiet while it lasts (a retry every couple of seconds).
                logger.log(
                    logging.DEBUG if failing else logging.WARNING,
                    "LISTEN %s: cannot connect to PostgreSQL (%s); retrying in %.1fs",
                    self.channel,
                    _describe(exc, self._dsn),
                    delay,
                )
                failing = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.backoff[1])
                continue
            delay, failing = self.backoff[0], False
            self.connects += 1
            if self.connects > 1:
                logger.info(
                    "LISTEN %s: reconnected; flushing the cache (notifications may have been lost)", self.channel
                )
            self._reset()
            self.connected.set()
            try:
                await self._watch(con, lost)
            finally:
                self.connected.clear()
                con.terminate()
            if not self._closed:
                logger.warning("LISTEN %s: connection lost; reconnecting", self.channel)

    def _reset(self) -> None:
        try:
            self._on_reset()
        except Exception:
            logger.exception("flushing after LISTEN %s (re)connected failed", self.channel)

    async def _watch(self, con: asyncpg.Connection, lost: asyncio.Event) -> None:
        """Return when the connection is lost (closed, or silent to a ping)."""
        while not lost.is_set() and not con.is_closed():
            try:
                async with asyncio.timeout(self.ping_interval):
                    await lost.wait()
                return
            except TimeoutError:
                pass
            try:
                async with asyncio.timeout(self.timeout):
                    await con.execute("SELECT 1")
            except Exception:
                return

    async def aclose(self) -> None:
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        self.connected.clear()
