"""The client's address: the peer, or the address a trusted proxy forwarded (``X-Forwarded-For``)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from starlette.types import Scope

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_networks(cidrs: Iterable[str]) -> tuple[IPNetwork, ...]:
    """CIDR strings (``10.0.0.0/8``, ``127.0.0.1``) as networks; a bad one raises ``ValueError``."""
    return tuple(ipaddress.ip_network(c.strip(), strict=False) for c in cidrs)


def _address(hop: str) -> IPAddress | None:
    """An address as peers and proxies write it: ``1.2.3.4``, ``1.2.3.4:80``, ``[2001:db8::1]:80``; else ``None``.

    An IPv4-mapped IPv6 address (a dual-stack listener's view of an IPv4 peer) is its IPv4 address.
    """
    host, port = hop, None
    if hop.startswith("["):
        host, bracket, rest = hop[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            return None
        port = rest[1:] if rest else None
    elif hop.count(":") == 1:
        host, _, port = hop.partition(":")
    if port is not None and not (port.isascii() and port.isdigit()):
        return None
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _in(ip: str, networks: Sequence[IPNetwork]) -> bool:
    addr = _address(ip)
    return addr is not None and any(addr in n for n in networks)


def peer_trusted(scope: Scope, trusted: Sequence[IPNetwork]) -> bool:
    """True when the peer is a trusted proxy (its X-Forwarded-* headers are believed)."""
    peer = scope.get("client")
    return bool(trusted) and peer is not None and _in(str(peer[0]), trusted)


def client_ip(scope: Scope, trusted: Sequence[IPNetwork]) -> str | None:
    """The client address: the peer, or, when the peer is a trusted proxy, the first untrusted X-Forwarded-For hop.

    The X-Forwarded-For chain is read right to left and every hop that is itself a
    trusted proxy is skipped, so a client cannot choose its address by sending the header.
    """
    peer = scope.get("client")
    ip: str | None = str(peer[0]) if peer else None
    if ip is None or not trusted or not _in(ip, trusted):
        return ip
    forwarded: list[str] = []
    for name, value in scope.get("headers", ()):
        if name == b"x-forwarded-for":
            forwarded.extend(h.strip() for h in value.decode("latin-1").split(","))
    for hop in reversed(forwarded):
        addr = _address(hop)
        if addr is None:
            return ip  # a malformed hop: stop trusting the header there
        ip = str(addr)
        if not any(addr in n for n in trusted):
            return ip
    return ip
