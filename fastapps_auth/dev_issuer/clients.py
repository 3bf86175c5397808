"""The dev issuer's OAuth clients: what each may do, and the redirect-URI rules (RFC 6749, RFC 8252)."""

from __future__ import annotations

import hmac
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

from fastapps_auth.endpoints import is_loopback

AUTHORIZATION_CODE = "authorization_code"
REFRESH_TOKEN = "refresh_token"
CLIENT_CREDENTIALS = "client_credentials"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
GRANT_TYPES: tuple[str, ...] = (AUTHORIZATION_CODE, REFRESH_TOKEN, CLIENT_CREDENTIALS, TOKEN_EXCHANGE)
AUTH_METHODS: tuple[str, ...] = ("none", "client_secret_basic", "client_secret_post")
#: What a client configured with an id and a secret may do unless told otherwise.
SERVICE_GRANTS = frozenset({CLIENT_CREDENTIALS, TOKEN_EXCHANGE, REFRESH_TOKEN})
MAX_REDIRECT_URI = 2000


@dataclass(frozen=True, slots=True)
class Client:
    """A client: its secret (empty: a public client), the scopes it may ask for (``None``: any),
    its redirect URIs and grant types."""

    client_id: str
    secret: str = field(default="", repr=False)  # never in a log line or a test's failure output
    scopes: frozenset[str] | None = None
    redirect_uris: tuple[str, ...] = ()
    grant_types: frozenset[str] = SERVICE_GRANTS
    auth_method: str = "client_secret_basic"
    name: str | None = None
    registered: bool = False  # by dynamic client registration (RFC 7591)
    metadata_document: bool = False  # a client ID metadata document (its client_id is its URL)
    issued_at: int = 0

    @property
    def public(self) -> bool:
        return not self.secret

    def check_secret(self, secret: str) -> bool:
        return bool(self.secret) and hmac.compare_digest(self.secret.encode(), secret.encode())

    def allows_scopes(self, requested: Iterable[str]) -> list[str]:
        """The requested scopes this client may not ask for (empty: all allowed)."""
        if self.scopes is None:
            return []
        return sorted(set(requested) - self.scopes)

    def redirect_for(self, requested: str | None) -> str | None:
        """The redirect URI to use for ``requested`` (``None``: the only registered one), or ``None`` if refused."""
        if requested is None:
            return self.redirect_uris[0] if len(self.redirect_uris) == 1 else None
        return requested if any(redirect_matches(r, requested) for r in self.redirect_uris) else None

    def to_json(self) -> dict[str, Any]:
        return {
            "client_id": self.client_id,
            "secret": self.secret or None,
            "scopes": sorted(self.scopes) if self.scopes is not None else None,
            "redirect_uris": list(self.redirect_uris),
            "grant_types": sorted(self.grant_types),
            "auth_method": self.auth_method,
            "name": self.name,
            "registered": self.registered,
            "issued_at": self.issued_at,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Client:
        """A client saved by ``to_json`` (or by an older dev issuer: id, secret and scopes only)."""
        scopes = data.get("scopes")
        secret = data.get("secret")
        return cls(
            str(data["client_id"]),
            str(secret or ""),
            frozenset(scopes) if scopes is not None else None,
            tuple(data.get("redirect_uris") or ()),
            frozenset(data.get("grant_types") or SERVICE_GRANTS),
            str(data.get("auth_method") or ("client_secret_basic" if secret else "none")),
            data.get("name"),
            bool(data.get("registered", False)),
            False,
            int(data.get("issued_at") or 0),
        )


def redirect_matches(registered: str, requested: str) -> bool:
    """Exact match, except that a loopback ``http`` redirect may use any port (RFC 8252 §7.3)."""
    if registered == requested:
        return True
    try:
        r, q = urlsplit(registered), urlsplit(requested)
        r.port, q.port  # noqa: B018 - a malformed port raises here, and such a URI matches nothing
    except ValueError:
        return False
    return (
        r.scheme == q.scheme == "http"
        and r.hostname is not None
        and is_loopback(r.hostname)
        and r.hostname == q.hostname
        and "@" not in r.netloc + q.netloc
        and (r.path, r.query, r.fragment) == (q.path, q.query, q.fragment)
    )


def check_redirect_uri(uri: object) -> str:
    """``uri`` if a client may register it: https, loopback http, or a private-use scheme (RFC 8252 §7.1)."""
    if not isinstance(uri, str) or not uri or len(uri) > MAX_REDIRECT_URI or not uri.isprintable():
        raise ValueError("a redirect URI is a string of at most 2000 printable characters")
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 - validates the port
    except ValueError:
        raise ValueError(f"not a valid URI: {uri!r}") from None
    if parts.fragment or "#" in uri:
        raise ValueError(f"a redirect URI has no fragment: {uri!r}")
    if parts.scheme == "https" and parts.hostname:
        return uri
    if parts.scheme == "http" and parts.hostname and is_loopback(parts.hostname):
        return uri
    if "." in parts.scheme and parts.scheme not in ("http", "https") and (parts.path or parts.netloc):
        return uri  # com.example.app:/callback, a native app's private-use scheme
    raise ValueError(
        f"redirect URIs are https, http on loopback, or a private-use scheme (com.example.app:/cb): {uri!r}"
    )


def configured_client(
    client_id: str,
    secret: str | None = None,
    scopes: Iterable[str] | None = None,
    *,
    redirect_uris: Iterable[str] = (),
    grant_types: Iterable[str] | None = None,
) -> Client:
    """A confidential client (a random secret when none is given); ``redirect_uris`` add the code flow."""
    uris = tuple(check_redirect_uri(u) for u in redirect_uris)
    grants = frozenset(grant_types) if grant_types is not None else SERVICE_GRANTS
    if uris and grant_types is None:
        grants |= {AUTHORIZATION_CODE}
    unknown = sorted(grants - set(GRANT_TYPES))
    if unknown:
        raise ValueError(f"unsupported grant types: {', '.join(unknown)}")
    return Client(
        client_id, secret or secrets.token_urlsafe(24), frozenset(scopes) if scopes is not None else None, uris, grants
    )


class ClientRegistry:
    """Clients by id: configured ones, and up to ``max_registered`` registered ones (the oldest go first).

    ``on_change`` runs after a registration (the CLI saves the clients to the state directory).
    Safe to use from the server's thread and a test's thread at once.
    """

    def __init__(self, *, max_registered: int = 1000, on_change: Callable[[], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._clients: OrderedDict[str, Client] = OrderedDict()
        self.max_registered = max_registered
        self.on_change = on_change

    def __repr__(self) -> str:
        return f"ClientRegistry({len(self._clients)} clients)"

    def add(self, client: Client) -> Client:
        with self._lock:
            self._clients[client.client_id] = client
            if client.registered:
                registered = [c.client_id for c in self._clients.values() if c.registered]
                for old in registered[: max(0, len(registered) - self.max_registered)]:
                    del self._clients[old]
        return client

    def get(self, client_id: str) -> Client | None:
        with self._lock:
            return self._clients.get(client_id)

    def all(self) -> list[Client]:
        with self._lock:
            return list(self._clients.values())

    def register(self, client: Client) -> Client:
        """Add a client made by ``registration.client_from_metadata`` and tell ``on_change``."""
        added = self.add(replace(client, registered=True))
        if self.on_change is not None:
            self.on_change()
        return added

    def authenticate(self, client_id: str, secret: str) -> Client | None:
        """The confidential client ``client_id`` if ``secret`` is its secret."""
        client = self.get(client_id)
        return client if client is not None and client.check_secret(secret) else None
