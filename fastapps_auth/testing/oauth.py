"""Signing in as a real MCP client does, in tests and scripts: the MCP SDK's ``OAuthClientProvider``
against the dev issuer, with a headless login in place of the user's browser.

    login = HeadlessLogin("alice")
    auth = oauth_client("http://127.0.0.1:8000/mcp", login=login)
    async with httpx.AsyncClient(auth=auth) as http:   # 401 -> metadata -> register -> code + PKCE -> token
        ...

Works with the SDK's 1.x and 2.x clients (their callback handlers return different shapes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx

if TYPE_CHECKING:
    from mcp.client.auth import OAuthClientProvider
    from mcp.shared.auth import OAuthClientInformationFull, OAuthToken

#: Where the code is "delivered": never contacted, the headless login reads the redirect itself.
DEFAULT_REDIRECT_URI = "http://127.0.0.1/callback"


class LoginError(RuntimeError):
    """The authorization endpoint refused, or did not redirect back (a login page needs a person)."""


class MemoryStorage:
    """The SDK's ``TokenStorage`` in memory: tokens and the registered client, for one test."""

    def __init__(self, tokens: OAuthToken | None = None, client_info: OAuthClientInformationFull | None = None) -> None:
        self.tokens = tokens
        self.client_info = client_info

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client_info

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client_info = client_info


class HeadlessLogin:
    """Plays the browser: opens the authorization URL with ``login_hint=user`` and reads the redirect.

    ``acr`` asks for an authentication class (``"mfa"`` to rehearse step-up). ``requests``
    keeps the parameters of each authorization request (scope, resource, PKCE method...)
    for tests to inspect; ``responses`` the redirect's parameters without the code.
    """

    def __init__(self, user: str | None = "alice", *, acr: str | None = None, timeout: float = 10.0) -> None:
        self.user = user
        self.acr = acr
        self.timeout = timeout
        self.requests: list[dict[str, str]] = []
        self.responses: list[dict[str, str]] = []
        self._result: tuple[str, str | None, str | None] | None = None

    def _url(self, authorization_url: str) -> str:
        parts = urlsplit(authorization_url)
        params = dict(parse_qsl(parts.query))
        self.requests.append(params)
        extra = {}
        if self.user is not None and "login_hint" not in params:
            extra["login_hint"] = self.user
        if self.acr is not None and "acr_values" not in params:
            extra["acr_values"] = self.acr
        return f"{authorization_url}{'&' if parts.query else '?'}{urlencode(extra)}" if extra else authorization_url

    async def redirect_handler(self, authorization_url: str) -> None:
        """The SDK's ``redirect_handler``: sign in, and keep the code for ``callback_handler``."""
        self._result = None
        async with httpx.AsyncClient(follow_redirects=False, timeout=self.timeout) as browser:
            response = await browser.get(self._url(authorization_url))
        location = response.headers.get("location")
        if response.status_code not in (302, 303) or not location:
            raise LoginError(f"the authorization endpoint answered HTTP {response.status_code}, not a redirect")
        params = dict(parse_qsl(urlsplit(location).query))
        self.responses.append({k: v for k, v in params.items() if k != "code"})
        if "error" in params:
            raise LoginError(f"{params['error']}: {params.get('error_description', '')}")
        if "code" not in params:
            raise LoginError("the redirect carries no code")
        self._result = (params["code"], params.get("state"), params.get("iss"))

    async def callback_handler(self) -> Any:
        """The SDK's ``callback_handler``: ``(code, state)``, or an ``AuthorizationCodeResult`` (SDK 2.x)."""
        if self._result is None:
            raise LoginError("no authorization code: the redirect handler did not run or failed")
        code, state, iss = self._result
        self._result = None
        try:
            from mcp.shared.auth import AuthorizationCodeResult  # type: ignore[attr-defined, unused-ignore]
        except ImportError:
            return code, state
        return AuthorizationCodeResult(code=code, state=state, iss=iss)


def oauth_client(
    server_url: str,
    *,
    login: HeadlessLogin | None = None,
    storage: MemoryStorage | None = None,
    client_name: str = "fastapps-auth tests",
    redirect_uri: str = DEFAULT_REDIRECT_URI,
    client_metadata_url: str | None = None,
    scope: str | None = None,
) -> OAuthClientProvider:
    """The MCP SDK's ``OAuthClientProvider`` for ``server_url`` (the MCP endpoint), signing in headless.

    With ``client_metadata_url`` the client is a client ID metadata document (an https URL whose
    document lists ``redirect_uri``) instead of registering dynamically.
    """
    from mcp.client.auth import OAuthClientProvider
    from mcp.shared.auth import OAuthClientMetadata
    from pydantic import AnyUrl

    login = login or HeadlessLogin()
    metadata = OAuthClientMetadata(
        redirect_uris=[AnyUrl(redirect_uri)],
        client_name=client_name,
        scope=scope,
        grant_types=["authorization_code", "refresh_token"],
        response_types=["code"],
    )
    return OAuthClientProvider(
        server_url=server_url,
        client_metadata=metadata,
        storage=storage or MemoryStorage(),
        redirect_handler=login.redirect_handler,
        callback_handler=login.callback_handler,
        client_metadata_url=client_metadata_url,
    )
