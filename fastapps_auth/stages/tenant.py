"""The ``tenant`` stage: which tenant a token belongs to, checked and exposed on the AccessToken.

The tenant is read from a claim (namespaced claims such as
``https://example.com/tenant_id`` are plain keys, never split on dots), checked
against an optional allow-list, and copied to a fixed claim name so later stages
and tools read it in one place.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from fastapps_auth.clock import Clock
from fastapps_auth.component import ComponentOptions
from fastapps_auth.errors import ConfigError, Rejected
from fastapps_auth.stage import Stage, StageOptions, Verification

#: A tenant identifier longer than this is malformed (bounds what reaches logs and metrics).
MAX_TENANT_CHARS = 256


class TenantOptions(StageOptions):
    """Options of the ``tenant`` stage."""

    claim: str | list[str] = Field(
        default="tenant_id",
        description="Claim holding the tenant, or a list of claims tried in order (e.g. https://example.com/tenant_id).",
    )
    allowed: list[str] | None = Field(default=None, description="Tenants accepted; unset accepts any tenant.")
    required: bool = Field(default=True, description="Reject a token that carries no tenant.")
    expose_as: str = Field(
        default="tenant_id", description="Claim name under which the tenant is put on the AccessToken."
    )


class TenantStage(Stage[TenantOptions]):
    """Rejects a token without a tenant (when required) or from a tenant not allowed; exposes the tenant."""

    plugin_name: ClassVar[str] = "tenant"
    options_model: ClassVar[type[ComponentOptions]] = TenantOptions

    def __init__(self, options: TenantOptions | None = None, /, *, clock: Clock | None = None, **kwargs: Any) -> None:
        super().__init__(options, clock=clock, **kwargs)
        o = self.options
        claims = [o.claim] if isinstance(o.claim, str) else list(o.claim)
        if not claims or any(not c for c in claims):
            raise ConfigError("claim names cannot be empty", stage=self.name, key="claim")
        if not o.expose_as:
            raise ConfigError("cannot be empty", stage=self.name, key="expose_as")
        self._claims: tuple[str, ...] = tuple(claims)
        self._allowed: frozenset[str] | None = None
        if o.allowed is not None:
            if not o.allowed:
                raise ConfigError(
                    "an empty allow-list would reject every token; omit it to allow any", stage=self.name, key="allowed"
                )
            self._allowed = frozenset(o.allowed)
        self._expose_as = o.expose_as

    def _read(self, claims: dict[str, Any]) -> str | None:
        for name in self._claims:
            value = claims.get(name)
            if value is None or value == "":
                continue
            if isinstance(value, bool) or not isinstance(value, str | int):
                raise Rejected("tenant_invalid", "the token's tenant claim is malformed")
            tenant = str(value)
            if len(tenant) > MAX_TENANT_CHARS:
                raise Rejected("tenant_invalid", "the token's tenant claim is malformed")
            return tenant
        return None

    async def __call__(self, v: Verification) -> None:
        at = v.access_token
        if at is None:
            raise Rejected("unauthenticated", "no stage authenticated the token")
        claims = at.claims or {}
        tenant = self._read(claims)
        if tenant is None:
            if self.options.required:
                raise Rejected("tenant_missing", "the token names no tenant")
            if self._expose_as in claims:  # the token's own claim of that name was never checked
                rest = {k: value for k, value in claims.items() if k != self._expose_as}
                v.access_token = at.model_copy(update={"claims": rest})
            return
        if self._allowed is not None and tenant not in self._allowed:
            raise Rejected("tenant_not_allowed", "the token's tenant is not allowed on this server")
        if claims.get(self._expose_as) != tenant:
            v.access_token = at.model_copy(update={"claims": {**claims, self._expose_as: tenant}})
