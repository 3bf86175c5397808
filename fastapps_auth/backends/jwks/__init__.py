"""Keys for the ``jwt`` stage: key import (``keys``), key sets (``keyset``) and where they come from (``source``).

``fastapps_auth.backends.jwks`` keeps exporting what it did as a module: ``KeySet``, ``KeySource``,
``RemoteKeySource``, ``parse_jwks``, ``static_source``, ``FetchError`` and the bounds.
"""

from __future__ import annotations

from fastapps_auth.backends.discovery import discovery_urls
from fastapps_auth.backends.http_json import FetchError
from fastapps_auth.backends.jwks.keys import KeyImportError, VerifyKey
from fastapps_auth.backends.jwks.keyset import MAX_JWKS_ENTRIES, MAX_KEYS, KeySet, parse_jwks
from fastapps_auth.backends.jwks.source import KeySource, RemoteKeySource, cache_ttl, static_source

__all__ = [
    "MAX_JWKS_ENTRIES",
    "MAX_KEYS",
    "FetchError",
    "KeyImportError",
    "KeySet",
    "KeySource",
    "RemoteKeySource",
    "VerifyKey",
    "cache_ttl",
    "discovery_urls",
    "parse_jwks",
    "static_source",
]
