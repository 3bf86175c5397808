"""The RFC 7662 client: find the introspection endpoint, ask it about a token, return its JSON object.

The endpoint is configured, or discovered from the issuer's metadata (OIDC, then RFC 8414) under
the jwt stage's rule: the metadata's ``issuer`` must equal the configured issuer exactly, and the
endpoint must be https unless the issuer itself is on loopback. Discovery runs once (one request in
flight however many tokens wait for it) and backs off after a failure. Requests go through
``JSONClient`` (https except loopback, bounded body, one time limit, no redirects), authenticate
the client with ``client_secret_basic`` or ``client_secret_post``, and send
``token_type_hint=access_token``. Anything but HTTP 200 with a JSON object whose ``active`` is a
boolean is a ``FetchError``: it says nothing about the token. So is an answer that ``strict_json``
refuses: one that two readers could read differently (a member name twice, at any depth:
``{"active": false, "active": true}``), or that no encoder can write back (a lone UTF-16 surrogate).
At most ``max_connections`` requests are in flight at once; a member whose value is the token itself
(an endpoint that echoes it) is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Literal

from fastapps_auth.backends.client_auth import client_authentication
from fastapps_auth.backends.discovery import discover_endpoint
from fastapps_auth.backends.http_json import FetchError, JSONClient
from fastapps_auth.clock import Clock
from fastapps_auth.strict_json import json_object

#: Longest wait before discovery is tried again after it failed, seconds (it doubles from 1 s).
MAX_DISCOVERY_BACKOFF = 60.0


class IntrospectionClient:
    """Asks one authorization server's introspection endpoint about tokens, as one confidential client."""

    def __init__(
        self,
        *,
        client_id: str,
        client_secret: str,
        clock: Clock,
        endpoint: str | None = None,
        issuer: str | None = None,
        auth_method: Literal["client_secret_basic", "client_secret_post"] = "client_secret_basic",
        timeout: float = 5.0,
        max_bytes: int = 65536,
        allow_insecure_http: bool = False,
        max_connections: int = 50,
    ) -> None:
        if endpoint is None and issuer is None:
            raise ValueError("an introspection client needs the endpoint or an issuer to discover it from")
        self.endpoint = endpoint
        self.issuer = issuer
        self.clock = clock
        self.allow_insecure_http = allow_insecure_http
        self.http = JSONClient(
            timeout=timeout,
            max_bytes=max_bytes,
            allow_insecure_http=allow_insecure_http,
            keepalive=True,
            max_connections=max_connections,
            parse=json_object,  # no member name twice (readers would disagree), no lone surrogate
        )
        form, self._headers = client_authentication(client_id, client_secret, auth_method)
        self._form: dict[str, str] = {"token_type_hint": "access_token", **form}
        self.failures = 0
        self.last_error: str | None = None
        self._retry_at = float("-inf")
        self._discovery: asyncio.Task[str] | None = None

    async def introspect(self, token: str) -> dict[str, Any]:
        """The endpoint's answer about ``token``: a JSON object whose ``active`` is a boolean."""
        url = self.endpoint or await self.discover()
        resp = await self.http.post_form(url, {"token": token, **self._form}, headers=self._headers)
        data = resp.data
        if type(data) is not dict:
            raise FetchError(f"{url}: the answer is not a JSON object")
        if type(data.get("active")) is not bool:
            raise FetchError(f"{url}: the answer has no boolean 'active'")
        if token in data.values():
            data = {k: v for k, v in data.items() if v != token}
        return data

    async def discover(self) -> str:
        """The endpoint from the issuer's metadata; one discovery in flight, backing off after a failure."""
        if self.endpoint is not None:
            return self.endpoint
        task = self._discovery
        if task is None:
            if self.clock.monotonic() < self._retry_at:
                raise FetchError(f"discovery failed recently ({self.last_error})")
            task = self._discovery = asyncio.get_running_loop().create_task(self._discover())
            task.add_done_callback(self._discovered)
        return await asyncio.shield(task)

    def _discovered(self, task: asyncio.Task[str]) -> None:
        self._discovery = None
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            self.failures, self.last_error = 0, None
            return
        self.failures += 1
        self.last_error = str(exc)[:300]
        self._retry_at = self.clock.monotonic() + min(MAX_DISCOVERY_BACKOFF, 2.0 ** (self.failures - 1))

    async def _discover(self) -> str:
        assert self.issuer is not None
        self.endpoint = await discover_endpoint(
            self.http, self.issuer, "introspection_endpoint", allow_insecure_http=self.allow_insecure_http
        )
        return self.endpoint

    async def aclose(self) -> None:
        """Cancel a discovery in flight and close the HTTP client. Safe to call twice."""
        task, self._discovery = self._discovery, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        await self.http.aclose()
