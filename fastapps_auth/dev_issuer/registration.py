"""Clients that introduce themselves: dynamic client registration (RFC 7591) and client ID metadata documents.

A client ID metadata document (the MCP 2025-11-25 specification's preferred registration,
draft-ietf-oauth-client-id-metadata-document) is a JSON document at an ``https`` URL (or a
loopback ``http`` URL, in development) that is the client's ``client_id``. The issuer fetches it
once per ``ttl`` with a timeout and a size bound, and validates it like a registration.
"""

from __future__ import annotations

import asyncio
import secrets
import ssl
import threading
from typing import Any
from urllib.parse import urlsplit

import httpx
from cachetools import TTLCache

from fastapps_auth.clock import SYSTEM_CLOCK, Clock
from fastapps_auth.dev_issuer.clients import (
    AUTH_METHODS,
    AUTHORIZATION_CODE,
    CLIENT_CREDENTIALS,
    GRANT_TYPES,
    TOKEN_EXCHANGE,
    Client,
    check_redirect_uri,
)
from fastapps_auth.endpoints import check_url
from fastapps_auth.strict_json import Malformed, json_object

MAX_REDIRECT_URIS = 10
MAX_FIELD = 1000
#: Metadata echoed back in a registration response when the client sent it (RFC 7591 §2).
ECHOED = ("client_name", "client_uri", "logo_uri", "tos_uri", "policy_uri", "software_id", "software_version", "scope")


