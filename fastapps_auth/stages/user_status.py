"""The ``user-status`` stage: is the authenticated user known, active and not banned?

It looks the user up in a store chosen by DSN (PostgreSQL pool or embedded SQLite),
caches allowed and rejected answers (bounded, single-flight), and drops entries the
moment PostgreSQL NOTIFYs a change. A store that is down is a transient failure,
handled by ``on_error``; it never says anything about the user.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from pydantic import Field, model_validator

from fastapps_auth.backends.ttl_cache import TTLCache
from fastapps_auth.backends.users import StoreUnavailable, UserStore, UserStoreOptions, open_user_store
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
_TRUE_STRINGS = frozenset({"t", "true", "1", "y", "yes", "on"})

#: Options that no longer mean anything: accepted with a warning (once per process) until the next release.
REMOVED_OPTIONS = {
    "batch_max_size": "concurrent lookups are no longer batched: each is one query on asyncpg's pool",
    "batch_inflight": "concurrent lookups are no longer batched: each is one query on asyncpg's pool",
}
_warned: set[str] = set()


class UserStatusOptions(UserStoreOptions, StageOptions):
    """Options of the ``user-status`` stage: the rule and the cache here, the store's in ``UserStoreOptions``."""

    key: str = Field(default="subject", description="Which value is the user id: subject, client_id or claim:<name>.")
    cache_ttl: float = Field(default=30.0, ge=0, description="Seconds an allowed answer is cached (0: not cached).")
    negative_ttl: float = Field(
        default=5.0, ge=0, description="Seconds a rejection (unknown, inactive, banned) is cached (0: not cached)."
    )
    max_entries: int = Field(
        default=100_000, ge=1, description="Most users kept in the cache; the least recently used go first."
    )

    @model_validator(mode="before")
    @classmethod
    def _drop_removed(cls, data: Any) -> Any:
        if not isinstance(data, Mapping) or not REMOVED_OPTIONS.keys() & data.keys():
            return data
        kept = dict(data)
        for option in sorted(REMOVED_OPTIONS.keys() & data.keys()):
            del kept[option]
            if option not in _warned:
                _warned.add(option)
                name = data.get("name")
                logger.warning(
                    "%s: option %s is ignored (%s); remove it, it will be an error in the next release",
                    f"user-status {name!r}" if isinstance(name, str) else "user-status",
                    option,
                    REMOVED_OPTIONS[option],
                )
        return kept


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
        self._store: UserStore = store or open_user_store(o, stage=self.name)
        self._cache: TTLCache[str, str | None] = TTLCache(o.max_entries, clock=self.clock)
        self._invalidation_hooks: list[Callable[[str | None], None]] = []
        if o.notify_channel is not None:
            if not self._store.notifies:
                raise ConfigError(
                    "notify_channel needs a PostgreSQL dsn (LISTEN/NOTIFY); SQLite cannot push changes",
                    stage=self.name,
                    key="notify_channel",
                )
            self._store.listen(o.notify_channel, self.invalidate, self.invalidate_all)
        self._reported: set[str] = set()
        self.invalidations = 0

    @property
    def store(self) -> UserStore:
        return self._store

    # -- the hot path ---------------------------------------------------------------------------

    async def __call__(self, v: Verification) -> None:
        if self.closed:  # the chain refuses a closed stage itself; this is for a stage called on its own
            raise Rejected(
                "closed",
                "the authorization service is shutting down",
                error="temporarily_unavailable",
                status=503,
                retry_after=self.retry_after,
                transient=True,
            )
        key = self._key(v)
        if not key or len(key) > MAX_KEY_CHARS or not storable(key):
            v.cache_hit = False
            raise Rejected("user_unknown", DESCRIPTION)
        if self._cache_off:
            # Nothing to cache, and no sharing either: every lookup is answered by a read that
            # started after it arrived, never by one already in flight.
            reason, hit = await self._lookup(key), False
        else:
            reason, hit = await self._cache.get_or_load(key, self._lookup, self._ttl)
        v.cache_hit = hit
        if reason is not None:
            raise Rejected(reason, DESCRIPTION)

    def _ttl(self, reason: str | None) -> float:
        return self._positive_ttl if reason is None else self._negative_ttl

    async def _lookup(self, key: str) -> str | None:
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
        if self.options.notify_channel is None or self.closed:
            return False
        return await self._store.wait_listening(self.options.timeout * 5 if within is None else within)

    # -- lifecycle ------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the pool (or file) and the listener now; a store that is down is logged, never raised."""
        if self.closed:
            return
        try:
            await self._store.start()
        except StoreUnavailable as exc:
            logger.warning("user-status %r could not open its store at start (%s); will retry on use", self.name, exc)
            return
        await self.wait_listening()

    async def probe(self) -> None:
        """Run the user query once (and check LISTEN, with a channel); ``StoreUnavailable`` says what is wrong."""
        await self._store.probe()

    async def aclose(self) -> None:
        """Close the store; from now on every lookup is refused (503) and nothing is opened again."""
        self.closed = True
        await self._store.aclose()
        self._cache.clear()

    def stats(self) -> dict[str, float]:
        c = self._cache.stats()
        out: dict[str, float] = {
            "cache_entries": c["entries"],
            "cache_hits": c["hits"],
            "cache_misses": c["misses"],
            "lookups_inflight": c["inflight"],
            "invalidations": self.invalidations,
        }
        out.update(self._store.stats())
        return out
