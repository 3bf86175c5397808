"""Where the JWT stage's keys come from: a static key set, or a JWKS fetched over HTTP.

The remote source discovers the ``jwks_uri`` (OIDC, then RFC 8414), caches the
key set for its ``Cache-Control: max-age`` (clamped), refreshes at most once per
``min_refresh_interval`` when an unknown ``kid`` shows up, shares one in-flight
fetch between all waiters (single flight), keeps the last good keys when a
refresh fails (stale-if-error) and retries with exponential backoff. What a key
server sends is bounded: no redirects followed, no cookies kept, a time limit on
the whole fetch and a size limit on the body after decompression.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import zlib
from collections.abc import Iterable, Mapping, Sequence
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from fastapps_auth.backends.jwks_keys import KeyImportError, VerifyKey, key_from_jwk
from fastapps_auth.clock import Clock
from fastapps_auth.endpoints import check_url, is_loopback
from fastapps_auth.errors import TransientError

if TYPE_CHECKING:
    import httpx

logger = logging.getLogger("fastapps_auth.jwks")

#: Keys beyond this many in one key set are ignored: a token without ``kid`` tries each candidate.
MAX_KEYS = 50
#: Entries of a fetched key set examined at most: a set padded with junk costs bounded work and logging.
MAX_JWKS_ENTRIES = 1000
_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d+)\"?\s*(?:,|$)", re.IGNORECASE)


class KeySet:
    """Keys indexed for the hot path: by ``kid``, and by algorithm for tokens without one."""

    __slots__ = ("anonymous_by_alg", "by_alg", "by_kid", "keys")

    def __init__(self, keys: Iterable[VerifyKey]) -> None:
        self.keys: tuple[VerifyKey, ...] = tuple(keys)[:MAX_KEYS]
        self.by_kid: dict[str, tuple[VerifyKey, ...]] = {}
        by_alg: dict[str, list[VerifyKey]] = {}
        anonymous: dict[str, list[VerifyKey]] = {}
        for k in self.keys:
            if k.kid is not None:
                self.by_kid[k.kid] = (*self.by_kid.get(k.kid, ()), k)
            for alg in k.verifiers:
                by_alg.setdefault(alg, []).append(k)
                if k.kid is None:
                    anonymous.setdefault(alg, []).append(k)
        self.by_alg = {a: tuple(ks) for a, ks in by_alg.items()}
        self.anonymous_by_alg = {a: tuple(ks) for a, ks in anonymous.items()}

    def candidates(self, kid: str | None, alg: str) -> tuple[VerifyKey, ...]:
        """Keys to try for a token's ``kid``/``alg``; empty when none is known (an unknown key)."""
        if kid is None:
            return self.by_alg.get(alg, ())
        found = self.by_kid.get(kid)
        if found is not None:
            return found
        return self.anonymous_by_alg.get(alg, ())

    def __len__(self) -> int:
        return len(self.keys)


def parse_jwks(doc: Any, allowed: Iterable[str], *, strict: bool) -> KeySet:
    """A ``KeySet`` from a JWKS document. ``strict``: a bad key is an error, else it is skipped (logged)."""
    if not isinstance(doc, Mapping) or not isinstance(doc.get("keys"), list):
        raise KeyImportError('a JWKS must be an object with a "keys" list')
    allowed = frozenset(allowed)
    entries: list[Any] = doc["keys"]
    if not strict and len(entries) > MAX_JWKS_ENTRIES:
        logger.warning("JWKS has %d entries; only the first %d are examined", len(entries), MAX_JWKS_ENTRIES)
        entries = entries[:MAX_JWKS_ENTRIES]
    keys: list[VerifyKey] = []
    skipped: list[str] = []
    for i, jwk in enumerate(entries):
        if not strict and len(keys) == MAX_KEYS:
            logger.warning("JWKS has more than %d usable keys; only the first %d are used", MAX_KEYS, MAX_KEYS)
            break
        try:
            key = key_from_jwk(jwk, allowed)
        except KeyImportError as exc:
            if strict:
                raise KeyImportError(f"keys[{i}]: {exc}") from None
            skipped.append(f"keys[{i}]: {str(exc)[:120]}")
            continue
        if key is not None:
            keys.append(key)
    if skipped:  # one line per key set, however many bad keys it holds
        more = f" (and {len(skipped) - 3} more)" if len(skipped) > 3 else ""
        logger.warning("ignoring %d unusable JWKS key(s): %s%s", len(skipped), "; ".join(skipped[:3]), more)
    if len(keys) > MAX_KEYS:
        logger.warning("JWKS has %d usable keys; only the first %d are used", len(keys), MAX_KEYS)
    return KeySet(keys)