class RegistrationError(ValueError):
    """A registration or a metadata document the issuer refuses: an RFC 7591 error code and a description."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error
        self.description = description


def _strings(data: dict[str, Any], name: str, default: list[str]) -> list[str]:
    value = data.get(name, default)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RegistrationError("invalid_client_metadata", f"{name} must be a list of strings")
    return list(value)


def client_from_metadata(data: object, *, now: int, client_id: str | None = None) -> tuple[Client, dict[str, Any]]:
    """The client described by registration metadata, and the RFC 7591 §3.2.1 response for it.

    With ``client_id`` (a metadata document's URL) the client is public, as the draft requires.
    """
    document = client_id is not None
    if not isinstance(data, dict):
        raise RegistrationError("invalid_client_metadata", "client metadata is a JSON object")
    if document and data.get("client_id") != client_id:
        raise RegistrationError("invalid_client_metadata", "the document's client_id must be its own URL")
    if document and ("client_secret" in data or "client_secret_expires_at" in data):
        raise RegistrationError("invalid_client_metadata", "a client metadata document holds no client_secret")
    uris = _strings(data, "redirect_uris", [])
    if len(uris) > MAX_REDIRECT_URIS:
        raise RegistrationError("invalid_redirect_uri", f"at most {MAX_REDIRECT_URIS} redirect URIs")
    try:
        redirect_uris = tuple(check_redirect_uri(u) for u in uris)
    except ValueError as exc:
        raise RegistrationError("invalid_redirect_uri", str(exc)) from None
    grants = _strings(data, "grant_types", [AUTHORIZATION_CODE])
    unknown = sorted(set(grants) - set(GRANT_TYPES))
    if unknown:
        raise RegistrationError("invalid_client_metadata", f"unsupported grant_types: {', '.join(unknown)}")
    response_types = _strings(data, "response_types", ["code"] if AUTHORIZATION_CODE in grants else [])
    if set(response_types) - {"code"}:
        raise RegistrationError("invalid_client_metadata", 'the only response type is "code"')
    if AUTHORIZATION_CODE in grants and not redirect_uris:
        raise RegistrationError("invalid_redirect_uri", "the authorization_code grant needs redirect_uris")
    method = data.get("token_endpoint_auth_method", "none" if document else "client_secret_basic")
    if method not in AUTH_METHODS:
        raise RegistrationError(
            "invalid_client_metadata", f"token_endpoint_auth_method must be one of: {', '.join(AUTH_METHODS)}"
        )
    if document and method != "none":
        raise RegistrationError("invalid_client_metadata", 'a metadata document client authenticates with "none"')
    if method == "none" and {CLIENT_CREDENTIALS, TOKEN_EXCHANGE} & set(grants):
        raise RegistrationError(
            "invalid_client_metadata", "a public client cannot use client_credentials or token exchange"
        )
    echoed: dict[str, Any] = {}
    for name in ECHOED:
        value = data.get(name)
        if value is None:
            continue
        if not isinstance(value, str) or len(value) > MAX_FIELD:
            raise RegistrationError(
                "invalid_client_metadata", f"{name} must be a string of at most {MAX_FIELD} characters"
            )
        echoed[name] = value
    secret = "" if method == "none" else secrets.token_urlsafe(32)
    client = Client(
        client_id or f"dcr-{secrets.token_urlsafe(12)}",
        secret,
        None,  # a registered scope is what the client intends to ask for, not a limit (step-up asks for more)
        redirect_uris,
        frozenset(grants),
        str(method),
        echoed.get("client_name"),
        registered=not document,
        metadata_document=document,
        issued_at=now,
    )
    body: dict[str, Any] = {"client_id": client.client_id, "client_id_issued_at": now}
    if secret:
        body.update(client_secret=secret, client_secret_expires_at=0)
    body.update(
        redirect_uris=list(redirect_uris),
        grant_types=grants,
        response_types=response_types,
        token_endpoint_auth_method=method,
        **echoed,
    )
    return client, body


def is_metadata_url(client_id: str) -> bool:
    """Whether ``client_id`` names a client ID metadata document (rather than a registered client)."""
    return client_id.startswith(("https://", "http://"))


def check_client_id_url(client_id: str) -> str:
    """``client_id`` if it may name a metadata document: https (or loopback http) with a path, no fragment,
    no user info, no dot segments."""
    check_url(client_id)  # the one endpoint policy: plaintext only to loopback
    parts = urlsplit(client_id)
    if parts.path in ("", "/"):
        raise ValueError("a client ID URL has a path")
    if parts.fragment or "#" in client_id or parts.username is not None or parts.password is not None:
        raise ValueError("a client ID URL has no fragment and no user info")
    if {".", ".."} & set(parts.path.split("/")):
        raise ValueError("a client ID URL has no . or .. segments")
    return client_id


class MetadataDocuments:
    """Fetches and caches client ID metadata documents: bounded in size, time and number."""

    def __init__(
        self,
        *,
        clock: Clock = SYSTEM_CLOCK,
        ttl: float = 300.0,
        max_entries: int = 256,
        timeout: float = 5.0,
        max_bytes: int = 64 * 1024,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self.clock = clock
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.verify = verify
        self._lock = threading.Lock()
        self._cache: TTLCache[str, Client] = TTLCache(max_entries, ttl, timer=clock.time)

    async def client(self, client_id: str) -> Client:
        """The client the document at ``client_id`` describes (``RegistrationError`` when it cannot be used)."""
        with self._lock:
            cached = self._cache.get(client_id)
        if cached is not None:
            return cached
        try:
            check_client_id_url(client_id)
        except ValueError as exc:
            raise RegistrationError("invalid_client", str(exc)) from None
        data = await self._fetch(client_id)
        client, _ = client_from_metadata(data, now=int(self.clock.time()), client_id=client_id)
        with self._lock:
            self._cache[client_id] = client
        return client

    async def _fetch(self, url: str) -> Any:
        body = bytearray()
        try:
            async with asyncio.timeout(self.timeout):
                async with (
                    httpx.AsyncClient(timeout=self.timeout, verify=self.verify, follow_redirects=False) as http,
                    http.stream("GET", url, headers={"accept": "application/json"}) as response,
                ):
                    if response.status_code != 200:
                        raise RegistrationError(
                            "invalid_client", f"the client metadata document answered HTTP {response.status_code}"
                        )
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > self.max_bytes:
                            raise RegistrationError(
                                "invalid_client", f"the client metadata document is over {self.max_bytes} bytes"
                            )
        except (httpx.HTTPError, TimeoutError) as exc:
            raise RegistrationError(
                "invalid_client", f"cannot fetch the client metadata document ({type(exc).__name__})"
            ) from None
        try:
            return json_object(bytes(body))
        except Malformed as exc:
            problem = f"the client metadata document is not JSON ({exc})"
            raise RegistrationError("invalid_client_metadata", problem) from None
