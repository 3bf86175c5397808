"""User stores: where the user-status stage reads a user's row, chosen by DSN scheme.

The stage knows the rule (unknown, inactive, banned); a store knows only how to run
one parameterized query and return the row (limits' strategy/storage split).
``postgresql://`` opens an asyncpg pool, ``sqlite:///path`` an embedded SQLite file.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, Literal, Protocol, runtime_checkable

from fastapps_auth.errors import ConfigError, TransientError

DEFAULT_QUERY = "SELECT active, banned FROM users WHERE id = $1"
POSTGRES_SCHEMES = ("postgresql", "postgres")
SQLITE_SCHEMES = ("sqlite",)

PoolReset = Literal["light", "full"]

#: Most distinct keys one batched PostgreSQL query carries.
DEFAULT_BATCH_MAX_SIZE = 256
#: PostgreSQL queries (one-key or batched) in flight before further lookups wait to form a batch.
DEFAULT_BATCH_INFLIGHT = 2

_PLACEHOLDER = re.compile(r"\$(\d+)")


class StoreUnavailable(TransientError):
    """The store could not answer (down, slow, missing file or table): says nothing about the user."""


@runtime_checkable
class UserStore(Protocol):
    """One query, one parameter, one row or none. Opens lazily; ``aclose`` is idempotent.

    A store may also have a ``coalesces`` attribute, true while concurrent lookups of one key
    that wait together share one query (the PostgreSQL store's batching); then the stage, with
    its cache off, calls ``fetch`` directly instead of through the cache's single-flight.
    """

    #: True when the store can push invalidations (PostgreSQL LISTEN/NOTIFY).
    supports_notify: bool

    async def fetch(self, key: str) -> Mapping[str, Any] | None:
        """The row for ``key`` (column name → value), or ``None`` when there is none."""
        ...

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...

    def stats(self) -> dict[str, float]: ...


@runtime_checkable
class NotifyingStore(UserStore, Protocol):
    """A store that can tell which users changed."""

    def listen(self, channel: str, on_key: Callable[[str], None], on_reset: Callable[[], None]) -> None:
        """Deliver each notification payload on ``channel`` to ``on_key``; ``on_reset`` when some may be lost."""
        ...

    def ensure_listening(self) -> None:
        """Start the listener in the background if it is not running."""
        ...

    async def wait_listening(self, within: float) -> bool:
        """Start the listener if needed; True once it is connected (within ``within`` seconds)."""
        ...


def check_query(query: str, *, stage: str | None = None) -> str:
    """The query if it uses exactly the one parameter ``$1`` (the looked-up value), else ``ConfigError``."""
    numbers = {int(n) for n in _PLACEHOLDER.findall(query)}
    if 1 not in numbers:
        raise ConfigError("the query must use $1 for the looked-up value", stage=stage, key="query")
    if numbers - {1}:
        raise ConfigError("the query may use only one parameter, $1", stage=stage, key="query")
    return query


def scheme_of(dsn: str) -> str:
    head, sep, _ = dsn.partition("://")
    return head.lower().split("+", 1)[0] if sep else ""


def open_user_store(
    dsn: str,
    *,
    query: str = DEFAULT_QUERY,
    timeout: float = 1.0,
    pool_min_size: int = 1,
    pool_max_size: int = 10,
    pool_reset: PoolReset = "light",
    batch_max_size: int = DEFAULT_BATCH_MAX_SIZE,
    batch_inflight: int = DEFAULT_BATCH_INFLIGHT,
    stage: str | None = None,
) -> UserStore:
    """The store for ``dsn``'s scheme. No I/O here: the store opens on first use."""
    check_query(query, stage=stage)
    scheme = scheme_of(dsn)
    if scheme in POSTGRES_SCHEMES:
        from fastapps_auth.backends.postgres import PostgresUserStore

        return PostgresUserStore(
            dsn,
            query=query,
            timeout=timeout,
            min_size=pool_min_size,
            max_size=pool_max_size,
            reset=pool_reset,
            batch_max_size=batch_max_size,
            batch_inflight=batch_inflight,
        )
    if scheme in SQLITE_SCHEMES:
        from fastapps_auth.backends.sqlite import SqliteUserStore, sqlite_path

        return SqliteUserStore(sqlite_path(dsn, stage=stage), query=query, timeout=timeout)
    raise ConfigError(
        "unsupported DSN scheme (use postgresql://user@host/db or sqlite:///path/to/users.db)", stage=stage, key="dsn"
    )