def discovery_urls(issuer: str) -> list[str]:
    """OIDC discovery (issuer + path), then RFC 8414 (well-known inserted before the issuer's path)."""
    parts = urlsplit(issuer)
    path = parts.path.rstrip("/")
    oidc = urlunsplit((parts.scheme, parts.netloc, f"{path}/.well-known/openid-configuration", "", ""))
    rfc8414 = urlunsplit((parts.scheme, parts.netloc, f"/.well-known/oauth-authorization-server{path}", "", ""))
    return [oidc, rfc8414]


def cache_ttl(cache_control: str | None, *, default: float, minimum: float, maximum: float) -> float:
    """Seconds to keep a key set: ``max-age`` clamped to [minimum, maximum]; ``default`` without one."""
    if cache_control:
        if re.search(r"\bno-(?:store|cache)\b", cache_control, re.IGNORECASE):
            return minimum
        m = _MAX_AGE.search(cache_control)
        if m:
            return min(max(float(m.group(1)), minimum), maximum)
    return min(max(default, minimum), maximum)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-JSON literal {name}")


class FetchError(Exception):
    """A fetch that failed: HTTP status, size, content or transport."""


class KeySource:
    """A source of the current ``KeySet``. The static one never changes and never does I/O."""

    def __init__(self, keys: KeySet) -> None:
        self.keys: KeySet | None = keys

    def current(self) -> KeySet | None:
        """The key set to use now, without waiting (a remote source may start a background refresh)."""
        return self.keys

    async def wait_keys(self) -> KeySet:
        """The key set, fetching it first if there is none yet."""
        assert self.keys is not None
        return self.keys

    async def refresh_unknown(self) -> KeySet | None:
        """After an unknown ``kid``: a refreshed key set, or ``None`` when no refresh may run now."""
        return None

    async def start(self) -> None:
        """Load the keys now rather than at the first token."""

    async def aclose(self) -> None:
        """Release the HTTP client and cancel background work."""

    def stats(self) -> dict[str, float]:
        return {"keys": float(len(self.keys or ()))}


