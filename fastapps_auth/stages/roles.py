"""The ``roles`` stage: expand a role claim through a hierarchy into granted scopes.

The hierarchy (``admin`` includes ``editor`` includes ``viewer``) and each role's
scopes are resolved once at construction, so a request costs one set union per
role the token carries. The expanded scopes are added to ``AccessToken.scopes``,
where the ``scopes`` stage, the MCP SDK and FastApps' widgets look.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from fastapps_auth.clock import Clock
from fastapps_auth.component import ComponentOptions
from fastapps_auth.errors import ConfigError, Rejected
from fastapps_auth.scope_policy import split_scope
from fastapps_auth.stage import Stage, StageOptions, Verification

#: Roles read from one token at most (bounds per-request work on a hostile claim).
MAX_ROLES = 256


class RolesOptions(StageOptions):
    """Options of the ``roles`` stage."""

    claim: str = Field(
        default="roles",
        description="Claim holding the roles: a list, or a space- or comma-separated string (namespaced names work).",
    )
    hierarchy: dict[str, list[str]] = Field(
        default_factory=dict, description='Role → the roles it includes (admin = ["editor"], editor = ["viewer"]).'
    )
    scopes: dict[str, list[str]] = Field(
        default_factory=dict, description="Role → scopes it grants directly (inherited roles add theirs)."
    )
    required: bool = Field(default=False, description="Reject a token that carries no known role.")
    expose_as: str | None = Field(
        default=None, description="If set, the expanded role list is put on the AccessToken's claims under this name."
    )


class RolesStage(Stage[RolesOptions]):
    """Adds the scopes of the token's roles (and of every role they include) to the AccessToken."""

    plugin_name: ClassVar[str] = "roles"
    options_model: ClassVar[type[ComponentOptions]] = RolesOptions

    def __init__(self, options: RolesOptions | None = None, /, *, clock: Clock | None = None, **kwargs: Any) -> None:
        super().__init__(options, clock=clock, **kwargs)
        o = self.options
        if not o.claim:
            raise ConfigError("cannot be empty", stage=self.name, key="claim")
        if not o.scopes:
            raise ConfigError("no role grants any scope", stage=self.name, key="scopes")
        for role, scopes in o.scopes.items():
            for s in scopes:
                if not s or any(c.isspace() for c in s):
                    raise ConfigError(f"invalid scope {s!r} for role {role!r}", stage=self.name, key=f"scopes.{role}")
        self._closure = {role: self._expand(role) for role in {*o.hierarchy, *o.scopes}}
        self._grants: dict[str, tuple[str, ...]] = {}
        for role, included in self._closure.items():
            granted: dict[str, None] = {}
            for r in (role, *sorted(included - {role})):
                granted.update(dict.fromkeys(o.scopes.get(r, ())))
            self._grants[role] = tuple(granted)

    def _expand(self, role: str) -> frozenset[str]:
        """Every role ``role`` includes, itself too; a cycle is a configuration error."""
        seen: set[str] = set()
        path: list[str] = []

        def visit(r: str) -> None:
            if r in path:
                cycle = " → ".join([*path[path.index(r) :], r])
                raise ConfigError(f"role hierarchy has a cycle: {cycle}", stage=self.name, key="hierarchy")
            if r in seen:
                return
            path.append(r)
            for child in self.options.hierarchy.get(r, ()):
                visit(child)
            path.pop()
            seen.add(r)

        visit(role)
        return frozenset(seen)

    def _roles(self, value: Any) -> list[str]:
        if isinstance(value, str):
            items: list[Any] = split_scope(value.replace(",", " "))
        elif isinstance(value, list | tuple):
            items = list(value)
        else:
            return []
        return [r for r in items[:MAX_ROLES] if isinstance(r, str) and r]

    async def __call__(self, v: Verification) -> None:
        at = v.access_token
        if at is None:
            raise Rejected("unauthenticated", "no stage authenticated the token")
        claims = at.claims or {}
        roles = [r for r in self._roles(claims.get(self.options.claim)) if r in self._grants]
        if not roles:
            if self.options.required:
                raise Rejected(
                    "role_missing",
                    "the token carries no role known to this server",
                    status=403,
                    error="insufficient_scope",
                )
            expose_as = self.options.expose_as
            if expose_as and expose_as in claims:  # the token's own claim of that name grants nothing
                rest = {k: value for k, value in claims.items() if k != expose_as}
                v.access_token = at.model_copy(update={"claims": rest})
            return
        scopes = dict.fromkeys(at.scopes)
        for r in roles:
            scopes.update(dict.fromkeys(self._grants[r]))
        update: dict[str, Any] = {"scopes": list(scopes)}
        if self.options.expose_as:
            expanded = sorted(set().union(*(self._closure[r] for r in roles)))
            update["claims"] = {**claims, self.options.expose_as: expanded}
        v.access_token = at.model_copy(update=update)
