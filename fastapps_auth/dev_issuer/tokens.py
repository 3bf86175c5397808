"""What the dev issuer remembers between requests: codes, refresh tokens, opaque tokens, revocations.

Everything is keyed by the SHA-256 of the code or token (the raw value is never stored), bounded
in number, and expires by the injected clock (cachetools' ``TLRUCache``, one expiry per entry).
A full cache drops its oldest entries, which only ever makes a code or token unusable — except
revocations, which are refused when full rather than forgotten (forgetting would revive a token).
"""

from __future__ import annotations

import math
import secrets
import threading
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from cachetools import TLRUCache

from fastapps_auth.clock import Clock
from fastapps_auth.fingerprint import token_digest

V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class Login:
    """One authorization: who, for which client, scopes and resources, and how they authenticated.

    The code, the refresh tokens and the access tokens it leads to share its ``family``, so
    that all of them can be revoked together (a reused code or refresh token, RFC 9700 §4.14).
    """

    client_id: str
    subject: str
    scopes: tuple[str, ...] = ()
    resources: tuple[str, ...] = ()
    acr: str | None = None
    auth_time: int | None = None
    nonce: str | None = None
    family: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    jkt: str | None = None  # the DPoP key its code or refresh tokens are bound to (RFC 9449 §5, §10)


@dataclass(frozen=True, slots=True)
class PendingCode:
    login: Login
    redirect_uri: str | None  # as sent with the authorization request; the token request must repeat it
    code_challenge: str
    expires_at: float


@dataclass(slots=True)
class RefreshRecord:
    login: Login
    expires_at: float
    used: bool = False


@dataclass(slots=True)
class Family:
    expires_at: float
    access: dict[str, float] = field(default_factory=dict)  # jti -> exp of each access token issued
    refresh: set[bytes] = field(default_factory=set)


class StoreFull(RuntimeError):
    """A bounded store that must not forget (revocations) is full."""


@dataclass(frozen=True, slots=True)
class _Entry(Generic[V]):
    value: V
    expires_at: float


def _ttu(_key: object, entry: _Entry[Any], _now: float) -> float:
    return entry.expires_at


class _Expiring(Generic[V]):
    """A bounded map whose entries each expire at their own time."""

    def __init__(self, clock: Clock, maxsize: int) -> None:
        self._cache: TLRUCache[bytes | str, _Entry[V]] = TLRUCache(maxsize, _ttu, timer=clock.time)
        self.clock = clock

    def put(self, key: bytes | str, value: V, expires_at: float) -> None:
        if expires_at > self.clock.time():
            self._cache[key] = _Entry(value, expires_at)

    def get(self, key: bytes | str) -> V | None:
        entry = self._cache.get(key)
        return entry.value if entry is not None else None

    def pop(self, key: bytes | str) -> V | None:
        entry = self._cache.pop(key, None)
        return entry.value if entry is not None else None

    def full(self) -> bool:
        self._cache.expire()
        return len(self._cache) >= self._cache.maxsize


