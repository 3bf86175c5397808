"""The ``user-status`` stage: is the authenticated user known, active and not banned?

It looks the user up in a store chosen by DSN (PostgreSQL pool or embedded SQLite),
caches allowed and rejected answers (bounded, single-flight), and drops entries the
moment PostgreSQL NOTIFYs a change. A store that is down is a transient failure,
handled by ``on_error``; it never says anything about the user.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from pydantic import Field, model_validator

from fastapps_auth.backends.ttl_cache import TTLCache
from fastapps_auth.backends.users import (
    DEFAULT_BATCH_INFLIGHT,
    DEFAULT_BATCH_MAX_SIZE,
    DEFAULT_QUERY,
    NotifyingStore,
    PoolReset,
    StoreUnavailable,
    UserStore,
    open_user_store,
)
from fastapps_auth.clock import Clock
from fastapps_auth.component import ComponentOptions
from fastapps_auth.errors import ConfigError, Rejected
from fastapps_auth.keys import KeySelector
from fastapps_auth.stage import Stage, StageOptions, Verification

logger = logging.getLogger("fastapps_auth.user_status")

#: The description every rejection carries: it does not tell a caller whether the account exists.
DESCRIPTION = "account disabled"
#: A looked-up value longer than this cannot be a user id; it is rejected without a query or a cache entry.
MAX_KEY_CHARS = 1024
_CHANNEL = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_TRUE_STRINGS = frozenset({"t", "true", "1", "y", "yes", "on"})


class UserStatusOptions(StageOptions):
    """Options of the ``user-status`` stage."""

    dsn: str = Field(
        default="sqlite:///users.db",
        description="User store: postgresql://user@host/db (pooled asyncpg connections) "
        "or sqlite:///path.db (embedded).",
    )
    key: str = Field(default="subject", description="Which value is the user id: subject, client_id or claim:<name>.")
    query: str = Field(
        default=DEFAULT_QUERY,
        description="SQL returning the user's row; $1 is the user id. Missing active/banned columns mean "
        "active / not banned.",
    )
    cache_ttl: float = Field(default=30.0, ge=0, description="Seconds an allowed answer is cached (0: not cached).")
    negative_ttl: float = Field(
        default=5.0, ge=0, description="Seconds a rejection (unknown, inactive, banned) is cached (0: not cached)."
    )
    max_entries: int = Field(default=100_000, ge=1, description="Most users kept in the cache; the oldest go first.")
    timeout: float = Field(default=1.0, gt=0, description="Seconds one lookup may take before it counts as a failure.")
    notify_channel: str | None = Field(
        default=None,
        description="PostgreSQL channel to LISTEN on: a payload that is a user id drops that entry, '*' drops all.",
    )
    pool_min_size: int = Field(
        default=1, ge=0, description="PostgreSQL pool: connections opened by start() (idle ones stay open)."
    )
    pool_max_size: int = Field(default=10, ge=1, description="PostgreSQL pool: most connections at once.")
    pool_reset: PoolReset = Field(
        default="light",
        description="PostgreSQL pool: 'light' runs no reset query after a lookup (one round trip less); "
        "'full' runs asyncpg's Connection.reset() (RESET ALL, UNLISTEN *, ...) after each one.",
    )
    batch_max_size: int = Field(
        default=DEFAULT_BATCH_MAX_SIZE,
        ge=1,
        le=10_000,
        description="PostgreSQL: most lookups of different users sent as one query when they arrive together "
        "(1: one query per lookup).",
    )
    batch_inflight: int = Field(
        default=DEFAULT_BATCH_INFLIGHT,
        ge=1,
        description="PostgreSQL: queries in flight before further lookups wait to go out together as one batch "
        "(capped at pool_max_size: each query needs its own connection).",
    )

    @model_validator(mode="after")
    def _pool_sizes(self) -> UserStatusOptions:
        if self.pool_min_size > self.pool_max_size:
            raise ValueError("pool_min_size is greater than pool_max_size")
        return self


def storable(key: str) -> bool:
    """False for a value no text column holds: PostgreSQL refuses NUL, and a lone surrogate is not UTF-8.

    Such a value is an unknown user, not a store failure (which ``on_error = "allow"`` would let through).
    """
    if "\x00" in key:
        return False
    if key.isascii():
        return True
    try:
        key.encode()
    except UnicodeEncodeError:
        return False
    return True


def _truthy(value: Any) -> bool:
    if value is True or value is False:  # what a boolean column returns: the common case first
        return value
    if isinstance(value, str):
        return value.strip().lower() in _TRUE_STRINGS
    return bool(value)


def verdict(row: Mapping[str, Any] | None) -> str | None:
    """The rejection reason for a user's row, or ``None`` to let it pass.

    No row: ``user_unknown``. ``banned`` true: ``user_banned``. ``active`` false or NULL:
    ``user_inactive``. Column names match in any case; a column the query does not return counts
    as active / not banned.
    """
    if row is None:
        return "user_unknown"
    reason = None
    for name, value in row.items():
        # Case-insensitive, as SQL names are: SQLite names a result column as its table declares it
        # ("Banned"), whatever case the query wrote.
        column = name.lower()
        if column == "banned" and _truthy(value):
            return "user_banned"
        if column == "active" and not _truthy(value):
            reason = "user_inactive"
    return reason


class UserStatusStage(Stage[UserStatusOptions]):
    """Rejects tokens whose user is unknown, inactive or banned in the user store."""

    plugin_name: ClassVar[str] = "user-status"
    options_model: ClassVar[type[ComponentOptions]] = UserStatusOptions

    def __init__(
        self,
        options: UserStatusOptions | None = None,
        /,
        *,
        clock: Clock | None = None,
        store: UserStore | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(options, clock=clock, **kwargs)
        o = self.options
        self._key = KeySelector(o.key, allow_ip=False, stage=self.name)
        self._positive_ttl = o.cache_ttl
        self._negative_ttl = o.negative_ttl
        self._cache_off = o.cache_ttl == 0 and o.negative_ttl == 0
        self._store: UserStore = store or open_user_store(
            o.dsn,
            query=o.query,
            timeout=o.timeout,
            pool_min_size=o.pool_min_size,
            pool_max_size=o.pool_max_size,
            pool_reset=o.pool_reset,
            batch_max_size=o.batch_max_size,
            batch_inflight=o.batch_inflight,
            stage=self.name,
        )
        self._cache: TTLCache[str, str | None] = TTLCache(o.max_entries, clock=self.clock)
        self._invalidation_hooks: list[Callable[[str | None], None]] = []
        self._notifying: NotifyingStore | None = None
        if o.notify_channel is not None:
            if not _CHANNEL.match(o.notify_channel):
                raise ConfigError(
                    "a channel name is a letter or underscore, then letters, digits or underscores (at most 63)",
                    stage=self.name,
                    key="notify_channel",
                )
            if not (self._store.supports_notify and isinstance(self._store, NotifyingStore)):
                raise ConfigError(
                    "notify_channel needs a PostgreSQL dsn (LISTEN/NOTIFY); SQLite cannot push changes",
                    stage=self.name,
                    key="notify_channel",
                )
            self._notifying = self._store
            self._store.listen(o.notify_channel, self.invalidate, self.invalidate_all)
        self._reported: set[str] = set()
        self.invalidations = 0

    @property
    def store(self) -> UserStore:
        return self._store

    # -- the hot path ---------------------------------------------------------------------------

    async def __call__(self, v: Verification) -> None:
        key = self._key(v)
        if key is None or not key or len(key) > MAX_KEY_CHARS or not storable(key):
            v.cache_hit = False
            raise Rejected("user_unknown", DESCRIPTION)
        if self._cache_off and getattr(self._store, "coalesces", False):
            # Nothing to cache, and the store itself makes lookups of one key that wait together share
            # a query (one read after all of them arrived): the cache's single-flight task is pure cost.
            reason, hit = await self._lookup(key), False
        else:
            reason, hit = await self._cache.get_or_load(key, self._lookup, self._ttl)
        v.cache_hit = hit
        if reason is not None:
            raise Rejected(reason, DESCRIPTION)

    def _ttl(self, reason: str | None) -> float:
        return self._positive_ttl if reason is None else self._negative_ttl

    async def _lookup(self, key: str) -> str | None:
        if self._notifying is not None:
            self._notifying.ensure_listening()
        try:
            row = await self._store.fetch(key)
        except StoreUnavailable as exc:
            self._report(str(exc))
            raise
        return verdict(row)

    def _report(self, message: str) -> None:
        """Log a store failure at ERROR the first time it is seen (the chain logs each one briefly)."""
        if message in self._reported or len(self._reported) >= 100:
            return
        self._reported.add(message)
        logger.error("user-status %r: %s", self.name, message)

    # -- invalidation ------------------------------------------------------------------------------

    def invalidate(self, key: str) -> None:
        """Forget what is known about ``key`` (a NOTIFY payload, or an application that changed a user)."""
        self.invalidations += 1
        self._cache.invalidate(key)
        for hook in self._invalidation_hooks:
            hook(key)

    def invalidate_all(self) -> None:
        """Forget everything (``*`` notification, or the listener reconnected and may have missed some)."""
        self.invalidations += 1
        self._cache.clear()
        for hook in self._invalidation_hooks:
            hook(None)

    def on_invalidate(self, hook: Callable[[str | None], None]) -> None:
        """Call ``hook(key)`` after each invalidation (``None``: everything); for tests and metrics."""
        self._invalidation_hooks.append(hook)

    async def wait_listening(self, within: float | None = None) -> bool:
        """Start the NOTIFY listener if configured; True once it listens (False without a channel)."""
        if self._notifying is None:
            return False
        return await self._notifying.wait_listening(self.options.timeout * 5 if within is None else within)

    # -- lifecycle ------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the pool (or file) and the listener now; a store that is down is logged, not raised."""
        try:
            await self._store.start()
            if self._notifying is not None:
                await self._notifying.wait_listening(self.options.timeout * 5)
        except StoreUnavailable as exc:
            logger.warning("user-status %r could not open its store at start (%s); will retry on use", self.name, exc)

    async def aclose(self) -> None:
        await self._store.aclose()
        self._cache.clear()

    def stats(self) -> dict[str, float]:
        c = self._cache
        out: dict[str, float] = {
            "cache_entries": len(c),
            "cache_hits": c.hits,
            "cache_misses": c.misses,
            "lookups_inflight": c.inflight,
            "invalidations": self.invalidations,
        }
        out.update(self._store.stats())
        return out
