"""A key set: the usable keys of a JWKS document, indexed for the hot path, within bounds."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from fastapps_auth.backends.jwks.keys import KeyImportError, VerifyKey, key_from_jwk

logger = logging.getLogger("fastapps_auth.jwks")

#: Keys beyond this many in one key set are ignored: a token without ``kid`` tries each candidate.
MAX_KEYS = 50
#: Entries of a fetched key set examined at most: a set padded with junk costs bounded work and logging.
MAX_JWKS_ENTRIES = 1000


class KeySet:
    """Keys indexed for the hot path: by ``kid``, and by algorithm for tokens without one."""

    __slots__ = ("anonymous_by_alg", "by_alg", "by_kid", "keys")

    def __init__(self, keys: Iterable[VerifyKey]) -> None:
        self.keys: tuple[VerifyKey, ...] = tuple(keys)[:MAX_KEYS]
        self.by_kid: dict[str, tuple[VerifyKey, ...]] = {}
        by_alg: dict[str, list[VerifyKey]] = {}
        anonymous: dict[str, list[VerifyKey]] = {}
        for k in self.keys:
            if k.kid is not None:
                self.by_kid[k.kid] = (*self.by_kid.get(k.kid, ()), k)
            for alg in k.verifiers:
                by_alg.setdefault(alg, []).append(k)
                if k.kid is None:
                    anonymous.setdefault(alg, []).append(k)
        self.by_alg = {a: tuple(ks) for a, ks in by_alg.items()}
        self.anonymous_by_alg = {a: tuple(ks) for a, ks in anonymous.items()}

    def candidates(self, kid: str | None, alg: str) -> tuple[VerifyKey, ...]:
        """Keys to try for a token's ``kid``/``alg``; empty when none is known (an unknown key)."""
        if kid is None:
            return self.by_alg.get(alg, ())
        found = self.by_kid.get(kid)
        if found is not None:
            return found
        return self.anonymous_by_alg.get(alg, ())

    def __len__(self) -> int:
        return len(self.keys)


def parse_jwks(doc: Any, allowed: Iterable[str], *, strict: bool) -> KeySet:
    """A ``KeySet`` from a JWKS document. ``strict``: a bad key is an error, else it is skipped (logged)."""
    if not isinstance(doc, Mapping) or not isinstance(doc.get("keys"), list):
        raise KeyImportError('a JWKS must be an object with a "keys" list')
    allowed = frozenset(allowed)
    entries: list[Any] = doc["keys"]
    if not strict and len(entries) > MAX_JWKS_ENTRIES:
        logger.warning("JWKS has %d entries; only the first %d are examined", len(entries), MAX_JWKS_ENTRIES)
        entries = entries[:MAX_JWKS_ENTRIES]
    keys: list[VerifyKey] = []
    skipped: list[str] = []
    for i, jwk in enumerate(entries):
        if not strict and len(keys) == MAX_KEYS:
            logger.warning("JWKS has more than %d usable keys; only the first %d are used", MAX_KEYS, MAX_KEYS)
            break
        try:
            key = key_from_jwk(jwk, allowed)
        except KeyImportError as exc:
            if strict:
                raise KeyImportError(f"keys[{i}]: {exc}") from None
            skipped.append(f"keys[{i}]: {str(exc)[:120]}")
            continue
        if key is not None:
            keys.append(key)
    if skipped:  # one line per key set, however many bad keys it holds
        more = f" (and {len(skipped) - 3} more)" if len(skipped) > 3 else ""
        logger.warning("ignoring %d unusable JWKS key(s): %s%s", len(skipped), "; ".join(skipped[:3]), more)
    if len(keys) > MAX_KEYS:
        logger.warning("JWKS has %d usable keys; only the first %d are used", len(keys), MAX_KEYS)
    return KeySet(keys)
