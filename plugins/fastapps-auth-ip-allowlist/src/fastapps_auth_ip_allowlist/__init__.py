"""``ip-allowlist``: a fastapps-auth stage admitting requests only from allowed client networks.

A third-party plugin: it uses nothing but the public stage API and registers itself
under the ``fastapps_auth.stages`` entry point in its own ``pyproject.toml``.
"""

from __future__ import annotations

import ipaddress
from typing import Any, ClassVar, Literal

from pydantic import Field

from fastapps_auth import ConfigError, Rejected, Stage, StageOptions, Verification
from fastapps_auth.clock import Clock

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class IPAllowlistOptions(StageOptions):
    """Options of the ``ip-allowlist`` stage."""

    networks: list[str] = Field(
        min_length=1,
        max_length=10_000,
        description="Allowed client networks in CIDR notation (10.0.0.0/8, 2001:db8::/32) or single addresses.",
    )
    missing_ip: Literal["deny", "allow"] = Field(
        default="deny",
        description="When the client address is unknown (no HTTP request, e.g. stdio): deny (403) or allow.",
    )


class IPAllowlistStage(Stage[IPAllowlistOptions]):
    """Rejects (403 ``ip_not_allowed``) a request whose client address is in none of ``networks``."""

    plugin_name: ClassVar[str] = "ip-allowlist"
    options_model: ClassVar[type[StageOptions]] = IPAllowlistOptions

    def __init__(
        self, options: IPAllowlistOptions | None = None, /, *, clock: Clock | None = None, **kwargs: Any
    ) -> None:
        super().__init__(options, clock=clock, **kwargs)
        nets: list[IPNetwork] = []
        for spec in self.options.networks:
            try:
                nets.append(ipaddress.ip_network(spec, strict=False))
            except ValueError:
                raise ConfigError(f"not a network or address: {spec!r}", stage=self.name, key="networks") from None
        self._v4 = tuple(n for n in nets if n.version == 4)
        self._v6 = tuple(n for n in nets if n.version == 6)
        self._allow_missing = self.options.missing_ip == "allow"

    def allows(self, client_ip: str) -> bool:
        """True if ``client_ip`` is in an allowed network (IPv4-mapped IPv6 counts as IPv4)."""
        try:
            addr = ipaddress.ip_address(client_ip.strip())
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        nets = self._v4 if addr.version == 4 else self._v6
        return any(addr in net for net in nets)

    async def __call__(self, v: Verification) -> None:
        ip = v.request.client_ip if v.request is not None else None
        if ip is None:
            if self._allow_missing:
                return
            raise Rejected("ip_unknown", "the client address is unknown", status=403)
        if not self.allows(ip):
            raise Rejected("ip_not_allowed", "requests from this network are not allowed", status=403)
