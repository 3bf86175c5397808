"""A real HTTP server on 127.0.0.1 serving JWKS and discovery documents to tests and benchmarks.

It runs in a background thread (so synchronous clients such as ``fastapps.JWTVerifier``
work too), counts requests per path, records request headers (and POST bodies), and can rotate
keys, fail (HTTP 503), hang, answer slowly, drip a body byte by byte, send ``Cache-Control``,
any other header and oversized bodies. A POST is answered like a GET of the same path.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class JWKSServer:
    """``with JWKSServer() as srv: srv.set_jwks({...}); srv.url + "/jwks.json"``."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, bytes, dict[str, str]]] = {}
        self.hits: Counter[str] = Counter()
        self.delay = 0.0  # seconds before each answer
        self.status_override: int | None = None  # e.g. 503: every path fails
        self.hang = False  # accept, then never answer (until stop)
        self.drip: float | None = None  # send the headers, then one body byte per this many seconds
        self.request_headers: list[dict[str, str]] = []  # of every request, in order
        self.request_bodies: list[bytes] = []  # of every POST, in order
        self._release = threading.Event()
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                with server._lock:
                    server.hits[path] += 1
                    server.request_headers.append({k.lower(): v for k, v in self.headers.items()})
                if server.hang:
                    server._release.wait(30)
                    return
                if server.delay:
                    server._release.wait(server.delay)
                status, body, headers = server.routes.get(path, (404, b'{"error":"not found"}', {}))
                if server.status_override is not None:
                    status, body, headers = server.status_override, b'{"error":"down"}', {}
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                if server.drip is None:
                    self.wfile.write(body)
                    return
                for i in range(len(body)):
                    if server._release.wait(server.drip):
                        return
                    self.wfile.write(body[i : i + 1])
                    self.wfile.flush()

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(min(length, 1 << 20))
                with server._lock:
                    server.request_bodies.append(body)
                self.do_GET()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread: threading.Thread | None = None

    # -- content ------------------------------------------------------------------------------------

    def set_json(self, path: str, doc: Any, *, status: int = 200, cache_control: str | None = None) -> None:
        headers = {"Cache-Control": cache_control} if cache_control else {}
        self.routes[path] = (status, json.dumps(doc).encode(), headers)

    def set_raw(self, path: str, body: bytes, *, status: int = 200) -> None:
        self.routes[path] = (status, body, {})

    def set_jwks(
        self, keys: list[dict[str, Any]], *, path: str = "/jwks.json", cache_control: str | None = None
    ) -> str:
        """Serve ``{"keys": keys}`` at ``path``; returns its URL."""
        self.set_json(path, {"keys": keys}, cache_control=cache_control)
        return self.url + path

    def serve_discovery(
        self, *, kind: str = "oidc", issuer: str | None = None, issuer_path: str = "", jwks_path: str = "/jwks.json"
    ) -> str:
        """Serve OIDC (``kind="oidc"``) or RFC 8414 (``"oauth"``) metadata; returns the issuer."""
        issuer_value = issuer if issuer is not None else self.url + issuer_path
        meta = {"issuer": issuer_value, "jwks_uri": self.url + jwks_path}
        if kind == "oidc":
            self.set_json(f"{issuer_path.rstrip('/')}/.well-known/openid-configuration", meta)
        else:
            self.set_json(f"/.well-known/oauth-authorization-server{issuer_path.rstrip('/')}", meta)
        return self.url + issuer_path

    def count(self, path: str = "/jwks.json") -> int:
        with self._lock:
            return self.hits[path]

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self.hits.values())

    # -- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> JWKSServer:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, name="jwks-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> JWKSServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_until(predicate: Any, timeout: float = 5.0) -> bool:
    """Poll ``predicate`` (for background work to land); not a timed assertion, a bounded wait."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return bool(predicate())
