"""User stores: where the user-status stage reads a user's row, chosen by the DSN's scheme.

As ``limits`` chooses its storage by URI: ``STORES`` maps a scheme to the store class that
owns its driver (``postgresql://``: an asyncpg pool; ``sqlite:///path``: an embedded file).
A store module, and its driver, is imported only when a DSN names it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from fastapps_auth.backends.users.base import (
    DEFAULT_QUERY,
    PROBE_KEY,
    PoolReset,
    StoreUnavailable,
    UserStore,
    UserStoreOptions,
    scheme_of,
)
from fastapps_auth.errors import ConfigError

__all__ = [
    "DEFAULT_QUERY",
    "PROBE_KEY",
    "STORES",
    "PoolReset",
    "StoreUnavailable",
    "UserStore",
    "UserStoreOptions",
    "open_user_store",
    "scheme_of",
]

#: DSN scheme → ``module:class`` of its store, and the extra that installs its driver.
STORES: dict[str, tuple[str, str]] = {
    "postgresql": ("fastapps_auth.backends.users.postgres:PostgresUserStore", "postgres"),
    "postgres": ("fastapps_auth.backends.users.postgres:PostgresUserStore", "postgres"),
    "sqlite": ("fastapps_auth.backends.users.sqlite:SqliteUserStore", "sqlite"),
}

StoreFactory = Callable[..., UserStore]


def open_user_store(options: UserStoreOptions, *, stage: str | None = None) -> UserStore:
    """The store for ``options.dsn``'s scheme, which validates its own options. No I/O here."""
    entry = STORES.get(scheme_of(options.dsn))
    if entry is None:
        raise ConfigError(
            "unsupported DSN scheme (use postgresql://user@host/db or sqlite:///path/to/users.db)",
            stage=stage,
            key="dsn",
        )
    target, extra = entry
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"this DSN needs the {extra} extra ({exc.name or exc}): pip install 'fastapps-auth[{extra}]'",
            stage=stage,
            key="dsn",
        ) from None
    factory: StoreFactory = getattr(module, class_name)
    return factory(options, stage=stage)
