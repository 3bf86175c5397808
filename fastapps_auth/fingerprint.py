"""Token fingerprints: the only form in which a token may be logged or stored."""

from __future__ import annotations

import hashlib


def token_digest(token: str) -> bytes:
    """SHA-256 of the token, the key of every cache that is keyed by token."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def fingerprint(token: str) -> str:
    """First 12 hex digits of the token's SHA-256: enough to correlate, useless to replay."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()[:12]