class TokenStore:
    """The issuer's memory, safe to use from the server's thread and a test's thread at once."""

    def __init__(self, clock: Clock, *, max_entries: int = 10_000, reuse_window: float = 600.0) -> None:
        self.clock = clock
        self.reuse_window = reuse_window
        self._lock = threading.RLock()
        self._codes: _Expiring[PendingCode] = _Expiring(clock, max_entries)
        self._redeemed: _Expiring[str] = _Expiring(clock, max_entries)  # code digest -> family
        self._refresh: _Expiring[RefreshRecord] = _Expiring(clock, max_entries)
        self._families: _Expiring[Family] = _Expiring(clock, max_entries)
        self._opaque: _Expiring[dict[str, Any]] = _Expiring(clock, max_entries)
        self._revoked: _Expiring[bool] = _Expiring(clock, max_entries)  # jti -> revoked until its exp
        self._logins: _Expiring[Any] = _Expiring(clock, 1000)  # login-page requests awaiting a click

    # -- authorization codes (single use) ------------------------------------------------------

    def put_code(self, code: str, pending: PendingCode) -> None:
        with self._lock:
            self._codes.put(token_digest(code), pending, pending.expires_at)

    def take_code(self, code: str) -> PendingCode | None:
        """The code's authorization, once: a second redemption revokes what the first one got."""
        digest = token_digest(code)
        with self._lock:
            pending = self._codes.pop(digest)
            if pending is not None:
                self._redeemed.put(digest, pending.login.family, self.clock.time() + self.reuse_window)
                return pending
            family = self._redeemed.get(digest)
            if family is not None:
                self.revoke_family(family)
            return None

    # -- refresh tokens (rotated at each use) ----------------------------------------------------

    def put_refresh(self, token: str, login: Login, expires_at: float) -> None:
        digest = token_digest(token)
        with self._lock:
            self._refresh.put(digest, RefreshRecord(login, expires_at), expires_at)
            family = self._family(login.family, expires_at)
            family.refresh.add(digest)

    def refresh_record(self, token: str) -> RefreshRecord | None:
        with self._lock:
            record = self._refresh.get(token_digest(token))
            return record if record is not None and not record.used else None

    def use_refresh(self, token: str) -> Login | None:
        """The refresh token's authorization, once; presenting a used one revokes its whole family."""
        with self._lock:
            record = self._refresh.get(token_digest(token))
            if record is None:
                return None
            if record.used:
                self.revoke_family(record.login.family)
                return None
            record.used = True
            return record.login

    # -- access tokens ---------------------------------------------------------------------------

    def record_access(self, family: str, jti: str, exp: float) -> None:
        with self._lock:
            access = self._family(family, exp).access
            now = self.clock.time()
            for old in [j for j, e in access.items() if e <= now]:  # expired anyway: nothing left to revoke
                del access[old]
            access[jti] = exp

    def put_opaque(self, token: str, claims: dict[str, Any]) -> None:
        exp = claims.get("exp")
        with self._lock:
            self._opaque.put(token_digest(token), dict(claims), float(exp) if exp is not None else math.inf)

    def opaque_claims(self, token: str) -> dict[str, Any] | None:
        with self._lock:
            claims = self._opaque.get(token_digest(token))
            return dict(claims) if claims is not None else None

    # -- revocation --------------------------------------------------------------------------------

    def revoke_jti(self, jti: str, exp: float | None) -> None:
        """Revoke the access token ``jti`` until it expires anyway (``StoreFull`` rather than forget one)."""
        with self._lock:
            if self._revoked.get(jti) is None and self._revoked.full():
                raise StoreFull("too many revoked tokens are still valid")
            self._revoked.put(jti, True, exp if exp is not None else math.inf)

    def is_revoked(self, jti: object) -> bool:
        with self._lock:
            return isinstance(jti, str) and self._revoked.get(jti) is not None

    def revoke_family(self, family_id: str) -> None:
        """Revoke every access and refresh token of one authorization."""
        with self._lock:
            family = self._families.pop(family_id)
            if family is None:
                return
            for digest in family.refresh:
                self._refresh.pop(digest)
            for jti, exp in family.access.items():
                self.revoke_jti(jti, exp)

    def _family(self, family_id: str, expires_at: float) -> Family:
        family = self._families.get(family_id)
        if family is None or family.expires_at < expires_at:
            family = family or Family(expires_at)
            family.expires_at = expires_at
            self._families.put(family_id, family, expires_at)
        return family

    # -- login-page requests -------------------------------------------------------------------

    def put_login(self, request: Any, lifetime: float = 600.0) -> str:
        request_id = secrets.token_urlsafe(16)
        with self._lock:
            self._logins.put(request_id, request, self.clock.time() + lifetime)
        return request_id

    def take_login(self, request_id: str) -> Any:
        with self._lock:
            return self._logins.pop(request_id)
