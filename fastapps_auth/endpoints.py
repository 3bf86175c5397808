"""Endpoint policy: which hosts are loopback, and which URLs a component may send a request or a secret to.

One module for every outgoing connection (JWKS and discovery, introspection, token exchange, Redis,
the dev issuer's binding): plaintext only to loopback unless configured otherwise, and loopback decided
by the address itself, never by how a name starts (``127.attacker.example`` is a public name).
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

#: The only name taken as loopback without resolving it (RFC 6761 §6.3 reserves it).
LOOPBACK_NAMES = frozenset({"localhost"})


def is_loopback(host: str | None) -> bool:
    """True for ``localhost`` or a loopback address (``127.0.0.0/8``, ``::1``, bracketed or not)."""
    if not host:
        return False
    name = host.strip().lower()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_url(url: str, *, allow_insecure_http: bool = False, loopback_http: bool = True) -> str:
    """``url`` if it is https (or http on loopback, or http explicitly allowed); else ``ValueError``.

    ``loopback_http=False`` takes the loopback exception away: a remote issuer's metadata has no
    business sending us to a plain-http service on this host.
    """
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return url
    if (
        parts.scheme == "http"
        and parts.hostname
        and (allow_insecure_http or (loopback_http and is_loopback(parts.hostname)))
    ):
        return url
    if not loopback_http:
        raise ValueError(f"must be an https URL (the issuer is not on loopback): {url!r}")
    raise ValueError(f"must be an https URL (http only on loopback or with allow_insecure_http): {url!r}")
