"""Comparing a proof's ``htu`` with the request's URL the way RFC 9449 §4.3 asks.

Both sides lose their query and fragment, then get RFC 3986's syntax-based and scheme-based
normalization (§6.2.2, §6.2.3): scheme and host in lower case, the scheme's default port dropped,
an empty path as ``/``, percent-encodings in upper case and those of unreserved characters decoded,
dot segments removed. A trailing slash is significant (``/mcp`` and ``/mcp/`` are two resources).
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_URI_CHARS = 4096
_PCT = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
#: Characters no URI contains (RFC 3986 §2): whitespace, controls, and a few delimiters never allowed raw.
_NOT_IN_URI = re.compile(r'[\x00-\x20\x7f"<>\\^`{|}]')


def _pct(match: re.Match[str]) -> str:
    char = chr(int(match.group(1), 16))
    return char if char in _UNRESERVED else "%" + match.group(1).upper()


def _remove_dot_segments(path: str) -> str:
    out: list[str] = []
    segments = path.split("/")
    for segment in segments:
        if segment == ".":
            continue
        if segment == "..":
            if len(out) > 1:
                out.pop()
            continue
        out.append(segment)
    if segments[-1] in (".", ".."):
        out.append("")  # "/a/b/.." is the directory "/a/"
    return "/".join(out) or "/"


def canonical_uri(uri: str) -> str | None:
    """``uri`` without query and fragment, normalized; ``None`` if it is not an absolute http(s) URI."""
    if len(uri) > MAX_URI_CHARS or _NOT_IN_URI.search(uri):
        return None
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError:  # a bad port or IPv6 literal
        return None
    scheme = parts.scheme.lower()
    host = parts.hostname
    if scheme not in DEFAULT_PORTS or not host or "@" in parts.netloc:
        return None
    if ":" in host:
        host = f"[{host}]"
    authority = host if port is None or port == DEFAULT_PORTS[scheme] else f"{host}:{port}"
    path = _PCT.sub(_pct, parts.path) if "%" in parts.path else parts.path
    return f"{scheme}://{authority}{_remove_dot_segments(path) if path else '/'}"


def same_uri(htu: str, url: str) -> bool:
    """Whether a proof's ``htu`` names the request's ``url`` (both compared canonically)."""
    if htu == url:  # the common case: the client wrote the URL the server computed
        return True
    canonical = canonical_uri(htu)
    return canonical is not None and canonical == canonical_uri(url)
