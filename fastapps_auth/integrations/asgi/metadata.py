"""OAuth 2.0 Protected Resource Metadata (RFC 9728) for a server, with its URLs exactly as configured.

The MCP SDK's ``create_protected_resource_routes`` takes pydantic ``AnyHttpUrl``s, which add a ``/``
to a URL with no path: a root issuer ``http://127.0.0.1:9000`` becomes ``http://127.0.0.1:9000/``,
and the MCP SDK 2.x client, comparing it with the issuer's own metadata exactly (RFC 8414 §3.3),
refuses to sign in. Here every URL is written as given.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

WELL_KNOWN = "/.well-known/oauth-protected-resource"


def _check(url: str, what: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.fragment:
        raise ValueError(f"{what} must be an absolute http(s) URL without a fragment, not {url!r}")
    return url


def metadata_path(resource_url: str) -> str:
    """The path of the metadata document of ``resource_url``: the well-known suffix inserted before its path."""
    path = urlsplit(_check(resource_url, "the resource URL")).path
    return WELL_KNOWN + (path if path != "/" else "")


def metadata_url(resource_url: str) -> str:
    """Where clients find the metadata of ``resource_url`` (``resource_metadata`` in a challenge)."""
    parts = urlsplit(resource_url)
    return f"{parts.scheme}://{parts.netloc}{metadata_path(resource_url)}"


def resource_metadata(
    resource: str,
    authorization_servers: Sequence[str],
    *,
    scopes: Sequence[str] = (),
    resource_name: str | None = None,
    dpop_algorithms: Sequence[str] = (),
) -> dict[str, Any]:
    """The metadata document: ``scopes_supported`` is the minimal set (the server-wide required scopes),
    ``dpop_signing_alg_values_supported`` is set when the server checks DPoP proofs."""
    document: dict[str, Any] = {
        "resource": _check(resource, "the resource URL"),
        "authorization_servers": [_check(a, "an authorization server URL") for a in authorization_servers],
        "bearer_methods_supported": ["header"],
    }
    if scopes:
        document["scopes_supported"] = list(dict.fromkeys(scopes))
    if resource_name:
        document["resource_name"] = resource_name
    if dpop_algorithms:
        document["dpop_signing_alg_values_supported"] = list(dpop_algorithms)
    return document


def metadata_routes(document: dict[str, Any]) -> list[Route]:
    """GET routes serving ``document``: at its path-inserted well-known URI (for a resource at the root of
    its host that is ``/.well-known/oauth-protected-resource`` itself)."""
    body = json.dumps(document).encode()
    headers = {"cache-control": "public, max-age=3600", "access-control-allow-origin": "*"}

    async def serve(request: Request) -> Response:
        return Response(body, media_type="application/json", headers=headers)

    return [Route(metadata_path(document["resource"]), serve, methods=["GET"])]
