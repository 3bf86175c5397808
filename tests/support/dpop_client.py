"""An MCP client's side of DPoP, for an HTTP client (``httpx.Auth`` or ``httpx2.Auth``, so both venvs use it):
``Authorization: DPoP``, a fresh proof per request, and the server's ``DPoP-Nonce`` when it asks for one."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from fastapps_auth.testing.dpop import DPoPKey


def dpop_auth(base: type[Any], key: DPoPKey, token: str) -> Any:
    """An auth object for an HTTP client whose ``Auth`` class is ``base`` (``httpx.Auth``, ``httpx2.Auth``)."""

    class DPoPAuth(base):  # type: ignore[misc, valid-type, unused-ignore]
        def __init__(self) -> None:
            self.nonce: str | None = None
            self.proofs = 0

        def sign(self, request: Any) -> Any:
            url = str(request.url.copy_with(query=None))
            request.headers.update(key.headers(request.method, url, token, nonce=self.nonce))
            self.proofs += 1
            return request

        def auth_flow(self, request: Any) -> Generator[Any, Any, None]:
            response = yield self.sign(request)
            nonce = response.headers.get("dpop-nonce")
            if nonce is not None:
                retry = response.status_code == 401 and nonce != self.nonce
                self.nonce = nonce
                if retry:
                    yield self.sign(request)

    return DPoPAuth()
