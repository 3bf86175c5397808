"""The dev issuer's users: who can "log in" on the login page, and which scopes each may be granted."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

#: The demo's users; any of them may be granted any scope unless configured otherwise.
DEFAULT_USERS: tuple[str, ...] = ("alice", "bob", "carol", "dave", "erin", "frank")
#: Authentication context classes a login can claim (RFC 9470 step-up rehearsal: ``acr=mfa``).
ACR_VALUES: tuple[str, ...] = ("pwd", "mfa")
DEFAULT_ACR = "pwd"


@dataclass(frozen=True, slots=True)
class DevUser:
    """A user of the login page. ``scopes=None``: any scope may be granted to this user."""

    id: str
    scopes: frozenset[str] | None = None

    def grant(self, requested: Sequence[str]) -> list[str]:
        """The requested scopes this user may have, in request order (RFC 6749 §3.3 lets the server narrow)."""
        if self.scopes is None:
            return list(dict.fromkeys(requested))
        return [s for s in dict.fromkeys(requested) if s in self.scopes]


def parse_user(text: str) -> DevUser:
    """``alice`` (any scope) or ``alice=read,reports:read`` (only those scopes)."""
    name, sep, scopes = text.partition("=")
    name = name.strip()
    if not name or not name.isprintable() or " " in name:
        raise ValueError(f"expected NAME or NAME=SCOPE,SCOPE..., got {text!r}")
    if not sep:
        return DevUser(name)
    return DevUser(name, frozenset(s for s in scopes.replace(" ", ",").split(",") if s))


def as_users(users: Iterable[str | DevUser]) -> dict[str, DevUser]:
    """Users by id, from names, ``NAME=SCOPES`` strings or ``DevUser`` objects (order kept)."""
    out: dict[str, DevUser] = {}
    for u in users:
        user = u if isinstance(u, DevUser) else parse_user(u)
        out[user.id] = user
    if not out:
        raise ValueError("the dev issuer needs at least one user")
    return out
