"""Signing keys for the dev issuer, kept in a local folder (or in memory for tests).

One active key per algorithm signs new tokens. ``rotate`` makes new active keys and
keeps the old ones in the published JWKS for a grace period, as real issuers do, so
tokens signed just before a rotation still verify until they expire.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from joserfc.jwk import ECKey, KeyParameters, RSAKey

from fastapps_auth.clock import SYSTEM_CLOCK, Clock

#: Algorithms the dev issuer can sign with, and the key each needs.
ALGORITHMS: dict[str, tuple[str, str | int]] = {
    "RS256": ("RSA", 2048),
    "ES256": ("EC", "P-256"),
}
DEFAULT_ALGORITHMS: tuple[str, ...] = ("RS256", "ES256")
KEYS_FILE = "keys.json"

SigningKey = RSAKey | ECKey


def generate_key(alg: str, kid: str | None = None) -> SigningKey:
    """A fresh private key for ``alg`` with ``kid``, ``alg`` and ``use: sig`` set."""
    if alg not in ALGORITHMS:
        raise ValueError(f"unsupported algorithm {alg!r} (supported: {', '.join(ALGORITHMS)})")
    kty, size = ALGORITHMS[alg]
    params: KeyParameters = {"kid": kid or f"{alg.lower()}-{secrets.token_hex(4)}", "alg": alg, "use": "sig"}
    if kty == "RSA":
        return RSAKey.generate_key(int(size), parameters=params, private=True)
    return ECKey.generate_key(str(size), parameters=params, private=True)


def import_key(jwk: dict[str, Any]) -> SigningKey:
    """A private key from its JWK dict (RSA or EC)."""
    if jwk.get("kty") == "RSA":
        return RSAKey.import_key(jwk)
    if jwk.get("kty") == "EC":
        return ECKey.import_key(jwk)
    raise ValueError(f"unsupported key type {jwk.get('kty')!r}")


@dataclass(slots=True)
class StoredKey:
    """A key and its lifecycle: active until ``retired_at``, published until ``drop_at``."""

    key: SigningKey
    created: float
    retired_at: float | None = None
    drop_at: float | None = None

    @property
    def kid(self) -> str:
        return str(self.key.kid)

    @property
    def alg(self) -> str:
        return str(self.key.alg)

    @property
    def active(self) -> bool:
        return self.retired_at is None

    def public_jwk(self) -> dict[str, Any]:
        jwk = dict(self.key.as_dict(private=False))
        jwk.update(kid=self.kid, alg=self.alg, use="sig")
        return jwk

    def to_json(self) -> dict[str, Any]:
        return {
            "created": self.created,
            "retired_at": self.retired_at,
            "drop_at": self.drop_at,
            "jwk": self.key.as_dict(private=True),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StoredKey:
        return cls(import_key(data["jwk"]), float(data["created"]), data.get("retired_at"), data.get("drop_at"))


def _stamp(path: Path) -> tuple[int, int, int]:
    # Saves replace the file, so the inode changes even when the mtime's resolution is coarse.
    st = path.stat()
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class KeyStore:
    """The issuer's keys: in ``folder/keys.json`` (mode 0600), or in memory when ``folder`` is None.

    Another process (``dev-issuer rotate``) may change the file while a server runs:
    every read checks the file's modification time and reloads when it changed.
    """

    def __init__(
        self,
        folder: str | os.PathLike[str] | None = None,
        *,
        algorithms: Sequence[str] = DEFAULT_ALGORITHMS,
        clock: Clock | None = None,
        seed: Iterable[SigningKey] = (),
    ) -> None:
        for alg in algorithms:
            if alg not in ALGORITHMS:
                raise ValueError(f"unsupported algorithm {alg!r} (supported: {', '.join(ALGORITHMS)})")
        self.folder = Path(folder) if folder is not None else None
        self.algorithms = tuple(algorithms)
        self.clock = clock or SYSTEM_CLOCK
        self._lock = threading.RLock()
        self._keys: list[StoredKey] = []
        self._stamp: tuple[int, int, int] | None = None
        with self._lock:
            self._load()
            now = self.clock.time()
            seeded = {k.alg: k for k in seed}
            changed = False
            for alg in self.algorithms:
                if self._active(alg) is None:
                    key = seeded.get(alg) or generate_key(alg)
                    self._keys.append(StoredKey(key, now))
                    changed = True
            if changed:
                self._save()

    @property
    def path(self) -> Path | None:
        return self.folder / KEYS_FILE if self.folder is not None else None

    # -- persistence ---------------------------------------------------------------------

    def _load(self) -> None:
        path = self.path
        if path is None or not path.exists():
            return
        data = json.loads(path.read_text())
        self._keys = [StoredKey.from_json(k) for k in data.get("keys", [])]
        self._stamp = _stamp(path)

    def _save(self) -> None:
        path = self.path
        if path is None or self.folder is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # a stale temporary file keeps its mode through O_CREAT
        with os.fdopen(fd, "w") as f:
            json.dump({"keys": [k.to_json() for k in self._keys]}, f, indent=2)
        os.replace(tmp, path)
        self._stamp = _stamp(path)

    def _refresh(self) -> None:
        path = self.path
        if path is None:
            return
        try:
            stamp = _stamp(path)
        except FileNotFoundError:
            return
        if stamp != self._stamp:
            self._load()

    def _prune(self, now: float) -> bool:
        kept = [k for k in self._keys if k.drop_at is None or k.drop_at > now]
        dropped = len(kept) != len(self._keys)
        self._keys = kept
        return dropped

    def _active(self, alg: str) -> StoredKey | None:
        return next((k for k in reversed(self._keys) if k.active and k.alg == alg), None)

    # -- the public API ------------------------------------------------------------------

    def signing_key(self, alg: str = "RS256") -> SigningKey:
        """The active key for ``alg``; new tokens are signed with it."""
        with self._lock:
            self._refresh()
            found = self._active(alg)
            if found is None:
                raise ValueError(f"no active {alg} key (this issuer signs with: {', '.join(self.algorithms)})")
            return found.key

    def key(self, kid: str) -> SigningKey | None:
        """Any published key (active or in its grace period) by ``kid``."""
        with self._lock:
            self._refresh()
            self._prune(self.clock.time())
            return next((k.key for k in self._keys if k.kid == kid), None)

    def published(self) -> list[StoredKey]:
        """Every published key, oldest first (active and within their grace period)."""
        with self._lock:
            self._refresh()
            self._prune(self.clock.time())
            return list(self._keys)

    def jwks(self) -> dict[str, Any]:
        """The public JWK set: active keys and retired keys still in their grace period."""
        return {"keys": [k.public_jwk() for k in self.published()]}

    def rotate(self, *, grace: float = 3600.0, algorithms: Sequence[str] | None = None) -> list[str]:
        """New active keys for ``algorithms`` (default all); old ones stay published ``grace`` seconds.

        Returns the new key ids. ``grace=0`` drops the old keys at once.
        """
        if not math.isfinite(grace) or grace < 0:
            raise ValueError("grace must be a finite number of seconds >= 0")
        with self._lock:
            self._refresh()
            now = self.clock.time()
            new: list[str] = []
            for alg in algorithms or self.algorithms:
                if alg not in self.algorithms:
                    raise ValueError(f"this issuer does not sign with {alg}")
                for k in self._keys:
                    if k.active and k.alg == alg:
                        k.retired_at, k.drop_at = now, now + grace
                key = generate_key(alg)
                self._keys.append(StoredKey(key, now))
                new.append(str(key.kid))
            self._prune(now)
            self._save()
            return new
