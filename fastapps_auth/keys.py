"""Which value of a verification a stage keys on: ``subject``, ``client_id``, ``claim:<name>`` or ``ip``."""

from __future__ import annotations

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
            return v.request.client_ip if v.request is not None else None
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
