"""Which requests the middleware checks: protected path prefixes, exempt segments, CORS preflights."""

from __future__ import annotations

from collections.abc import Sequence

from starlette.types import Scope


def route_path(scope: Scope) -> str:
    """The path the app routes on: ``path`` without ``root_path`` (as Starlette's routing computes it)."""
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and (path == root or path[len(root)] == "/"):
        return path[len(root) :]
    return path


def is_preflight(scope: Scope) -> bool:
    """A CORS preflight (browsers send it without credentials): ``OPTIONS`` naming the method to come.

    Any other ``OPTIONS`` is a request like the others: an app may answer it with data.
    """
    if scope.get("method") != "OPTIONS":
        return False
    return any(name == b"access-control-request-method" for name, _ in scope.get("headers", ()))


class PathRules:
    """Protected prefixes (``None``: every path) and exempt prefixes, prepared once.

    A protected prefix also protects its bare form (``/mcp/`` protects ``/mcp``); an exempt
    prefix ends at a path segment (``/public`` covers ``/public/x``, not ``/publicx``).
    """

    def __init__(self, paths: Sequence[str] | None, exempt: Sequence[str]) -> None:
        self.paths = tuple(paths) if paths is not None else None
        self.exempt = tuple(exempt)
        self._protected = None if self.paths is None else tuple((p, p.rstrip("/")) for p in self.paths)
        self._exempt = tuple((base, base + "/") for base in (p.rstrip("/") for p in self.exempt))

    def protects(self, scope: Scope) -> bool:
        # Starlette routes on the path below the mount (or the server's root path), which is what
        # ``paths`` name; a list written against the full path keeps protecting it too.
        full: str = scope.get("path", "")
        routed = route_path(scope) if scope.get("root_path") else full
        paths = (full,) if routed == full else (full, routed)
        for path in paths:
            for base, below in self._exempt:
                if path == base or path.startswith(below):
                    return False
        if self._protected is None:
            return True
        return any(path == bare or path.startswith(p) for path in paths for p, bare in self._protected)
