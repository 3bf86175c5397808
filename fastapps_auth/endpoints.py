"""Endpoint policy: which hosts are loopback, and which URLs a component may send a request or a secret to.

One module for every outgoing connection (JWKS and discovery, introspection, token exchange, Redis,
the dev issuer's binding): plaintext only to loopback unless configured otherwise, and loopback decided
by the address itself, never by how a name starts (``127.attacker.example`` is a public name).
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit, urlunsplit

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


_DEFAULT_PORTS = {"http": 80, "https": 443}


def canonical_resource(url: str) -> str:
    """``url`` in the form RFC 8707 resource URLs are compared in.

    Scheme and host are lowercased, the scheme's default port and trailing slashes of the path are
    dropped, a fragment is dropped; the path and query are kept as written (they are case-sensitive).
    A string that is not a URL with a host (``"api://"``, a bare audience name) comes back unchanged.
    """
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:  # a port that is not a number, an unbalanced bracket
        return url
    if not parts.scheme or not host:
        return url
    scheme = parts.scheme.lower()
    netloc = f"[{host}]" if ":" in host else host
    if parts.username is not None or parts.password is not None:
        netloc = parts.netloc.rpartition("@")[0] + "@" + netloc
    if port is not None and port != _DEFAULT_PORTS.get(scheme):
        netloc += f":{port}"
    return urlunsplit((scheme, netloc, parts.path.rstrip("/"), parts.query, ""))


def same_resource(a: str, b: str) -> bool:
    """Whether ``a`` and ``b`` name the same resource (``canonical_resource`` of each is equal)."""
    return a == b or canonical_resource(a) == canonical_resource(b)
