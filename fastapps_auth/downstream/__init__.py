"""Tokens for other APIs on behalf of the request's user, without forwarding the user's token.

The MCP specification forbids passing the client's token through to another service. Two ways
instead, both from inside a tool (code running under fastapps-auth's middleware for a request it
let through, whose access token is ``integrations.asgi.context.current_access_token()``):

```python
from fastapps_auth import downstream

downstream.configure(issuer_url="https://auth.example", client_id="mcp-server", client_secret=SECRET)

@mcp.tool()
async def calendar_events() -> list[dict]:
    token = await downstream.exchange(audience="https://calendar.example", scope="calendar.read")
    ...                                     # RFC 8693 at the authorization server, cached until near expiry
    internal = downstream.mint_internal(audience="https://billing.internal", ttl=60)
    ...                                     # or: this server's own short-lived JWT (configure(internal_key=...))
```

Failures are ``DownstreamError`` (``error`` is the authorization server's code, or ``timeout``,
``unreachable``, ``no_request_token``...); ``Downstream`` is the same as an object, for apps that
hold more than one configuration.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fastapps_auth.access_token import SDKAccessToken
from fastapps_auth.clock import SYSTEM_CLOCK, Clock
from fastapps_auth.downstream.errors import NOT_CONFIGURED, DownstreamError, NoRequestToken
from fastapps_auth.downstream.exchange import TokenExchange
from fastapps_auth.downstream.internal import InternalTokens, SigningKey
from fastapps_auth.integrations.asgi.context import current_access_token

__all__ = [
    "Downstream",
    "DownstreamError",
    "InternalTokens",
    "NoRequestToken",
    "TokenExchange",
    "aclose",
    "configure",
    "configured",
    "exchange",
    "internal_jwks",
    "mint_internal",
]


def request_token() -> SDKAccessToken:
    """The verified access token of the request being handled; ``NoRequestToken`` outside one."""
    at = current_access_token()
    if at is None or not at.token:
        raise NoRequestToken()
    return at


class Downstream:
    """Token exchange (``issuer_url`` or ``token_endpoint`` with the client's credentials) and/or internal
    tokens (``internal_key`` and ``internal_issuer``); each part is optional, one is needed."""

    def __init__(
        self,
        *,
        issuer_url: str | None = None,
        token_endpoint: str | None = None,
        client_id: str | None = None,
        client_secret: str | None = None,
        auth_method: str = "client_secret_basic",
        timeout: float = 5.0,
        cache_size: int = 1024,
        early_expiry: float = 30.0,
        internal_key: SigningKey | Mapping[str, Any] | None = None,
        internal_issuer: str | None = None,
        internal_max_ttl: float = 3600.0,
        clock: Clock | None = None,
        allow_insecure_http: bool = False,
    ) -> None:
        clock = clock or SYSTEM_CLOCK
        self.exchanger: TokenExchange | None = None
        self.internal: InternalTokens | None = None
        if issuer_url is not None or token_endpoint is not None:
            self.exchanger = TokenExchange(
                issuer_url=issuer_url,
                token_endpoint=token_endpoint,
                client_id=client_id or "",
                client_secret=client_secret or "",
                auth_method=auth_method,
                timeout=timeout,
                cache_size=cache_size,
                early_expiry=early_expiry,
                clock=clock,
                allow_insecure_http=allow_insecure_http,
            )
        elif client_id is not None or client_secret is not None:
            raise ValueError("client_id and client_secret are for token exchange: give issuer_url or token_endpoint")
        if internal_key is not None or internal_issuer is not None:
            self.internal = InternalTokens(
                internal_key, issuer=internal_issuer or "", clock=clock, max_ttl=internal_max_ttl
            )
        if self.exchanger is None and self.internal is None:
            raise ValueError(
                "configure token exchange (issuer_url or token_endpoint) or internal tokens (internal_key)"
            )

    def __repr__(self) -> str:
        return f"Downstream({self.exchanger!r}, {self.internal!r})"

    async def exchange(
        self,
        *,
        audience: str,
        scope: str | Sequence[str] | None = None,
        resource: str | None = None,
        subject_token: str | None = None,
    ) -> str:
        """A token for ``audience`` (and ``resource``, RFC 8707) with ``scope``, for the request's user.

        ``subject_token`` replaces the request's access token (outside a request, e.g. a background job).
        """
        if self.exchanger is None:
            raise DownstreamError(NOT_CONFIGURED, "token exchange is not configured (issuer_url or token_endpoint)")
        if not audience:
            raise ValueError("audience is required (the API the token is for)")
        token = subject_token if subject_token is not None else request_token().token
        return await self.exchanger.exchange(token, audience=audience, scope=scope, resource=resource)

    def mint_internal(
        self, *, audience: str, ttl: float = 60.0, key: SigningKey | Mapping[str, Any] | None = None
    ) -> str:
        """A short-lived JWT of this server's for ``audience``, vouching for the request's user."""
        if self.internal is None:
            raise DownstreamError(NOT_CONFIGURED, "internal tokens are not configured (internal_issuer, internal_key)")
        return self.internal.mint(request_token(), audience=audience, ttl=ttl, key=key)

    def internal_jwks(self) -> dict[str, Any]:
        """The public JWKS that services verifying internal tokens trust (empty without an internal key)."""
        return self.internal.jwks() if self.internal is not None else {"keys": []}

    async def aclose(self) -> None:
        """Close the HTTP client and forget cached tokens."""
        if self.exchanger is not None:
            await self.exchanger.aclose()

    def stats(self) -> dict[str, float]:
        return self.exchanger.stats() if self.exchanger is not None else {}


_configured: Downstream | None = None


def configure(**options: Any) -> Downstream:
    """Configure the module's functions once, at startup (``Downstream``'s keywords); returns the instance.

    Configuring again replaces the configuration (``await aclose()`` first to close the old HTTP client).
    """
    global _configured
    _configured = Downstream(**options)
    return _configured


def configured() -> Downstream:
    """The configured ``Downstream``; ``DownstreamError("not_configured")`` before ``configure()``."""
    if _configured is None:
        raise DownstreamError(NOT_CONFIGURED, "call fastapps_auth.downstream.configure(...) at startup first")
    return _configured


async def exchange(
    *,
    audience: str,
    scope: str | Sequence[str] | None = None,
    resource: str | None = None,
    subject_token: str | None = None,
) -> str:
    """``Downstream.exchange`` with the configuration of ``configure()``."""
    return await configured().exchange(audience=audience, scope=scope, resource=resource, subject_token=subject_token)


def mint_internal(*, audience: str, ttl: float = 60.0, key: SigningKey | Mapping[str, Any] | None = None) -> str:
    """``Downstream.mint_internal`` with the configuration of ``configure()``."""
    return configured().mint_internal(audience=audience, ttl=ttl, key=key)


def internal_jwks() -> dict[str, Any]:
    """``Downstream.internal_jwks`` of the configuration of ``configure()``."""
    return configured().internal_jwks()


async def aclose() -> None:
    """Close the configured ``Downstream`` (its HTTP client) and forget the configuration."""
    global _configured
    current, _configured = _configured, None
    if current is not None:
        await current.aclose()
