"""Which value of a verification a stage keys on: ``subject``, ``client_id``, ``claim:<name>``, ``ip`` (IPv6 by /64)."""

from __future__ import annotations

import ipaddress
from typing import Any

from fastapps_auth.errors import ConfigError
from fastapps_auth.stage import Verification

KEY_HELP = "subject, client_id, claim:<name> or ip"


class KeySelector:
    """Parsed once at construction; ``__call__`` returns the key for a verification, or ``None``."""

    __slots__ = ("claim", "kind", "spec")

    def __init__(self, spec: str, *, allow_ip: bool = True, stage: str | None = None) -> None:
        self.spec = spec
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
        if isinstance(value, str | int) and not isinstance(value, bool):
            return str(value)
        return None


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
