"""Bounded JSON over HTTP: what every call to an authorization server (JWKS, discovery, introspection,
token exchange) needs from an HTTP client, in one place.

Every request is checked against the endpoint policy first (https, except loopback), follows no
redirect, keeps and sends no cookie, finishes within one time limit for the whole exchange (connect,
headers and the slowest body), and reads at most ``max_bytes`` of body after decompression
(inflation stops at the limit: a small gzip bomb costs no more than the limit). The answer must be
JSON without ``NaN``/``Infinity``. Every failure is a ``FetchError`` with a one-line message that
holds the URL and what went wrong, never a header or a form value.

``httpx`` is imported on first use, so the core imports no HTTP client at module level.
"""

from __future__ import annotations

import asyncio
import json
import zlib
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import TYPE_CHECKING, Any, Protocol

from fastapps_auth.endpoints import check_url
from fastapps_auth.strict_json import reject_constant

if TYPE_CHECKING:
    import httpx

__all__ = ["FetchError", "JSONClient", "JSONResponse"]


class FetchError(Exception):
    """A fetch that failed: endpoint policy, transport, time limit, HTTP status, size, encoding or content."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        #: The HTTP status when the server answered one that was not accepted.
        self.status = status


@dataclass(frozen=True, slots=True)
class JSONResponse:
    """A JSON answer: its HTTP status (one of those accepted), the parsed body and the response headers."""

    status: int
    data: Any
    headers: Mapping[str, str]


class JSONClient:
    """One ``httpx.AsyncClient`` per event loop, used only for bounded JSON requests.

    ``keepalive=False`` (the default) closes each connection after its answer: calls that come
    minutes apart (key sets) gain nothing from a pooled connection, and a pool left on a finished
    event loop would hold open sockets nobody can close. A client for frequent calls
    (introspection) may keep connections.
    """

    def __init__(
        self,
        *,
        timeout: float,
        max_bytes: int,
        allow_insecure_http: bool = False,
        keepalive: bool = False,
        user_agent: str = "fastapps-auth",
        max_connections: int | None = None,
        parse: Callable[[bytes], Any] | None = None,
    ) -> None:
        if not timeout > 0 or max_bytes < 1 or (max_connections is not None and max_connections < 1):
            raise ValueError("timeout, max_bytes and max_connections must be positive")
        #: Most connections open at once (more requests wait for one, within ``timeout``); ``None``: no bound.
        self.max_connections = max_connections
        #: Parses each body (e.g. ``strict_json.json_object``); a ``ValueError`` from it is "not valid JSON".
        #: ``None``: ``json.loads`` refusing ``NaN``/``Infinity``.
        self.parse = parse
        self.timeout = float(timeout)
        self.max_bytes = max_bytes
        self.allow_insecure_http = allow_insecure_http
        self.keepalive = keepalive
        self.user_agent = user_agent
        #: Requests sent (for stats).
        self.requests = 0
        #: Set by ``aclose()``: no request is sent and no client is opened after it.
        self.closed = False
        self._client: httpx.AsyncClient | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None

    async def get(self, url: str, *, loopback_http: bool = True, accept: Collection[int] = (200,)) -> JSONResponse:
        """``GET url`` as JSON. ``loopback_http=False``: plain http is refused even to loopback."""
        return await self._request("GET", url, None, None, loopback_http, accept)

    async def post_form(
        self,
        url: str,
        form: Mapping[str, str],
        *,
        headers: Mapping[str, str] | None = None,
        loopback_http: bool = True,
        accept: Collection[int] = (200,),
    ) -> JSONResponse:
        """``POST url`` with an ``application/x-www-form-urlencoded`` body (RFC 7662, RFC 8693), as JSON.

        ``headers`` (e.g. ``Authorization`` for ``client_secret_basic``) are sent as given and never
        appear in an error. ``accept`` lists the statuses whose JSON body is returned rather than
        raised (an OAuth error answer is HTTP 400 with a JSON body).
        """
        return await self._request("POST", url, form, headers, loopback_http, accept)

    async def _request(
        self,
        method: str,
        url: str,
        form: Mapping[str, str] | None,
        headers: Mapping[str, str] | None,
        loopback_http: bool,
        accept: Collection[int],
    ) -> JSONResponse:
        import httpx

        try:
            check_url(url, allow_insecure_http=self.allow_insecure_http, loopback_http=loopback_http)
        except ValueError as exc:
            raise FetchError(str(exc)) from None
        client = self._http()
        self.requests += 1
        limit = self.max_bytes
        try:
            async with (
                asyncio.timeout(self.timeout),
                client.stream(method, url, data=form, headers=headers) as resp,
            ):
                if resp.status_code not in accept:
                    raise FetchError(f"{url} answered HTTP {resp.status_code}", status=resp.status_code)
                declared = resp.headers.get("content-length")
                if declared is not None and declared.isdigit() and int(declared) > limit:
                    raise FetchError(f"{url}: response larger than {limit} bytes")
                inflate = _inflater(url, resp.headers.get("content-encoding"))
                body = bytearray()
                async for chunk in resp.aiter_raw():
                    if inflate is not None:
                        try:  # never more than one byte past the limit, however small the chunk
                            chunk = inflate.decompress(chunk, limit + 1 - len(body))
                        except zlib.error:
                            raise FetchError(f"{url}: invalid compressed body") from None
                    body += chunk
                    if len(body) > limit:
                        raise FetchError(f"{url}: response larger than {limit} bytes")
                if inflate is not None and not inflate.eof:
                    raise FetchError(f"{url}: truncated compressed body")
        except TimeoutError:
            raise FetchError(f"{url}: no answer within {self.timeout:g}s") from None
        except httpx.HTTPError as exc:
            raise FetchError(f"{url}: unreachable ({type(exc).__name__})") from None
        try:
            if self.parse is not None:
                data = self.parse(bytes(body))
            else:
                data = json.loads(body.decode("utf-8"), parse_constant=reject_constant)
        except (ValueError, RecursionError):
            raise FetchError(f"{url}: not valid JSON") from None
        return JSONResponse(resp.status_code, data, resp.headers)

    def _http(self) -> httpx.AsyncClient:
        if self.closed:
            raise FetchError("the HTTP client is closed")
        loop = asyncio.get_running_loop()
        if self._client is not None and self._client_loop is not loop:
            self._client = None  # made on another (now finished) event loop: its pool is unusable here
        if self._client is None:
            import httpx

            self._client_loop = loop
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.timeout),
                follow_redirects=False,
                limits=httpx.Limits(
                    max_connections=self.max_connections,
                    max_keepalive_connections=min(20, self.max_connections or 20) if self.keepalive else 0,
                ),
                # A server's cookies are neither kept nor sent back: no state, no jar growing per fetch.
                cookies=CookieJar(DefaultCookiePolicy(allowed_domains=[])),
                # Only what _request inflates within max_bytes (httpx would inflate a whole chunk first).
                headers={"Accept": "application/json", "Accept-Encoding": "gzip", "User-Agent": self.user_agent},
            )
        return self._client

    async def aclose(self) -> None:
        """Close the client; later requests fail with ``FetchError`` and open nothing. Safe to call twice."""
        self.closed = True
        client, self._client = self._client, None
        if client is not None and self._client_loop is asyncio.get_running_loop():
            await client.aclose()  # a client of a finished loop cannot be closed from this one: dropped


class _Inflater(Protocol):
    @property
    def eof(self) -> bool: ...

    def decompress(self, data: bytes, /, max_length: int = 0) -> bytes: ...


def _inflater(url: str, encoding: str | None) -> _Inflater | None:
    """A zlib decompressor for a gzip or deflate body, ``None`` for identity; other codings are refused."""
    coding = (encoding or "identity").strip().lower()
    if coding == "identity":
        return None
    if coding in ("gzip", "x-gzip", "deflate"):
        return zlib.decompressobj(32 + zlib.MAX_WBITS)  # zlib or gzip header, detected
    raise FetchError(f"{url}: unsupported Content-Encoding {coding[:40]!r}")
