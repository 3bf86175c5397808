"""Importing fastmcp without the deprecation warnings it prints that are not the user's to act on.

fastmcp 2.14.7 imports ``authlib.jose`` and authlib's httpx client, and authlib 1.6+ warns about
both (``AuthlibDeprecationWarning``) at every server start. Exactly those are silenced, only around
our import of fastmcp: every other warning, and that one from the user's own code, still shows.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

#: Modules whose ``AuthlibDeprecationWarning`` is fastmcp's import, not the user's code.
_FROM = r"(fastmcp|authlib)(\.|$)"


@contextmanager
def quiet_fastmcp_import() -> Iterator[None]:
    """A block in which importing fastmcp shows no ``AuthlibDeprecationWarning`` (no-op without authlib)."""
    with warnings.catch_warnings():
        try:
            from authlib.deprecate import AuthlibDeprecationWarning  # type: ignore[import-untyped, unused-ignore]
        except ImportError:  # fastmcp 4 does not use authlib: nothing to silence
            pass
        else:
            warnings.filterwarnings("ignore", category=AuthlibDeprecationWarning, module=_FROM)
        yield