class RemoteKeySource(KeySource):
    """A JWKS fetched over HTTP, with discovery, caching, single flight and stale-if-error."""

    def __init__(
        self,
        *,
        allowed: Iterable[str],
        clock: Clock,
        issuer: str | None = None,
        jwks_uri: str | None = None,
        http_timeout: float = 5.0,
        wait_timeout: float = 5.0,
        max_bytes: int = 256 * 1024,
        default_ttl: float = 600.0,
        min_ttl: float = 60.0,
        max_ttl: float = 86400.0,
        min_refresh_interval: float = 1.0,
        max_backoff: float = 60.0,
        allow_insecure_http: bool = False,
    ) -> None:
        if jwks_uri is None and issuer is None:
            raise ValueError("a remote key source needs jwks_uri or an issuer to discover it from")
        self.keys = None
        self.allowed = frozenset(allowed)
        self.clock = clock
        self.issuer = issuer
        self.jwks_uri = jwks_uri
        self.http_timeout = http_timeout
        self.wait_timeout = wait_timeout
        self.max_bytes = max_bytes
        self.default_ttl, self.min_ttl, self.max_ttl = default_ttl, min_ttl, max_ttl
        self.min_refresh_interval = min_refresh_interval
        self.max_backoff = max(max_backoff, min_refresh_interval)
        self.allow_insecure_http = allow_insecure_http
        self.fetches = 0
        self.failures = 0
        self.last_error: str | None = None
        self._expires = 0.0
        self._next_allowed = float("-inf")
        self._loaded_at = 0.0
        self._task: asyncio.Task[KeySet] | None = None
        self._client: httpx.AsyncClient | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    # -- the hot path -----------------------------------------------------------------------------

    def current(self) -> KeySet | None:
        keys = self.keys
        if keys is not None and self._task is None:
            now = self.clock.monotonic()
            if now >= self._expires and now >= self._next_allowed:
                self._spawn()  # stale-while-revalidate: the old keys answer meanwhile
        return keys

    async def wait_keys(self) -> KeySet:
        if self.keys is not None:
            return self.keys
        if self._task is None:
            if self.clock.monotonic() < self._next_allowed:
                raise TransientError(
                    f"no JWKS yet; last fetch failed ({self.last_error})", retry_after=self._retry_in()
                )
            self._spawn()
        return await self._wait()

    async def refresh_unknown(self) -> KeySet | None:
        if self._task is None:
            if self.clock.monotonic() < self._next_allowed:
                if self.failures:
                    # The endpoint is down: the key may exist, we cannot know. Transient, not a rejection.
                    raise TransientError(
                        f"unknown key and the JWKS endpoint is failing ({self.last_error})",
                        retry_after=self._retry_in(),
                    )
                return None
            self._spawn()
        return await self._wait()

    # -- fetching ------------------------------------------------------------------------------------

    def _retry_in(self) -> float:
        return max(0.0, self._next_allowed - self.clock.monotonic()) or self.min_refresh_interval

    def _spawn(self) -> None:
        if self._closed:
            raise TransientError("the key source is closed")
        task = asyncio.get_running_loop().create_task(self._refresh())
        task.add_done_callback(_consume)
        self._task = task

    async def _wait(self) -> KeySet:
        task = self._task
        assert task is not None
        try:
            return await asyncio.wait_for(asyncio.shield(task), self.wait_timeout)
        except TimeoutError:
            raise TransientError("timed out waiting for the JWKS", retry_after=self.min_refresh_interval) from None
        except asyncio.CancelledError:
            me = asyncio.current_task()
            if task.cancelled() and (me is None or not me.cancelling()):
                raise TransientError("the JWKS fetch was cancelled (source closing)") from None
            raise

    async def _refresh(self) -> KeySet:
        started = self.clock.monotonic()
        try:
            uri = self.jwks_uri or await self._discover()
            doc, cache_control = await self._get_json(uri)
            keys = parse_jwks(doc, self.allowed, strict=False)
        except Exception as exc:
            self.failures += 1
            self.last_error = f"{type(exc).__name__}: {exc}"[:300]
            backoff = min(self.max_backoff, self.min_refresh_interval * 2 ** (self.failures - 1))
            self._next_allowed = self.clock.monotonic() + backoff
            logger.warning(
                "JWKS refresh failed (%s); %s; retrying in %.1fs",
                self.last_error,
                "keeping the last good keys" if self.keys is not None else "no keys yet",
                backoff,
            )
            raise TransientError(f"JWKS refresh failed: {self.last_error}", retry_after=backoff) from None
        finally:
            self._task = None
        ttl = cache_ttl(cache_control, default=self.default_ttl, minimum=self.min_ttl, maximum=self.max_ttl)
        self.keys = keys
        self.failures = 0
        self.last_error = None
        self._loaded_at = started
        self._expires = started + ttl
        self._next_allowed = started + self.min_refresh_interval
        return keys

    async def _discover(self) -> str:
        assert self.issuer is not None
        last: Exception | None = None
        for url in discovery_urls(self.issuer):
            try:
                meta, _ = await self._get_json(url)
            except FetchError as exc:
                last = exc
                continue
            if not isinstance(meta, Mapping):
                raise FetchError(f"{url}: metadata is not a JSON object")
            if meta.get("issuer") != self.issuer:
                raise FetchError(f"{url}: metadata issuer does not equal the configured issuer")
            uri = meta.get("jwks_uri")
            if not isinstance(uri, str):
                raise FetchError(f"{url}: metadata has no jwks_uri")
            try:
                self.jwks_uri = check_url(
                    uri,
                    allow_insecure_http=self.allow_insecure_http,
                    loopback_http=is_loopback(urlsplit(self.issuer).hostname),
                )
            except ValueError as exc:
                raise FetchError(f"{url}: jwks_uri {exc}") from None
            return self.jwks_uri
        raise FetchError(f"discovery failed for {self.issuer}: {last}")

    def _http(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._client is not None and self._client_loop is not loop:
            self._client = None  # made on another (now finished) event loop: its pool is unusable here
        if self._client is None:
            import httpx

            self._client_loop = loop

            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.http_timeout),
                follow_redirects=False,
                # A key server's cookies are neither kept nor sent back: no state, no jar growing per fetch.
                cookies=CookieJar(DefaultCookiePolicy(allowed_domains=[])),
                # Only what _get_json inflates within max_bytes (httpx would inflate a whole chunk first).
                headers={"Accept": "application/json", "Accept-Encoding": "gzip", "User-Agent": "fastapps-auth"},
            )
        return self._client

    async def _get_json(self, url: str) -> tuple[Any, str | None]:
        """GET ``url`` as JSON within ``http_timeout`` in total and ``max_bytes`` of (inflated) body."""
        import httpx

        self.fetches += 1
        limit = self.max_bytes
        try:
            async with asyncio.timeout(self.http_timeout), self._http().stream("GET", url) as resp:
                if resp.status_code != 200:
                    raise FetchError(f"{url} answered HTTP {resp.status_code}")
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
                cache_control = resp.headers.get("cache-control")
        except TimeoutError:
            raise FetchError(f"{url}: no answer within {self.http_timeout}s") from None
        except httpx.HTTPError as exc:
            raise FetchError(f"{url}: {type(exc).__name__}") from None
        try:
            return json.loads(body.decode("utf-8"), parse_constant=_reject_constant), cache_control
        except (ValueError, RecursionError):
            raise FetchError(f"{url}: not valid JSON") from None

    # -- lifecycle ------------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.wait_keys()

    async def aclose(self) -> None:
        self._closed = True
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        client, self._client = self._client, None
        if client is not None and self._client_loop is asyncio.get_running_loop():
            await client.aclose()  # a client of a finished loop cannot be closed from this one: dropped

    def stats(self) -> dict[str, float]:
        out = super().stats()
        out["jwks_fetches"] = float(self.fetches)
        out["jwks_failures"] = float(self.failures)
        if self.keys is not None:
            out["jwks_age_seconds"] = self.clock.monotonic() - self._loaded_at
        return out


def _inflater(url: str, encoding: str | None) -> zlib._Decompress | None:
    """A zlib decompressor for a gzip or deflate body, ``None`` for identity; other codings are refused."""
    coding = (encoding or "identity").strip().lower()
    if coding == "identity":
        return None
    if coding in ("gzip", "x-gzip", "deflate"):
        return zlib.decompressobj(32 + zlib.MAX_WBITS)  # zlib or gzip header, detected
    raise FetchError(f"{url}: unsupported Content-Encoding {coding[:40]!r}")


def _consume(task: asyncio.Task[Any]) -> None:
    """Retrieve a background refresh's exception so asyncio does not report it as lost."""
    if not task.cancelled():
        task.exception()


def static_source(keys: Sequence[VerifyKey]) -> KeySource:
    return KeySource(KeySet(keys))
