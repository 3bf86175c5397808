"""Server-provided DPoP nonces (RFC 9449 §9) without shared state: HMAC-signed, rotating with time.

A nonce is ``base64url(slot ‖ HMAC-SHA256(secret, label ‖ slot)[:16])`` where ``slot`` is the wall
time divided by ``lifetime``. The current slot's nonce and the previous one's are accepted, so a
nonce lives between ``lifetime`` and twice that, and a client that just got one never sees it refused
at a slot boundary. Every process that shares ``secret`` issues and accepts the same nonces: a fleet
needs the secret, not a store. Nonces are unpredictable without the secret (RFC 9449 §8).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import os

#: Shortest secret accepted, bytes (the HMAC-SHA256 key size).
MIN_SECRET_BYTES = 32
_LABEL = b"fastapps-auth dpop nonce\x00"
_MAC_BYTES = 16
_SLOT_BYTES = 8
#: Characters of a nonce (24 bytes, base64url without padding).
NONCE_CHARS = 32


class NonceIssuer:
    """Issues the current nonce and accepts the current and the previous one."""

    __slots__ = ("_current", "_secret", "lifetime")

    def __init__(self, secret: bytes | None = None, *, lifetime: float = 300.0) -> None:
        if secret is None:
            secret = os.urandom(MIN_SECRET_BYTES)  # one process: its own nonces only
        if len(secret) < MIN_SECRET_BYTES:
            raise ValueError(f"the nonce secret must be at least {MIN_SECRET_BYTES} bytes")
        if not (math.isfinite(lifetime) and lifetime > 0):
            raise ValueError("the nonce lifetime must be a positive number of seconds")
        self._secret = secret
        self.lifetime = float(lifetime)
        self._current: tuple[int, str] = (-1, "")

    def _slot(self, now: float) -> int:
        return max(0, math.floor(now / self.lifetime))

    def _make(self, slot: int) -> str:
        packed = slot.to_bytes(_SLOT_BYTES, "big")
        mac = hmac.new(self._secret, _LABEL + packed, hashlib.sha256).digest()[:_MAC_BYTES]
        return base64.urlsafe_b64encode(packed + mac).rstrip(b"=").decode("ascii")

    def current(self, now: float) -> str:
        """The nonce to send now (``DPoP-Nonce``); it changes once per ``lifetime``."""
        slot = self._slot(now)
        cached = self._current
        if cached[0] != slot:
            cached = self._current = (slot, self._make(slot))
        return cached[1]

    def accepts(self, nonce: str, now: float) -> bool:
        """Whether ``nonce`` is this issuer's, of the current or the previous slot."""
        if len(nonce) != NONCE_CHARS:
            return False
        try:
            raw = base64.urlsafe_b64decode(nonce.encode("ascii") + b"==")
        except (binascii.Error, ValueError, UnicodeEncodeError):
            return False
        slot = int.from_bytes(raw[:_SLOT_BYTES], "big")
        current = self._slot(now)
        if slot not in (current, current - 1):
            return False
        return hmac.compare_digest(self._make(slot), nonce)
