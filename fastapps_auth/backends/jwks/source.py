"""Where the JWT stage's keys come from: a static key set, or a JWKS fetched over HTTP.

The remote source discovers the ``jwks_uri`` (OIDC, then RFC 8414), caches the
key set for its ``Cache-Control: max-age`` (clamped, and shortened by a random
``jitter`` fraction so that workers started together do not refresh together),
refreshes at most once per ``min_refresh_interval`` when an unknown ``kid`` shows
up, shares one in-flight fetch between all waiters (single flight), keeps the
last good keys when a refresh fails (stale-if-error) and retries with
exponential backoff. Fetches go through ``JSONClient`` (bounded size and time,
no redirects, no cookies).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random as _random
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from fastapps_auth.backends.discovery import discover_endpoint
from fastapps_auth.backends.http_json import FetchError, JSONClient
from fastapps_auth.backends.jwks.keys import VerifyKey
from fastapps_auth.backends.jwks.keyset import KeySet, parse_jwks
from fastapps_auth.clock import Clock
from fastapps_auth.errors import TransientError

logger = logging.getLogger("fastapps_auth.jwks")

_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d+)\"?\s*(?:,|$)", re.IGNORECASE)
_NO_CACHE = re.compile(r"\bno-(?:store|cache)\b", re.IGNORECASE)


def cache_ttl(cache_control: str | None, *, default: float, minimum: float, maximum: float) -> float:
    """Seconds to keep a key set: ``max-age`` clamped to [minimum, maximum]; ``default`` without one."""
    if cache_control:
        if _NO_CACHE.search(cache_control):
            return minimum
        m = _MAX_AGE.search(cache_control)
        if m:
            return min(max(float(m.group(1)), minimum), maximum)
    return min(max(default, minimum), maximum)


class KeySource:
    """A source of the current ``KeySet``. The static one never changes and never does I/O."""

    closed = False

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

    async def probe(self) -> None:
        """Reach the key server once; raise ``FetchError`` with a one-line reason if keys cannot be had."""
        if not self.keys:
            raise FetchError("no usable key")

    async def aclose(self) -> None:
        """Release the HTTP client and cancel background work."""
        self.closed = True

    def stats(self) -> dict[str, float]:
        return {"keys": float(len(self.keys or ()))}


def static_source(keys: Sequence[VerifyKey]) -> KeySource:
    return KeySource(KeySet(keys))


class RemoteKeySource(KeySource):
    """A JWKS fetched over HTTP, with discovery, caching, single flight and stale-if-error.

    ``jitter``: a key set's lifetime is shortened by a random fraction of at most this much
    (``random()`` in [0, 1) times ``jitter``), so processes that loaded keys together spread their
    scheduled refreshes over the last ``jitter`` of the lifetime. ``random`` is injectable for tests.
    """

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
        jitter: float = 0.1,
        random: Callable[[], float] | None = None,
        allow_insecure_http: bool = False,
        http: JSONClient | None = None,
    ) -> None:
        if jwks_uri is None and issuer is None:
            raise ValueError("a remote key source needs jwks_uri or an issuer to discover it from")
        if not 0 <= jitter < 1:
            raise ValueError("jitter must be in [0, 1)")
        self.keys = None
        self.allowed = frozenset(allowed)
        self.clock = clock
        self.issuer = issuer
        self.jwks_uri = jwks_uri
        self.wait_timeout = wait_timeout
        self.default_ttl, self.min_ttl, self.max_ttl = default_ttl, min_ttl, max_ttl
        self.min_refresh_interval = min_refresh_interval
        self.max_backoff = max(max_backoff, min_refresh_interval)
        self.jitter = jitter
        self.random = random or _random.random
        self.allow_insecure_http = allow_insecure_http
        self.http = http or JSONClient(
            timeout=http_timeout, max_bytes=max_bytes, allow_insecure_http=allow_insecure_http
        )
        self.failures = 0
        self.last_error: str | None = None
        self._expires = 0.0
        self._next_allowed = float("-inf")
        self._loaded_at = 0.0
        self._task: asyncio.Task[KeySet] | None = None

    # -- the hot path -----------------------------------------------------------------------------

    def current(self) -> KeySet | None:
        keys = self.keys
        if keys is not None and self._task is None and not self.closed:
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
        if self.closed:
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
            keys, cache_control = await self._load()
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
        self._expires = started + ttl * (1.0 - self.jitter * self.random())
        self._next_allowed = started + self.min_refresh_interval
        return keys

    async def _load(self) -> tuple[KeySet, str | None]:
        """Discovery when needed, then the JWKS: its usable keys and its ``Cache-Control``."""
        uri = self.jwks_uri or await self._discover()
        resp = await self.http.get(uri)
        return parse_jwks(resp.data, self.allowed, strict=False), resp.headers.get("cache-control")

    async def _discover(self) -> str:
        assert self.issuer is not None
        self.jwks_uri = await discover_endpoint(
            self.http, self.issuer, "jwks_uri", allow_insecure_http=self.allow_insecure_http
        )
        return self.jwks_uri

    # -- lifecycle ------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the keys now. Never raises for an unreachable key server: logged once, retried on use."""
        try:
            await self.wait_keys()
        except TransientError as exc:
            if not self.failures:  # a failed refresh has logged itself; a slow one has not
                logger.warning("JWKS not loaded at start (%s); retrying on use", exc)

    async def probe(self) -> None:
        """Fetch the metadata (when discovering) and the key set once; ``FetchError`` names what failed."""
        if self.closed:
            raise FetchError("the key source is closed")
        keys, _ = await self._load()
        if not keys:
            algs = ", ".join(sorted(self.allowed))
            raise FetchError(f"{self.jwks_uri or self.issuer}: no usable key for the configured algorithms ({algs})")

    async def aclose(self) -> None:
        self.closed = True
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        await self.http.aclose()

    def stats(self) -> dict[str, float]:
        out = super().stats()
        out["jwks_fetches"] = float(self.http.requests)
        out["jwks_failures"] = float(self.failures)
        if self.keys is not None:
            out["jwks_age_seconds"] = self.clock.monotonic() - self._loaded_at
        return out


def _consume(task: asyncio.Task[Any]) -> None:
    """Retrieve a background refresh's exception so asyncio does not report it as lost."""
    if not task.cancelled():
        task.exception()
