"""The ``scopes`` stage: require scopes for every request, and per MCP tool.

Scopes are checked against the ``AccessToken`` built so far (so a ``roles`` stage
placed before it can grant them). The per-tool map is read from the request
context the middleware fills in for a JSON-RPC ``tools/call``.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from fastapps_auth.clock import Clock
from fastapps_auth.component import ComponentOptions
from fastapps_auth.errors import ConfigError, Rejected, insufficient_scope
from fastapps_auth.request import MAX_RPC_NAME_CHARS
from fastapps_auth.stage import Stage, StageOptions, Verification

Mode = Literal["all", "any"]

#: Characters of a tool name the HTTP middleware reads from a ``tools/call`` (it cuts longer names).
MAX_TOOL_NAME_CHARS = MAX_RPC_NAME_CHARS


class ScopesOptions(StageOptions):
    """Options of the ``scopes`` stage."""

    required: list[str] = Field(default_factory=list, description="Scopes every request needs.")
    mode: Mode = Field(
        default="all", description="all: every listed scope is needed; any: one of them is enough (also per tool)."
    )
    tools: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Per-tool scopes: MCP tool name → scopes needed when that tool is called (tools/call).",
    )
    unknown_tools: Literal["allow", "deny"] = Field(
        default="allow",
        description="A tools/call for a tool not in `tools`: allow (only `required` applies) or deny (403).",
    )


class _Rule:
    """One precomputed requirement: its scopes (ordered, for the error) and its mode."""

    __slots__ = ("needed", "ordered", "require_all")

    def __init__(self, scopes: list[str], mode: Mode) -> None:
        self.ordered = tuple(dict.fromkeys(scopes))
        self.needed = frozenset(self.ordered)
        self.require_all = mode == "all"

    def missing(self, granted: frozenset[str] | set[str]) -> tuple[str, ...]:
        """The scopes to name in a 403, or ``()`` when ``granted`` satisfies the rule."""
        if not self.needed:
            return ()
        if self.require_all:
            return tuple(s for s in self.ordered if s not in granted)
        return () if not self.needed.isdisjoint(granted) else self.ordered


def _check_scopes(scopes: list[str], *, stage: str, key: str) -> None:
    for s in scopes:
        if not s or any(c.isspace() or c in '"\\' for c in s):
            raise ConfigError(
                f"invalid scope {s!r} (a scope has no spaces, quotes or backslashes)", stage=stage, key=key
            )


class ScopesStage(Stage[ScopesOptions]):
    """Rejects with 403 ``insufficient_scope`` (naming the scopes) when the token lacks what is required."""

    plugin_name: ClassVar[str] = "scopes"
    options_model: ClassVar[type[ComponentOptions]] = ScopesOptions

    def __init__(self, options: ScopesOptions | None = None, /, *, clock: Clock | None = None, **kwargs: Any) -> None:
        super().__init__(options, clock=clock, **kwargs)
        o = self.options
        _check_scopes(o.required, stage=self.name, key="required")
        for tool, scopes in o.tools.items():
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
            _check_scopes(scopes, stage=self.name, key=f"tools.{tool}")
        if not o.required and not o.tools and o.unknown_tools == "allow":
            raise ConfigError("nothing to check: set `required` and/or `tools`", stage=self.name, key="required")
        self._base = _Rule(o.required, o.mode)
        self._tools = {tool: _Rule(scopes, o.mode) for tool, scopes in o.tools.items()}
        self._deny_unknown = o.unknown_tools == "deny"

    async def __call__(self, v: Verification) -> None:
        at = v.access_token
        if at is None:
            raise Rejected("unauthenticated", "no stage authenticated the token")
        granted = frozenset(at.scopes)
        missing = self._base.missing(granted)
        if missing:
            raise insufficient_scope(missing)
        request = v.request
        tool = request.tool_name if request is not None else None
        if tool is None:
            # A tools/call whose name is not a string names no tool a rule could allow.
            if self._deny_unknown and request is not None and request.mcp_method == "tools/call":
                raise _not_allowed()
            return
        rule = self._tools.get(tool)
        if rule is None:
            if self._deny_unknown:
                raise _not_allowed()
            return
        missing = rule.missing(granted)
        if missing:
            raise insufficient_scope(missing, reason="insufficient_tool_scope")


def _not_allowed() -> Rejected:
    """403 for a tool that no rule names, under ``unknown_tools = "deny"``."""
    return Rejected(
        "tool_not_allowed", "this tool is not available to any token", error="insufficient_scope", status=403
    )
