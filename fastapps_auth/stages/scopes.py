"""The ``scopes`` stage: require scopes for every request, and per MCP tool; step-up per tool.

Scopes are checked against the ``AccessToken`` built so far (so a ``roles`` stage
placed before it can grant them), through a ``ScopePolicy`` (exact, hierarchic or
wildcard matching, and an ``implies`` table). The per-tool rules are read from the
request context the middleware fills in for a JSON-RPC ``tools/call``; a tool's rule
may also ask for a stronger or fresher authentication (RFC 9470 ``acr_values``, ``max_age``).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from fastapps_auth.clock import Clock
from fastapps_auth.component import ComponentOptions
from fastapps_auth.errors import ConfigError, Rejected, insufficient_scope
from fastapps_auth.request import MAX_RPC_NAME_CHARS
from fastapps_auth.scope_policy import Mode, ScopePolicy, Strategy, check_scope_names
from fastapps_auth.stage import Stage, StageOptions, Verification

__all__ = ["ScopePolicy", "ScopesOptions", "ScopesStage", "ToolRule"]

#: Characters of a tool name the HTTP middleware reads from a ``tools/call`` (it cuts longer names).
MAX_TOOL_NAME_CHARS = MAX_RPC_NAME_CHARS
#: Seconds an ``auth_time`` may lie in the future (the issuer's clock ahead of ours) and still count as now.
AUTH_TIME_SKEW = 30.0


class ToolRule(BaseModel):
    """What calling one tool needs: scopes, and optionally a kind and a freshness of authentication."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    scopes: list[str] = Field(default_factory=list, description="Scopes needed to call the tool (with `mode`).")
    acr_values: list[str] | None = Field(
        default=None,
        min_length=1,
        description="Authentication context classes accepted (the token's `acr` claim must be one), e.g. mfa.",
    )
    max_age: int | None = Field(
        default=None, ge=0, description="Seconds since the user last authenticated (the `auth_time` claim), at most."
    )


def _rule(value: Any) -> Any:
    """A list of scopes is the short form of ``{ scopes = [...] }``."""
    return {"scopes": value} if isinstance(value, list) else value


class ScopesOptions(StageOptions):
    """Options of the ``scopes`` stage."""

    required: list[str] = Field(default_factory=list, description="Scopes every request needs.")
    mode: Mode = Field(
        default="all", description="all: every listed scope is needed; any: one of them is enough (also per tool)."
    )
    tools: dict[str, Annotated[ToolRule, BeforeValidator(_rule)]] = Field(
        default_factory=dict,
        description="Per-tool rules (tools/call): tool name → a list of scopes, or a table "
        "{ scopes = [...], acr_values = [...], max_age = seconds }.",
    )
    unknown_tools: Literal["allow", "deny"] = Field(
        default="allow",
        description="A tools/call for a tool not in `tools`: allow (only `required` applies) or deny (403).",
    )
    scope_strategy: Strategy = Field(
        default="exact",
        description="exact; hierarchic (`files` satisfies `files:read`, `files.read`); "
        "wildcard (`files:*` satisfies `files:read`).",
    )
    implies: dict[str, list[str]] = Field(
        default_factory=dict,
        description='Scope → the scopes it implies, transitively (admin = ["manager", "user"]); no cycles.',
    )


class _Tool:
    """One tool's precomputed rule: its scopes, the scopes the whole call needs, and its step-up."""

    __slots__ = ("acr", "acr_values", "max_age", "needed", "scopes")

    def __init__(self, rule: ToolRule, required: tuple[str, ...]) -> None:
        self.scopes = tuple(dict.fromkeys(rule.scopes))
        #: The stage's ``required`` and the tool's own: what a 403 or step-up challenge names.
        self.needed = tuple(dict.fromkeys((*required, *self.scopes)))
        self.acr = frozenset(rule.acr_values) if rule.acr_values else None
        self.acr_values = " ".join(rule.acr_values) if rule.acr_values else None
        self.max_age = rule.max_age

    def step_up(self, claims: dict[str, Any], now: float) -> bool:
        """True if the token's authentication is not the kind or not as recent as this tool asks."""
        if self.acr is not None:
            acr = claims.get("acr")
            if not isinstance(acr, str) or acr not in self.acr:
                return True
        if self.max_age is not None:
            auth_time = claims.get("auth_time")
            if isinstance(auth_time, bool) or not isinstance(auth_time, int | float):
                return True
            # Not a time at all (inf, nan), too old, or later than now beyond clock skew: it proves nothing.
            if not now - self.max_age <= auth_time <= now + AUTH_TIME_SKEW:
                return True
        return False


