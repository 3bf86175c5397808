"""RFC 8693 token exchange at an authorization server, cached until shortly before each token expires.

``TokenExchange.exchange(subject_token, audience=..., scope=...)`` posts ``grant_type =
urn:ietf:params:oauth:grant-type:token-exchange`` with the user's access token as the subject token,
authenticated as the configured client (``client_secret_basic`` or ``client_secret_post``, by
``backends.client_auth``, as introspection is), and returns the issued access token.

Answers are cached per (SHA-256 of the subject token, audience, scope, resource) in a bounded
``cachetools.TLRUCache`` on the injected clock, each until ``early_expiry`` seconds before its
``expires_in`` (at most half its life); an answer without ``expires_in`` is not cached. Concurrent
exchanges of the same key share one request. The HTTP is ``backends.http_json.JSONClient``'s:
https except loopback, no redirects, bounded body and time; discovery is ``backends.discovery``'s.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cachetools import TLRUCache

from fastapps_auth.backends.client_auth import client_authentication
from fastapps_auth.backends.discovery import discover_endpoint
from fastapps_auth.backends.http_json import FetchError, JSONClient
from fastapps_auth.clock import SYSTEM_CLOCK, Clock
from fastapps_auth.downstream.errors import (
    DISCOVERY_FAILED,
    INVALID_RESPONSE,
    NOT_CONFIGURED,
    TIMEOUT,
    UNREACHABLE,
    DownstreamError,
)
from fastapps_auth.endpoints import check_url
from fastapps_auth.fingerprint import token_digest

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
#: Longest token accepted from the authorization server, and longest error description repeated.
MAX_TOKEN_CHARS = 16_384
MAX_DESCRIPTION_CHARS = 300
_ANY_STATUS = range(200, 600)

CacheKey = tuple[bytes, str, str, str]


@dataclass(frozen=True, slots=True)
class _Cached:
    token: str = ""
    fresh_until: float = 0.0

    def __repr__(self) -> str:
        return f"_Cached(fresh_until={self.fresh_until})"  # never the token


def _ttu(_key: CacheKey, value: _Cached, _now: float) -> float:
    return value.fresh_until


def scope_text(scope: str | Sequence[str] | None) -> str:
    """A scope parameter: space-separated, each scope once, in the order given."""
    items = scope.split() if isinstance(scope, str) else list(scope or ())
    return " ".join(dict.fromkeys(items))


def _clean(text: object) -> str:
    """An authorization server's ``error_description``, printable and short (it goes into exception messages)."""
    if not isinstance(text, str):
        return ""
    return "".join(c if c.isprintable() else "?" for c in text[:MAX_DESCRIPTION_CHARS])


