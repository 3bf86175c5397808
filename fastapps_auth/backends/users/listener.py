"""The PostgreSQL NOTIFY listener: one dedicated connection that LISTENs and reconnects by itself.

After every (re)connect it checks end to end that a notification sent to the server reaches
it, then reports the (re)connect, since notifications sent while it was away are lost. A
server that refuses LISTEN (a hot standby) or a pooler that cannot deliver notifications
(PgBouncer in transaction or statement mode) is reported once, at ERROR, and the listener
stops: retrying would not help, and cached answers then live at most their TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable
from typing import Any

import asyncpg

from fastapps_auth.backends.users.base import StoreUnavailable, describe

logger = logging.getLogger("fastapps_auth.postgres")

#: Seconds between health checks of a quiet connection (a silent network drop is noticed this late at most).
LISTEN_PING_INTERVAL = 10.0
LISTEN_BACKOFF = (0.1, 2.0)
#: How many ``timeout``s the delivery check waits for its own notification.
DELIVERY_WAIT = 5.0

#: Errors that mean the connection (not the server's answer) failed: worth a reconnect.
_CONNECTION_FAILED: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,
    OSError,
)


class ListenRefused(Exception):
    """Notifications cannot reach a connection at this DSN; reconnecting would not change that."""


async def _close(con: asyncpg.Connection, within: float) -> None:
    """Close ``con`` politely, or cut it if that takes longer than ``within`` seconds."""
    try:
        async with asyncio.timeout(within):
            await con.close()
    except BaseException as exc:
        con.terminate()
        if not isinstance(exc, Exception):  # cancelled: cut, and let the cancellation go on
            raise


async def _first(*events: asyncio.Event, within: float) -> None:
    """Return when one of ``events`` is set; ``TimeoutError`` after ``within`` seconds."""
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        done, _ = await asyncio.wait(waits, timeout=within, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
    if not done:
        raise TimeoutError


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
        #: Set when the listener gave up (``refused`` says why) or was closed.
        self.stopped = asyncio.Event()
        self.refused: str | None = None
        self.connects = 0
        self.notifications = 0
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def ensure_running(self) -> None:
        if self._task is None and not self._closed and self.refused is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"listen:{self.channel}")

    async def wait_connected(self, within: float) -> bool:
        """True once connected; False if it gave up, or that takes longer than ``within`` seconds."""
        with contextlib.suppress(TimeoutError):
            await _first(self.connected, self.stopped, within=within)
        return self.connected.is_set()

    def stats(self) -> dict[str, float]:
        return {
            "listener_connected": float(self.connected.is_set()),
            "listener_connects": self.connects,
            "listener_refused": float(self.refused is not None),
            "notifications": self.notifications,
        }

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

    # -- connecting, and checking that notifications arrive ----------------------------------------

    async def _dial(self) -> asyncpg.Connection:
        # No statement cache: the listener repeats no statement, and a pooler may not keep prepared ones.
        async with asyncio.timeout(self.timeout * 2):
            return await asyncpg.connect(self._dsn, timeout=self.timeout, statement_cache_size=0)

    async def _listening(self, on_notify: Callable[..., None], lost: asyncio.Event) -> asyncpg.Connection:
        """A connection that LISTENs on the channel and was shown to receive notifications."""
        con = await self._dial()
        try:
            con.add_termination_listener(lambda _c: lost.set())
            async with asyncio.timeout(self.timeout * 2):
                await self._listen(con, self.channel, on_notify)
            await self._check_delivery(con, lost)
        except BaseException:
            con.terminate()
            raise
        return con

    async def _listen(self, con: asyncpg.Connection, channel: str, callback: Callable[..., None]) -> None:
        try:
            await con.add_listener(channel, callback)
        except _CONNECTION_FAILED:
            raise
        except asyncpg.PostgresError as exc:  # the server answered: it will answer the same next time
            hint = (
                "a hot standby cannot LISTEN: point listen_dsn at the primary"
                if isinstance(exc, asyncpg.ReadOnlySQLTransactionError)
                else "point listen_dsn at a server that accepts LISTEN"
            )
            raise ListenRefused(f"the server refused LISTEN ({describe(exc, self._dsn)}); {hint}") from None

    async def _check_delivery(self, con: asyncpg.Connection, lost: asyncio.Event) -> None:
        """NOTIFY a channel of our own from a second connection; ``ListenRefused`` if it never arrives here.

        Behind PgBouncer in transaction mode LISTEN succeeds, but the server sends the notifications to
        whichever pooled connection ran it, so they never reach this client.
        """
        probe = f"fastapps_probe_{secrets.token_hex(8)}"
        arrived = asyncio.Event()

        def heard(*_: Any) -> None:
            arrived.set()

        async with asyncio.timeout(self.timeout * 2):
            await con.add_listener(probe, heard)
        sender = await self._dial()
        try:
            async with asyncio.timeout(self.timeout):
                await sender.execute(f"NOTIFY {probe}")  # our own random identifier, no outside input
        finally:
            await _close(sender, self.timeout)
        wait = DELIVERY_WAIT * self.timeout
        try:
            await _first(arrived, lost, within=wait)
        except TimeoutError:
            raise ListenRefused(
                f"a notification sent to this server did not arrive within {wait:g}s: PgBouncer in transaction "
                "or statement mode? point listen_dsn at PostgreSQL itself (or a session-mode pool)"
            ) from None
        if not arrived.is_set():
            raise ConnectionResetError("the LISTEN connection was lost")
        async with asyncio.timeout(self.timeout * 2):
            await con.remove_listener(probe, heard)

    async def probe(self) -> None:
        """Connect, LISTEN and check delivery once, on a connection of its own; ``StoreUnavailable`` if not."""
        lost = asyncio.Event()
        try:
            con = await self._listening(lambda *_: None, lost)
        except ListenRefused as exc:
            raise StoreUnavailable(f"LISTEN {self.channel}: {exc}") from None
        except Exception as exc:
            raise StoreUnavailable(f"LISTEN {self.channel}: cannot connect: {describe(exc, self._dsn)}") from None
        await _close(con, self.timeout)

    # -- the loop --------------------------------------------------------------------------------

    async def _run(self) -> None:
        delay, failing = self.backoff[0], False
        while not self._closed:
            lost = asyncio.Event()
            try:
                con = await self._listening(self._notified, lost)
            except ListenRefused as exc:
                self.refused = str(exc)
                logger.error(
                    "LISTEN %s: %s. Instant invalidation is off: cached answers live at most cache_ttl.",
                    self.channel,
                    exc,
                )
                self.stopped.set()
                return
            except Exception as exc:
                # Loud once per outage, quiet while it lasts (a retry every couple of seconds).
                logger.log(
                    logging.DEBUG if failing else logging.WARNING,
                    "LISTEN %s: cannot connect to PostgreSQL (%s); retrying in %.1fs",
                    self.channel,
                    describe(exc, self._dsn),
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
        self.stopped.set()