class ScopesStage(Stage[ScopesOptions]):
    """Rejects with 403 ``insufficient_scope`` (naming the scopes) when the token lacks what is required.

    A tool whose rule asks for ``acr_values`` or ``max_age`` that the token does not meet gets 401
    ``insufficient_user_authentication`` (RFC 9470 step-up) instead.
    """

    plugin_name: ClassVar[str] = "scopes"
    options_model: ClassVar[type[ComponentOptions]] = ScopesOptions

    def __init__(self, options: ScopesOptions | None = None, /, *, clock: Clock | None = None, **kwargs: Any) -> None:
        super().__init__(options, clock=clock, **kwargs)
        o = self.options
        check_scope_names(o.required, stage=self.name, key="required")
        for tool, rule in o.tools.items():
            if not tool:
                raise ConfigError("a tool name cannot be empty", stage=self.name, key="tools")
            if len(tool) >= MAX_TOOL_NAME_CHARS:
                # The middleware cuts a requested name at this length: the rule could never match
                # its own tool, and would match longer names that share its prefix.
                raise ConfigError(
                    f"tool name {tool[:40]!r}… is too long (at most {MAX_TOOL_NAME_CHARS - 1} characters)",
                    stage=self.name,
                    key="tools",
                )
            check_scope_names(rule.scopes, stage=self.name, key=f"tools.{tool}")
            check_scope_names(rule.acr_values or (), stage=self.name, key=f"tools.{tool}.acr_values")
        if not o.required and not o.tools and o.unknown_tools == "allow":
            raise ConfigError("nothing to check: set `required` and/or `tools`", stage=self.name, key="required")
        try:
            self.policy = ScopePolicy(o.scope_strategy, o.implies)
        except ConfigError as exc:
            raise ConfigError(exc.detail, stage=self.name, key=exc.location.key) from None
        self._required = tuple(dict.fromkeys(o.required))
        self._mode: Mode = o.mode
        self._tools = {tool: _Tool(rule, self._required) for tool, rule in o.tools.items()}
        self._deny_unknown = o.unknown_tools == "deny"

    async def __call__(self, v: Verification) -> None:
        at = v.access_token
        if at is None:
            raise Rejected("unauthenticated", "no stage authenticated the token")
        request = v.request
        name = request.tool_name if request is not None else None
        tool = self._tools.get(name) if name is not None else None
        if tool is None and self._deny_unknown and request is not None and request.mcp_method == "tools/call":
            # A tool no rule names, or a tools/call whose name is not a string (no rule could allow it).
            raise _not_allowed()
        policy = self.policy
        have = policy.grants(at.scopes)
        missing = policy.unsatisfied(self._required, have, self._mode)
        if tool is None:
            if missing:
                raise insufficient_scope(missing)
            return
        if tool.step_up(at.claims or {}, v.now):
            raise Rejected(
                "insufficient_user_authentication",
                "this tool needs a stronger or more recent authentication",
                error="insufficient_user_authentication",
                status=401,
                scope=" ".join(tool.needed) or None,
                acr_values=tool.acr_values,
                max_age=tool.max_age,
            )
        if missing:
            raise insufficient_scope(missing, needed=tool.needed)
        missing = policy.unsatisfied(tool.scopes, have, self._mode)
        if missing:
            raise insufficient_scope(missing, reason="insufficient_tool_scope", needed=tool.needed)


def _not_allowed() -> Rejected:
    """403 for a tool that no rule names, under ``unknown_tools = "deny"``."""
    return Rejected(
        "tool_not_allowed", "this tool is not available to any token", error="insufficient_scope", status=403
    )