class TokenExchange:
    """Exchanges a user's access token for one for another audience, at ``token_endpoint`` (or discovered).

    Give ``issuer_url`` (the token endpoint is found by ``backends.discovery``: OIDC discovery, then
    RFC 8414 metadata, whose ``issuer`` must equal it exactly) or ``token_endpoint``. ``timeout``
    bounds each exchange, discovery included.
    """

    def __init__(
        self,
        *,
        client_id: str,
        client_secret: str,
        issuer_url: str | None = None,
        token_endpoint: str | None = None,
        auth_method: str = "client_secret_basic",
        timeout: float = 5.0,
        cache_size: int = 1024,
        early_expiry: float = 30.0,
        clock: Clock = SYSTEM_CLOCK,
        allow_insecure_http: bool = False,
        max_bytes: int = 64 * 1024,
    ) -> None:
        if (issuer_url is None) == (token_endpoint is None):
            raise ValueError("give issuer_url (discovery) or token_endpoint, not both and not neither")
        if not client_id or not client_secret:
            raise ValueError("client_id and client_secret are required (token exchange authenticates the client)")
        client_authentication(client_id, client_secret, auth_method)  # ValueError for another method
        if not (math.isfinite(timeout) and timeout > 0) or not (math.isfinite(early_expiry) and early_expiry >= 0):
            raise ValueError("timeout must be positive and early_expiry not negative (seconds)")
        if cache_size < 1:
            raise ValueError("cache_size must be at least 1")
        for url in (issuer_url, token_endpoint):
            if url is not None:
                check_url(url, allow_insecure_http=allow_insecure_http)
        self.issuer_url = issuer_url  # the metadata's issuer must equal it exactly (RFC 8414 §3.3)
        self._endpoint = token_endpoint
        self.client_id = client_id
        self._secret = client_secret
        self.auth_method = auth_method
        self.timeout = float(timeout)
        self.early_expiry = float(early_expiry)
        self.clock = clock
        # The client's own limit is a backstop: the exchange's asyncio.timeout decides, so a timeout is a timeout.
        self._http = JSONClient(
            timeout=2 * self.timeout,
            max_bytes=max_bytes,
            allow_insecure_http=allow_insecure_http,
            keepalive=True,
        )
        self._cache: TLRUCache[CacheKey, _Cached] = TLRUCache(cache_size, _ttu, timer=clock.time)
        self._inflight: dict[CacheKey, asyncio.Future[str]] = {}
        self.hits = 0
        self.misses = 0
        self.closed = False

    def __repr__(self) -> str:
        where = self._endpoint or self.issuer_url
        return f"TokenExchange({where!r}, client_id={self.client_id!r}, auth_method={self.auth_method!r})"

    async def exchange(
        self,
        subject_token: str,
        *,
        audience: str | None = None,
        scope: str | Sequence[str] | None = None,
        resource: str | None = None,
    ) -> str:
        """An access token for ``audience``/``resource`` with ``scope``, on behalf of ``subject_token``'s subject."""
        if self.closed:
            raise DownstreamError(NOT_CONFIGURED, "this token exchange was closed (aclose)")
        scopes = scope_text(scope)
        key: CacheKey = (token_digest(subject_token), audience or "", scopes, resource or "")
        while True:
            cached = self._cache.get(key)
            if cached is not None:
                self.hits += 1
                return cached.token
            pending = self._inflight.get(key)
            if pending is None:
                break
            try:  # the same exchange is under way: its answer (or its error) is this one's too
                token = await asyncio.shield(pending)
            except asyncio.CancelledError:
                if pending.cancelled() and not _cancelling():
                    continue  # the exchange we waited on was cancelled, not us: try again
                raise
            self.hits += 1
            return token
        self.misses += 1
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        future.add_done_callback(lambda f: f.cancelled() or f.exception())  # no "never retrieved" warning
        self._inflight[key] = future
        try:
            token, lifetime = await self._request(subject_token, audience, scopes, resource)
        except Exception as exc:
            future.set_exception(exc)
            raise
        except BaseException:
            future.cancel()
            raise
        finally:
            del self._inflight[key]
        if lifetime is not None:
            fresh = lifetime - min(self.early_expiry, lifetime / 2)
            self._cache[key] = _Cached(token, self.clock.time() + fresh)
        future.set_result(token)
        return token

    async def _request(
        self, subject_token: str, audience: str | None, scope: str, resource: str | None
    ) -> tuple[str, float | None]:
        form = {
            "grant_type": GRANT_TYPE,
            "subject_token": subject_token,
            "subject_token_type": ACCESS_TOKEN_TYPE,
            "requested_token_type": ACCESS_TOKEN_TYPE,
        }
        if audience:
            form["audience"] = audience
        if scope:
            form["scope"] = scope
        if resource:
            form["resource"] = resource
        credentials, headers = client_authentication(self.client_id, self._secret, self.auth_method)
        form.update(credentials)
        try:
            async with asyncio.timeout(self.timeout):
                endpoint = await self.token_endpoint()
                response = await self._http.post_form(endpoint, form, headers=headers, accept=_ANY_STATUS)
        except TimeoutError:
            raise DownstreamError(
                TIMEOUT, f"the authorization server did not answer within {self.timeout:g}s", transient=True
            ) from None
        except FetchError as exc:  # its message names the URL and what went wrong, never a form value
            code = UNREACHABLE if "unreachable" in str(exc) else INVALID_RESPONSE  # else: too large, not JSON...
            raise DownstreamError(code, str(exc), transient=True) from None
        return _answer(response.status, response.data)

    async def token_endpoint(self) -> str:
        """The token endpoint: configured, or discovered once from ``issuer_url``'s metadata."""
        if self._endpoint is not None:
            return self._endpoint
        assert self.issuer_url is not None
        try:
            self._endpoint = await discover_endpoint(
                self._http, self.issuer_url, "token_endpoint", allow_insecure_http=self._http.allow_insecure_http
            )
        except FetchError as exc:
            raise DownstreamError(DISCOVERY_FAILED, str(exc), transient=True) from None
        return self._endpoint

    def clear(self) -> None:
        """Forget every cached token."""
        self._cache.clear()

    async def aclose(self) -> None:
        self.closed = True
        self._cache.clear()
        await self._http.aclose()

    def stats(self) -> dict[str, float]:
        return {
            "cache_entries": float(len(self._cache)),
            "cache_hits": float(self.hits),
            "exchanges": float(self.misses),
        }


def _cancelling() -> bool:
    """Whether the current task is being cancelled (rather than the future it awaited)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _answer(status: int, data: Any) -> tuple[str, float | None]:
    """The token and its lifetime from a token endpoint's answer; ``DownstreamError`` for an error or garbage."""
    if not isinstance(data, dict):
        raise DownstreamError(INVALID_RESPONSE, f"the token endpoint answered HTTP {status} without a JSON object")
    if status != 200:
        error = data.get("error")
        code = error if isinstance(error, str) and error.isascii() and 0 < len(error) <= 64 else f"http_{status}"
        transient = status >= 500 or code == "temporarily_unavailable"
        raise DownstreamError(
            code, _clean(data.get("error_description")) or f"HTTP {status}", status=status, transient=transient
        )
    token = data.get("access_token")
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_CHARS or not token.isascii():
        raise DownstreamError(INVALID_RESPONSE, "the token endpoint's answer has no usable access_token", status=200)
    token_type = data.get("token_type")
    if not isinstance(token_type, str) or token_type.lower() not in ("bearer", "n_a"):
        # A DPoP-bound token would need this server's own proof with every use: not what a caller can send.
        raise DownstreamError(INVALID_RESPONSE, f"unusable token_type {_clean(token_type)!r}", status=200)
    expires_in = data.get("expires_in")
    if isinstance(expires_in, int | float) and not isinstance(expires_in, bool) and 0 < expires_in < math.inf:
        return token, float(expires_in)
    return token, None
