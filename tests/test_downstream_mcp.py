"""Downstream tokens from inside a real MCP tool: the SDK's FastMCP behind the middleware, a real MCP client
over streamable HTTP, the tool calling ``downstream.exchange()`` at the live dev issuer over HTTP and
``downstream.mint_internal()``, whose token a ``jwt`` stage trusting this server's JWKS accepts.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any, cast

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, KeySetSerialization
from mcp.server.fastmcp import FastMCP
from mcp.types import TextContent

from fastapps_auth import ManualClock, VerifierChain, downstream
from fastapps_auth.dev_issuer import RunningIssuer
from fastapps_auth.integrations.mcp import protect
from fastapps_auth.stages.jwt import JWTVerifier
from fastapps_auth.testing import issuer_chain, start_issuer
from tests.hosts.support import AsyncServer
from tests.support.mcp_client import call

RESOURCE = "http://127.0.0.1/mcp"
CALENDAR = "https://calendar.example/api"
BILLING = "https://billing.internal"
ME = "https://mcp.example"


@pytest.fixture
def issuer(clock: ManualClock) -> Iterator[RunningIssuer]:
    running = start_issuer(clock=clock, audience=RESOURCE, users=["alice", "mallory=read"])
    yield running
    running.stop()


@pytest.fixture
async def server(issuer: RunningIssuer, clock: ManualClock) -> AsyncIterator[tuple[str, VerifierChain]]:
    mcp = FastMCP("downstream-demo", stateless_http=True)

    @mcp.tool()
    async def calendar(scope: str = "calendar") -> str:
        """A token for the calendar API, on behalf of the caller."""
        return await downstream.exchange(audience=CALENDAR, scope=scope)

    @mcp.tool()
    async def billing() -> str:
        """This server's own token for the billing service."""
        return downstream.mint_internal(audience=BILLING, ttl=120)

    @mcp.tool()
    async def stats() -> str:
        return json.dumps(downstream.configured().stats())

    chain = issuer_chain(issuer, clock=clock)
    app = protect(mcp.streamable_http_app(), chain, server=mcp, resource_url=RESOURCE)
    downstream.configure(
        issuer_url=issuer.url,
        client_id=issuer.client.client_id,
        client_secret=issuer.client.secret,
        internal_key=ECKey.generate_key("P-256", parameters={"kid": "internal-1"}),
        internal_issuer=ME,
        clock=clock,
    )
    try:
        async with AsyncServer(app) as srv:
            yield srv.url, chain
    finally:
        await downstream.aclose()
        await chain.aclose()


def text(result: Any) -> str:
    assert not result.isError, result
    content = result.content[0]
    assert isinstance(content, TextContent)
    return content.text


def claims(issuer: RunningIssuer, token: str) -> dict[str, Any]:
    keys = KeySet.import_key_set(cast(KeySetSerialization, issuer.jwks()))
    return dict(jwt.decode(token, keys, algorithms=["RS256", "ES256"]).claims)


async def test_a_tool_exchanges_the_callers_token_over_http(
    server: tuple[str, VerifierChain], issuer: RunningIssuer
) -> None:
    url, _ = server
    user = issuer.mint("alice", scopes=["read", "calendar"], audience=RESOURCE)
    token = text(await call(url, user, "calendar"))
    got = claims(issuer, token)
    assert (got["sub"], got["aud"], got["scope"]) == ("alice", CALENDAR, "calendar")
    assert got["act"] == {"sub": issuer.client.client_id}
    assert token != user
    assert text(await call(url, user, "calendar")) == token  # the second call is a cache hit
    assert json.loads(text(await call(url, user, "stats")))["exchanges"] == 1
    mallory = issuer.mint("mallory", scopes=["read"], audience=RESOURCE)  # may never have "calendar"
    refused = await call(url, mallory, "calendar")
    assert refused.isError and "invalid_scope" in str(refused.content[0])


async def test_an_internal_token_vouches_for_the_caller_to_a_service_that_trusts_this_server(
    server: tuple[str, VerifierChain], issuer: RunningIssuer, clock: ManualClock
) -> None:
    url, _ = server
    user = issuer.mint("alice", scopes=["read"], audience=RESOURCE)
    internal = text(await call(url, user, "billing"))
    trusts_me = JWTVerifier(jwks=downstream.internal_jwks(), issuer_url=ME, audience=BILLING, clock=clock)
    service = VerifierChain(trusts_me, clock=clock)
    try:
        decision = await service.evaluate(internal)
        assert decision.allowed, decision.reason
        assert decision.access_token is not None
        got = decision.access_token.claims or {}
        assert (got["sub"], got["scope"], got["original_iss"], got["client_id"]) == (
            "alice",
            "read",
            issuer.url,
            claims(issuer, user)["client_id"],
        )
        assert got["exp"] - got["iat"] == 120
        clock.advance(120 + 61)  # past exp and the jwt stage's leeway (30 s)
        assert (await service.evaluate(internal)).reason == "expired"
    finally:
        await service.aclose()
