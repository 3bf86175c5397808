"""The ``AccessToken`` this library returns: the MCP SDK's, with the raw token kept out of ``repr`` and ``str``.

It is a subclass, so every host that expects the SDK's ``AccessToken`` takes it unchanged; only printing it
(a quickstart's ``print(access_token)``, a log line, a traceback's locals) no longer shows the bearer token.
``model_dump()`` still carries ``token``: hosts that copy a token into their own class need it.
"""

from __future__ import annotations

from mcp.server.auth.provider import AccessToken as SDKAccessToken
from pydantic import Field

__all__ = ["AccessToken", "SDKAccessToken", "hidden"]


class AccessToken(SDKAccessToken):
    """The MCP SDK's ``AccessToken`` whose ``repr``/``str`` never show the raw token."""

    token: str = Field(repr=False)


def hidden(at: SDKAccessToken) -> AccessToken:
    """``at`` as this library's ``AccessToken`` (the same object when it already is one)."""
    if isinstance(at, AccessToken):
        return at
    return AccessToken.model_validate(at.model_dump())
