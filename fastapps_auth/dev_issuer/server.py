"""Serving an ASGI app with uvicorn on loopback, in a background thread or in the foreground.

The socket is bound before the app is built, so the app can know its own URL
(an issuer must put it in ``iss``) even when the port is picked by the OS.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any, Literal

import uvicorn

from fastapps_auth.endpoints import is_loopback

ASGIApp = Any


def bind(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A listening TCP socket on a loopback ``host``; ``port=0`` lets the OS choose."""
    if not is_loopback(host):
        raise ValueError(f"refusing to listen on {host!r}: the dev servers listen on loopback only")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and
    # without it a response written in two parts waits for the client's delayed ACK (about 40 ms).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError:
        sock.close()
        raise
    sock.listen(128)
    sock.setblocking(False)
    return sock


def url_of(sock: socket.socket, scheme: str = "http") -> str:
    host, port = sock.getsockname()[:2]
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


class BackgroundServer:
    """uvicorn serving ``app`` on loopback in a daemon thread with its own event loop.

    Works from sync and async code alike (tests, the demo). ``app`` may be a
    factory taking the server's base URL. ``on_stop`` coroutines run on the server's
    loop after it stops: close there what the app opened there (``chain.aclose``).
    ``ssl_certfile``/``ssl_keyfile`` serve https (a test's own certificate authority).
    """

    def __init__(
        self,
        app: ASGIApp | Callable[[str], ASGIApp],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        factory: bool = False,
        lifespan: Literal["auto", "on", "off"] = "auto",
        startup_timeout: float = 10.0,
        on_stop: Sequence[Callable[[], Awaitable[object]]] = (),
        ssl_certfile: str | None = None,
        ssl_keyfile: str | None = None,
    ) -> None:
        self._sock = bind(host, port)
        self.url = url_of(self._sock, "https" if ssl_certfile else "http")
        self.port: int = self._sock.getsockname()[1]
        try:
            self.app = app(self.url) if factory else app
        except BaseException:
            self._sock.close()
            raise
        self._config = uvicorn.Config(
            self.app,
            log_level="warning",
            lifespan=lifespan,
            access_log=False,
            ssl_certfile=ssl_certfile,
            ssl_keyfile=ssl_keyfile,
        )
        self._server = uvicorn.Server(self._config)
        self._worker: threading.Thread | None = None
        self._timeout = startup_timeout
        self._error: BaseException | None = None
        self._on_stop = tuple(on_stop)

    async def _serve(self) -> None:
        try:
            await self._server.serve(sockets=[self._sock])
        finally:
            # Close what the app opened on this loop (a chain's HTTP clients, pools) on this loop.
            for hook in self._on_stop:
                try:
                    await hook()
                except Exception as exc:
                    self._error = exc

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported by start()
            self._error = exc

    def start(self) -> BackgroundServer:
        """Start serving; returns once uvicorn accepts connections (at once if it already does)."""
        if self._worker is not None and self._worker.is_alive():
            return self  # a second thread would serve the same socket with the same server object
        self._worker = threading.Thread(target=self._run, name=f"uvicorn:{self.port}", daemon=True)
        self._worker.start()
        done = threading.Event()
        for _ in range(int(self._timeout / 0.01)):
            if self._server.started or not self._worker.is_alive():
                break
            done.wait(0.01)
        if not self._server.started:
            self.stop()
            raise RuntimeError(f"the server on {self.url} did not start") from self._error
        return self

    def stop(self) -> None:
        """Stop serving and wait for the thread (idempotent)."""
        self._server.should_exit = True
        if self._worker is not None and self._worker.is_alive():
            self._worker.join(timeout=self._timeout)
        self._worker = None
        self._sock.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def serve_forever(app: ASGIApp, sock: socket.socket) -> None:
    """Serve ``app`` on ``sock`` in the foreground until interrupted (the CLI's ``serve``)."""
    server = uvicorn.Server(uvicorn.Config(app, log_level="info", lifespan="auto"))
    asyncio.run(server.serve(sockets=[sock]))
