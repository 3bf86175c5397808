"""What every user store shares: the protocol, the failure it raises, and the options it reads.

A store knows only how to run one parameterized query and return the row (limits'
strategy/storage split); the rule (unknown, inactive, banned) is the stage's.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Literal, Protocol
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fastapps_auth.errors import TransientError

DEFAULT_QUERY = "SELECT active, banned FROM users WHERE id = $1"
#: The value ``probe()`` looks up: whether a row exists for it does not matter.
PROBE_KEY = "fastapps-auth-probe"

PoolReset = Literal["light", "full"]

_PLACEHOLDER = re.compile(r"\$(\d+)")
_CHANNEL = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


class StoreUnavailable(TransientError):
    """The store could not answer (down, slow, missing file or table): says nothing about the user."""


class UserStoreOptions(BaseModel):
    """The options a user store reads, under the names users write; the stage's options extend them."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    dsn: str = Field(
        default="sqlite:///users.db",
        description="User store: postgresql://user@host/db (an asyncpg pool) or sqlite:///path.db (embedded).",
    )
    query: str = Field(
        default=DEFAULT_QUERY,
        description="SQL returning the user's row; $1 is the user id. Missing active/banned columns mean "
        "active / not banned.",
    )
    timeout: float = Field(
        default=1.0, gt=0, description="Seconds one lookup may take (waiting for a connection included)."
    )
    notify_channel: str | None = Field(
        default=None,
        description="PostgreSQL channel to LISTEN on: a payload that is a user id drops that entry, '*' drops all.",
    )
    listen_dsn: str | None = Field(
        default=None,
        description="PostgreSQL: where the NOTIFY listener connects (default: dsn), e.g. the server itself "
        "while lookups go through PgBouncer in transaction mode.",
    )
    pool_min_size: int = Field(default=1, ge=0, description="PostgreSQL pool: connections kept open.")
    pool_max_size: int = Field(default=10, ge=1, description="PostgreSQL pool: most connections at once.")
    pool_reset: PoolReset = Field(
        default="light",
        description="PostgreSQL pool: 'light' runs no reset query when a lookup gives its connection back "
        "(one round trip less); 'full' runs asyncpg's Connection.reset() (RESET ALL, UNLISTEN *, ...).",
    )
    statement_cache_size: int = Field(
        default=100,
        ge=0,
        description="PostgreSQL: asyncpg's prepared-statement cache per connection; 0 behind PgBouncer in "
        "transaction or statement mode (before 1.21, or without max_prepared_statements).",
    )

    @field_validator("query")
    @classmethod
    def _one_parameter(cls, query: str) -> str:
        numbers = {int(n) for n in _PLACEHOLDER.findall(query)}
        if 1 not in numbers:
            raise ValueError("the query must use $1 for the looked-up value")
        if numbers - {1}:
            raise ValueError("the query may use only one parameter, $1")
        return query

    @field_validator("notify_channel")
    @classmethod
    def _channel_name(cls, channel: str | None) -> str | None:
        if channel is not None and not _CHANNEL.match(channel):
            raise ValueError("a channel name is a letter or underscore, then letters, digits or underscores (<= 63)")
        return channel

    @model_validator(mode="after")
    def _pool_sizes(self) -> UserStoreOptions:
        if self.pool_min_size > self.pool_max_size:
            raise ValueError("pool_min_size is greater than pool_max_size")
        return self


class UserStore(Protocol):
    """One query, one parameter, one row or none. Opens lazily; ``aclose`` is idempotent and final."""

    #: The one capability a store declares: it can push changes (``listen`` works).
    notifies: ClassVar[bool]

    async def fetch(self, key: str) -> Mapping[str, Any] | None:
        """The row for ``key`` (column name → value), or ``None``. A failure is ``StoreUnavailable``."""
        ...

    def listen(self, channel: str, on_key: Callable[[str], None], on_reset: Callable[[], None]) -> None:
        """Deliver each key changed on ``channel`` to ``on_key``; ``on_reset`` when some may have been missed.

        Called only on a store that ``notifies``.
        """
        ...

    async def wait_listening(self, within: float) -> bool:
        """Start listening if needed; True once it listens (within ``within`` seconds)."""
        ...

    async def start(self) -> None:
        """Open now instead of at first use; ``StoreUnavailable`` if the store cannot be reached."""
        ...

    async def probe(self) -> None:
        """Reach the store and run the query once; ``StoreUnavailable`` with a one-line, secret-free message."""
        ...

    async def aclose(self) -> None: ...

    def stats(self) -> dict[str, float]: ...


def scheme_of(dsn: str) -> str:
    """``postgresql`` for ``postgresql+asyncpg://...``: the part before ``://`` and ``+``, lowercased."""
    head, sep, _ = dsn.partition("://")
    return head.lower().split("+", 1)[0] if sep else ""


def describe(exc: BaseException, dsn: str = "") -> str:
    """Exception class and first line, without the DSN or its password (a driver may echo them)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if dsn:
        text = text.replace(dsn, "<dsn>")
        try:
            password = urlsplit(dsn).password
        except ValueError:
            password = None
        if password:
            text = text.replace(password, "***")
    return f"{type(exc).__name__}: {text}"[:200] if text else type(exc).__name__
