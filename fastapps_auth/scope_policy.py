"""How granted scopes satisfy required ones: one policy for the ``scopes`` stage and every host.

``ScopePolicy(strategy, implies)`` is built once (the ``implies`` table resolved, cycles refused)
and answers ``missing(required, granted, mode)`` per request. The strategies:

- ``exact``: a required scope is satisfied only by itself (RFC 6749 scopes are case-sensitive strings).
- ``hierarchic``: also by any ancestor, cut at ``:`` or ``.``: ``files`` satisfies ``files:read``,
  ``files.read`` and ``files:read:own``; ``files:read`` does not satisfy ``files``, and ``file``
  does not satisfy ``files:read`` (only whole segments count).
- ``wildcard``: also by a granted ``<prefix>:*`` or ``<prefix>.*``, which satisfies every scope that
  begins with ``<prefix>:`` (or ``<prefix>.``), at any depth, but not ``<prefix>`` itself. A ``*``
  anywhere else, and a bare ``*``, are ordinary characters.

``implies`` (``admin = ["manager", "user"]``) adds scopes to what was granted, transitively, before
the strategy matches.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Literal

from fastapps_auth.errors import ConfigError

Strategy = Literal["exact", "hierarchic", "wildcard"]
Mode = Literal["all", "any"]

STRATEGIES: tuple[Strategy, ...] = ("exact", "hierarchic", "wildcard")
SEPARATORS = (":", ".")


def split_scope(value: str) -> list[str]:
    """The scopes of an RFC 6749 ``scope`` string: delimited by spaces (U+0020) only, so a token's
    ``"read\u00a0admin"`` is one odd scope, not ``read`` and ``admin`` (``str.split()`` cuts at any whitespace)."""
    return [s for s in value.split(" ") if s]


def check_scope_names(scopes: Iterable[str], *, key: str, stage: str | None = None) -> None:
    """``ConfigError`` for a scope that cannot be sent in a ``WWW-Authenticate`` header (empty, space, quote)."""
    for s in scopes:
        if not s or any(c.isspace() or c in '"\\' for c in s):
            raise ConfigError(
                f"invalid scope {s!r} (a scope has no spaces, quotes or backslashes)", stage=stage, key=key
            )


class ScopePolicy:
    """Decides which required scopes a token's granted scopes leave missing, under one strategy."""

    __slots__ = ("_implied", "strategy")

    def __init__(self, strategy: Strategy = "exact", implies: Mapping[str, Sequence[str]] | None = None) -> None:
        if strategy not in STRATEGIES:
            raise ConfigError(f"unknown strategy {strategy!r} (one of: {', '.join(STRATEGIES)})", key="scope_strategy")
        self.strategy: Strategy = strategy
        table = dict(implies or {})
        for scope, implied in table.items():
            check_scope_names([scope], key="implies")
            check_scope_names(implied, key=f"implies.{scope}")
        #: Each scope named in ``implies`` → every scope it implies, transitively (itself excluded).
        self._implied: dict[str, frozenset[str]] = {s: _closure(s, table) for s in table}

    def grants(self, granted: Iterable[str]) -> frozenset[str]:
        """``granted`` and every scope it implies."""
        out = set(granted)
        implied = self._implied
        if implied:
            for s in tuple(out):
                more = implied.get(s)
                if more:
                    out |= more
        return frozenset(out)

    def satisfied(self, required: str, granted: Collection[str]) -> bool:
        """True if ``granted`` (already expanded by ``grants``) satisfies ``required``."""
        if required in granted:
            return True
        if self.strategy == "hierarchic":
            return any(required[:i] in granted for i, c in enumerate(required) if c in SEPARATORS and i)
        if self.strategy == "wildcard":
            return any(required[: i + 1] + "*" in granted for i, c in enumerate(required[:-1]) if c in SEPARATORS)
        return False

    def missing(self, required: Sequence[str], granted: Iterable[str], mode: Mode = "all") -> tuple[str, ...]:
        """The required scopes to name in a 403, or ``()`` when ``granted`` satisfies ``required``.

        ``all``: every required scope not satisfied, in order. ``any``: ``()`` if one is satisfied,
        else all of them (the acceptable alternatives). An empty ``required`` is always satisfied.
        """
        return self.unsatisfied(required, self.grants(granted), mode) if required else ()

    def unsatisfied(self, required: Sequence[str], have: Collection[str], mode: Mode = "all") -> tuple[str, ...]:
        """``missing`` for scopes already expanded by ``grants`` (expand once, check several rules)."""
        if not required:
            return ()
        if mode == "all":
            return tuple(dict.fromkeys(r for r in required if not self.satisfied(r, have)))
        return () if any(self.satisfied(r, have) for r in required) else tuple(dict.fromkeys(required))

    def __repr__(self) -> str:
        return f"ScopePolicy({self.strategy!r}, implies={ {k: sorted(v) for k, v in self._implied.items()}!r})"


def _closure(scope: str, table: Mapping[str, Sequence[str]]) -> frozenset[str]:
    """Every scope ``scope`` implies through ``table``; a cycle is a ``ConfigError`` naming it."""
    seen: set[str] = set()
    path: list[str] = []

    def visit(s: str) -> None:
        if s in path:
            cycle = " → ".join([*path[path.index(s) :], s])
            raise ConfigError(f"implies has a cycle: {cycle}", key="implies")
        if s in seen:
            return
        path.append(s)
        for child in table.get(s, ()):
            visit(child)
        path.pop()
        seen.add(s)

    visit(scope)
    return frozenset(seen - {scope})
