"""Which value of a verification a stage keys on: ``subject``, ``client_id``, ``claim:<name>``, ``ip`` (IPv6 by /64).

A claim's value may be a string or a number (an integral float is its integer: JSON does not tell
``1`` from ``1.0``); anything else (a boolean, a list, an object, a missing claim) gives no key.
``KeySelector(..., stored=True)`` gives each key its *stored form*, where values of different types
never share a key (the string ``"1"`` is not the number ``1``) and a key's size is bounded.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
from typing import Any

from fastapps_auth.errors import ConfigError
from fastapps_auth.stage import Verification

KEY_HELP = "subject, client_id, claim:<name> or ip"

#: Keys longer than this are stored as their SHA-256 (bounds memory per key whatever the claim holds).
MAX_KEY_CHARS = 128
#: First characters a string key is never stored with: "#" marks a digest, "=" a number, "}" would end
#: a Redis hash tag at once.
_NOT_FIRST = frozenset("#=}")


class KeySelector:
    """Parsed once at construction; ``__call__`` returns the key for a verification, or ``None``.

    ``stored=True``: the key in its stored form (``stored_key``), for a stage that keeps state per key.
    """

    __slots__ = ("claim", "kind", "spec", "stored")

    def __init__(self, spec: str, *, allow_ip: bool = True, stage: str | None = None, stored: bool = False) -> None:
        self.spec = spec
        self.stored = stored
        self.claim: str | None = None
        if spec in ("subject", "client_id"):
            self.kind = spec
        elif spec == "ip":
            if not allow_ip:
                raise ConfigError(
                    f"key 'ip' is not available here (use {KEY_HELP.replace(' or ip', '')})", stage=stage, key="key"
                )
            self.kind = "ip"
        elif spec.startswith("claim:") and len(spec) > len("claim:"):
            self.kind = "claim"
            self.claim = spec[len("claim:") :]
        else:
            raise ConfigError(f"unknown key {spec!r} (use {KEY_HELP})", stage=stage, key="key")

    def __call__(self, v: Verification) -> str | None:
        value = self.value(v)
        if value is None:
            return None
        if self.stored:
            return stored_key(value)
        return value if isinstance(value, str) else str(value)

    def value(self, v: Verification) -> str | int | float | None:
        """The raw key: a string, or a claim's number (an integral float as its int); ``None`` if there is none."""
        kind = self.kind
        if kind == "ip":
            ip = v.request.client_ip if v.request is not None else None
            return ip_key(ip) if ip is not None and ":" in ip else ip
        at = v.access_token
        if at is None:
            return None
        if kind == "subject":
            return at.subject
        if kind == "client_id":
            return at.client_id
        value: Any = (at.claims or {}).get(self.claim or "")
        if isinstance(value, str):
            return value
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        if isinstance(value, float):
            if not math.isfinite(value):
                return None
            if value.is_integer():
                return int(value)
        return value


def stored_key(value: str | int | float) -> str:
    """The stored form of a key: distinct for distinct values, at most ``MAX_KEY_CHARS`` + 1 characters.

    A string is itself, unless it is empty, too long, or starts with ``#``, ``=`` or ``}``: then it is
    ``#`` and its SHA-256. A number is ``=`` and its JSON text (``=#`` and its digest if that is too
    long). So no string can spell a number or the digest of another string, and every stored key is
    a non-empty Redis hash tag (all rules of a key share one Cluster slot).
    """
    if not isinstance(value, str):
        text = repr(value)
        return f"={text}" if len(text) < MAX_KEY_CHARS else "=#" + hashlib.sha256(text.encode()).hexdigest()
    if not value or len(value) > MAX_KEY_CHARS or value[0] in _NOT_FIRST:
        return "#" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()
    return value


def ip_key(ip: str) -> str:
    """The key of an IPv6 client: its /64, the smallest network a host is given (RFC 6177).

    One subscriber holds a whole /64 and can pick any of its 2**64 addresses: keyed by address,
    it would never reach a limit. An IPv4-mapped address (``::ffff:192.0.2.1``) is its IPv4 address.
    """
    try:
        addr = ipaddress.IPv6Address(ip)
    except ValueError:
        return ip
    mapped = addr.ipv4_mapped
    if mapped is not None:
        return str(mapped)
    return f"{ipaddress.IPv6Address(int(addr) >> 64 << 64)}/64"
