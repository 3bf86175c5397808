"""Which tool a ``tools/call`` calls, as the host resolves it, so per-tool rules follow the tool, not the string.

A host may give one tool several names (a namespace prefix, a hashed alias, a proxy tool
that calls another by name). A ``ToolResolver`` answers with the name the host's own
registry knows the tool by, or ``None`` when the host has no such tool; the middleware puts
that name in ``RequestInfo.tool_name``, where the ``scopes`` stage's per-tool map reads it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Container
from typing import Any

#: ``(requested name, arguments) -> canonical name | None``: the host's resolution of a ``tools/call``.
ToolResolver = Callable[[str, Any], Awaitable[str | None]]


def exact_names(names: Container[str] | Callable[[str], bool]) -> ToolResolver:
    """A resolver for a host that dispatches on the exact name: the name if the host has it, else ``None``.

    ``names`` is a live container (a registry dict) or a predicate, read at each call, so tools
    added after start-up are found.
    """
    has: Callable[[str], bool] = names if callable(names) else names.__contains__

    async def resolve(name: str, arguments: Any) -> str | None:
        return name if has(name) else None

    return resolve
