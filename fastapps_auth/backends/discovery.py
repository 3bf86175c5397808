"""Authorization server metadata: where an issuer's endpoints are (OIDC discovery, then RFC 8414).

The one place the jwt stage's key source and the introspection client find their URL: the metadata's
``issuer`` must equal the configured issuer exactly, and the endpoint it names must be https unless
the issuer itself is on loopback, and carry no user information (``https://user:pw@host/``: httpx
would send it as Basic credentials in place of the client's own, and it would show in every error).
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit, urlunsplit

from fastapps_auth.backends.http_json import FetchError, JSONClient
from fastapps_auth.endpoints import check_url, is_loopback

__all__ = ["discover_endpoint", "discovery_urls", "has_userinfo"]


def has_userinfo(url: str) -> bool:
    """Whether ``url`` names a user (``user@`` or ``user:password@`` before the host)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False  # not a URL: check_url refuses it
    return "@" in parts.netloc


def discovery_urls(issuer: str) -> list[str]:
    """OIDC discovery (issuer + path), then RFC 8414 (well-known inserted before the issuer's path)."""
    parts = urlsplit(issuer)
    path = parts.path.rstrip("/")
    oidc = urlunsplit((parts.scheme, parts.netloc, f"{path}/.well-known/openid-configuration", "", ""))
    rfc8414 = urlunsplit((parts.scheme, parts.netloc, f"/.well-known/oauth-authorization-server{path}", "", ""))
    return [oidc, rfc8414]


async def discover_endpoint(http: JSONClient, issuer: str, name: str, *, allow_insecure_http: bool = False) -> str:
    """The URL ``name`` (``jwks_uri``, ``introspection_endpoint``) from ``issuer``'s metadata, or ``FetchError``.

    OIDC discovery, then RFC 8414. The metadata's ``issuer`` must equal ``issuer`` exactly, and the URL
    must be https unless the issuer itself is on loopback (or ``allow_insecure_http``).
    """
    last: Exception | None = None
    for url in discovery_urls(issuer):
        try:
            meta = (await http.get(url)).data
        except FetchError as exc:
            last = exc
            continue
        if not isinstance(meta, Mapping):
            raise FetchError(f"{url}: metadata is not a JSON object")
        if meta.get("issuer") != issuer:
            raise FetchError(f"{url}: metadata issuer does not equal the configured issuer")
        found = meta.get(name)
        if not isinstance(found, str):
            raise FetchError(f"{url}: metadata has no {name}")
        if has_userinfo(found):
            raise FetchError(f"{url}: {name} holds user information (refused, not shown)")
        try:
            return check_url(
                found, allow_insecure_http=allow_insecure_http, loopback_http=is_loopback(urlsplit(issuer).hostname)
            )
        except ValueError as exc:
            raise FetchError(f"{url}: {name} {exc}") from None
    raise FetchError(f"discovery failed for {issuer}: {last}")
