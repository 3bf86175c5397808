"""``fastapps_auth.downstream`` token exchange against the live dev issuer (its RFC 8693 grant) on loopback.

Discovery, both client authentication methods, the cache (a hit is the very same token; expiry by the
injected clock), one request for concurrent callers, the authorization server's errors as
``DownstreamError`` codes, a server that never answers (timeout), and answers no token can come from.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any, cast

import pytest
from joserfc import jwt
from joserfc.jwk import KeySet, KeySetSerialization
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fastapps_auth import ManualClock, downstream
from fastapps_auth.dev_issuer import RunningIssuer
from fastapps_auth.dev_issuer.server import BackgroundServer
from fastapps_auth.downstream import Downstream, DownstreamError
from fastapps_auth.testing import start_issuer, tamper

CALENDAR = "https://calendar.example/api"


@pytest.fixture
def issuer(clock: ManualClock) -> Iterator[RunningIssuer]:
    running = start_issuer(clock=clock, users=["alice", "mallory=read"])
    yield running
    running.stop()


@pytest.fixture
async def service(issuer: RunningIssuer, clock: ManualClock) -> AsyncIterator[Downstream]:
    d = Downstream(
        issuer_url=issuer.url, client_id=issuer.client.client_id, client_secret=issuer.client.secret, clock=clock
    )
    yield d
    await d.aclose()


def claims(issuer: RunningIssuer, token: str) -> dict[str, Any]:
    keys = KeySet.import_key_set(cast(KeySetSerialization, issuer.jwks()))
    return dict(jwt.decode(token, keys, algorithms=["RS256", "ES256"]).claims)


async def test_exchange_gives_a_token_for_the_audience_on_behalf_of_the_user(
    issuer: RunningIssuer, service: Downstream
) -> None:
    subject = issuer.mint("alice", scopes=["read", "calendar"], audience="https://mcp.example/mcp")
    token = await service.exchange(audience=CALENDAR, scope="calendar", subject_token=subject)
    got = claims(issuer, token)
    assert (got["sub"], got["aud"], got["scope"]) == ("alice", CALENDAR, "calendar")
    assert got["act"] == {"sub": issuer.client.client_id}  # the server acts for alice, visibly (RFC 8693 §4.1)
    assert token != subject


@pytest.mark.parametrize("how", ["client_secret_basic", "client_secret_post"])
async def test_both_client_authentication_methods_and_a_configured_token_endpoint(
    issuer: RunningIssuer, clock: ManualClock, how: str
) -> None:
    d = Downstream(
        token_endpoint=issuer.token_endpoint,
        client_id=issuer.client.client_id,
        client_secret=issuer.client.secret,
        auth_method=how,
        clock=clock,
    )
    try:
        token = await d.exchange(audience=CALENDAR, subject_token=issuer.mint("alice", scopes=["read"]))
        assert claims(issuer, token)["aud"] == CALENDAR
    finally:
        await d.aclose()


async def test_a_cached_token_is_reused_until_shortly_before_it_expires(
    issuer: RunningIssuer, service: Downstream, clock: ManualClock
) -> None:
    subject = issuer.mint("alice", scopes=["read", "calendar"])  # lives 3600 s, so does the exchanged token
    first = await service.exchange(audience=CALENDAR, scope="calendar", subject_token=subject)
    assert await service.exchange(audience=CALENDAR, scope=["calendar"], subject_token=subject) == first
    other_scope = await service.exchange(audience=CALENDAR, scope="read", subject_token=subject)
    other_audience = await service.exchange(audience="https://files.example", scope="calendar", subject_token=subject)
    assert len({first, other_scope, other_audience}) == 3
    assert service.stats()["exchanges"] == 3 and service.stats()["cache_hits"] == 1

    clock.advance(3600 - 30 - 1)  # one second before the early expiry (30 s before exp)
    assert await service.exchange(audience=CALENDAR, scope="calendar", subject_token=subject) == first
    clock.advance(2)
    renewed = await service.exchange(audience=CALENDAR, scope="calendar", subject_token=subject)
    assert renewed != first and claims(issuer, renewed)["exp"] > claims(issuer, first)["iat"]
    another_user = issuer.mint("bob", scopes=["calendar"])
    assert claims(issuer, await service.exchange(audience=CALENDAR, subject_token=another_user))["sub"] == "bob"


async def test_the_cache_is_bounded(issuer: RunningIssuer, clock: ManualClock) -> None:
    d = Downstream(
        token_endpoint=issuer.token_endpoint,
        client_id=issuer.client.client_id,
        client_secret=issuer.client.secret,
        cache_size=2,
        clock=clock,
    )
    subject = issuer.mint("alice", scopes=["read"])
    try:
        first = await d.exchange(audience="https://a.example", subject_token=subject)
        await d.exchange(audience="https://b.example", subject_token=subject)
        await d.exchange(audience="https://c.example", subject_token=subject)  # the oldest entry goes
        assert d.stats()["cache_entries"] == 2
        assert await d.exchange(audience="https://a.example", subject_token=subject) != first
        assert d.stats()["exchanges"] == 4
    finally:
        await d.aclose()


async def test_concurrent_exchanges_of_one_key_share_one_request(issuer: RunningIssuer, service: Downstream) -> None:
    subject = issuer.mint("alice", scopes=["read"])
    tokens = await asyncio.gather(*(service.exchange(audience=CALENDAR, subject_token=subject) for _ in range(8)))
    assert len(set(tokens)) == 1 and service.stats()["exchanges"] == 1


async def test_the_authorization_servers_errors_are_downstream_errors_with_its_code(
    issuer: RunningIssuer, service: Downstream, clock: ManualClock
) -> None:
    mallory = issuer.mint("mallory", scopes=["read"])
    with pytest.raises(DownstreamError) as scope:
        await service.exchange(audience=CALENDAR, scope="admin", subject_token=mallory)
    assert (scope.value.error, scope.value.status, scope.value.transient) == ("invalid_scope", 400, False)
    with pytest.raises(DownstreamError) as forged:
        await service.exchange(audience=CALENDAR, subject_token=tamper(mallory))
    assert forged.value.error == "invalid_grant" and "not an active access token" in forged.value.description
    assert tamper(mallory) not in str(forged.value) and mallory not in str(forged.value)
    wrong = Downstream(token_endpoint=issuer.token_endpoint, client_id="dev-client", client_secret="nope", clock=clock)
    try:
        with pytest.raises(DownstreamError) as client:
            await wrong.exchange(audience=CALENDAR, subject_token=mallory)
        assert (client.value.error, client.value.status) == ("invalid_client", 401)
    finally:
        await wrong.aclose()
    assert service.stats()["cache_entries"] == 0  # errors are not cached


async def test_a_server_that_never_answers_is_a_timeout(clock: ManualClock) -> None:
    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1 << 16)
        await asyncio.sleep(30)  # cancelled when the server closes

    server = await asyncio.start_server(hang, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    d = Downstream(
        token_endpoint=f"http://127.0.0.1:{port}/token", client_id="c", client_secret="s", timeout=0.3, clock=clock
    )
    started = time.monotonic()
    try:
        with pytest.raises(DownstreamError) as exc:
            await d.exchange(audience=CALENDAR, subject_token="t")
        assert (exc.value.error, exc.value.transient) == ("timeout", True)
        assert time.monotonic() - started < 5
    finally:
        await d.aclose()
        server.close()


async def test_an_unreachable_server_and_failed_discovery(clock: ManualClock) -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()  # nobody listens there any more
    d = Downstream(token_endpoint=f"http://127.0.0.1:{port}/t", client_id="c", client_secret="s", clock=clock)
    with pytest.raises(DownstreamError) as exc:
        await d.exchange(audience=CALENDAR, subject_token="t")
    assert (exc.value.error, exc.value.transient) == ("unreachable", True)
    await d.aclose()
    d = Downstream(issuer_url=f"http://127.0.0.1:{port}", client_id="c", client_secret="s", clock=clock)
    with pytest.raises(DownstreamError) as exc:
        await d.exchange(audience=CALENDAR, subject_token="t")
    assert exc.value.error == "discovery_failed"
    await d.aclose()


ANSWERS: dict[str, tuple[int, Any]] = {
    "no-expiry": (200, {"access_token": "tok-1", "token_type": "Bearer"}),
    "dpop": (200, {"access_token": "tok-2", "token_type": "DPoP", "expires_in": 60}),
    "array": (200, ["x"]),
    "no-token": (200, {"token_type": "Bearer", "expires_in": 60}),
    "busy": (503, {"error": "temporarily_unavailable", "error_description": "try\nlater"}),
    "html": (502, "<html>"),
    "slow-once": (200, {"access_token": "tok-3", "token_type": "Bearer", "expires_in": 60}),
}


@pytest.fixture
def scripted() -> Iterator[tuple[str, list[str]]]:
    """An authorization server on loopback that answers ``ANSWERS[<path>]`` and records each audience asked for."""
    seen: list[str] = []

    async def answer(request: Request) -> Response:
        form = await request.form()
        seen.append(str(form.get("audience")))
        if request.path_params["name"] == "slow-once" and len(seen) == 1:
            await asyncio.sleep(2)  # the first caller is cancelled long before this ends
        status, body = ANSWERS[request.path_params["name"]]
        if isinstance(body, str):
            return Response(body, status, media_type="text/html")
        return JSONResponse(body, status)

    server = BackgroundServer(Starlette(routes=[Route("/{name}", answer, methods=["POST"])])).start()
    try:
        yield server.url, seen
    finally:
        server.stop()


async def test_answers_no_token_comes_from(scripted: tuple[str, list[str]], clock: ManualClock) -> None:
    url, seen = scripted

    def at(name: str) -> Downstream:
        return Downstream(token_endpoint=f"{url}/{name}", client_id="c", client_secret="s", clock=clock)

    uncached = at("no-expiry")
    assert await uncached.exchange(audience="a", subject_token="t") == "tok-1"
    assert await uncached.exchange(audience="a", subject_token="t") == "tok-1"
    assert seen == ["a", "a"]  # without expires_in nothing is cached
    await uncached.aclose()
    for name, error in [("dpop", "invalid_response"), ("array", "invalid_response"), ("no-token", "invalid_response")]:
        d = at(name)
        with pytest.raises(DownstreamError) as exc:
            await d.exchange(audience="a", subject_token="t")
        assert exc.value.error == error, name
        await d.aclose()
    busy = at("busy")
    with pytest.raises(DownstreamError) as exc:
        await busy.exchange(audience="a", subject_token="t")
    assert (exc.value.error, exc.value.status, exc.value.transient) == ("temporarily_unavailable", 503, True)
    assert exc.value.description == "try?later"  # printable only
    await busy.aclose()
    html = at("html")
    with pytest.raises(DownstreamError) as exc:
        await html.exchange(audience="a", subject_token="t")
    assert (exc.value.error, exc.value.transient) == ("invalid_response", True)  # not JSON at all
    await html.aclose()


async def test_a_waiter_whose_leader_is_cancelled_exchanges_itself(
    scripted: tuple[str, list[str]], clock: ManualClock
) -> None:
    url, seen = scripted
    d = Downstream(token_endpoint=f"{url}/slow-once", client_id="c", client_secret="s", clock=clock)
    try:
        leader = asyncio.create_task(d.exchange(audience="a", subject_token="t"))
        for _ in range(500):  # until the leader's request has reached the server
            if seen:
                break
            await asyncio.sleep(0.01)
        waiter = asyncio.create_task(d.exchange(audience="a", subject_token="t"))
        await asyncio.sleep(0.05)
        leader.cancel()
        assert await asyncio.wait_for(waiter, 10) == "tok-3"
        assert leader.cancelled() and seen == ["a", "a"]
    finally:
        await d.aclose()
    with pytest.raises(DownstreamError) as closed:
        await d.exchange(audience="a", subject_token="t")
    assert closed.value.error == "not_configured"


async def test_outside_a_request_and_before_configure_the_errors_say_so(issuer: RunningIssuer) -> None:
    with pytest.raises(DownstreamError) as missing:
        await downstream.exchange(audience=CALENDAR)
    assert missing.value.error == "not_configured"
    downstream.configure(issuer_url=issuer.url, client_id=issuer.client.client_id, client_secret=issuer.client.secret)
    try:
        with pytest.raises(DownstreamError) as outside:
            await downstream.exchange(audience=CALENDAR)
        assert outside.value.error == "no_request_token" and "inside a tool" in outside.value.description
        with pytest.raises(DownstreamError) as internal:
            downstream.mint_internal(audience="https://billing.internal")
        assert internal.value.error == "not_configured"
    finally:
        await downstream.aclose()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "issuer_url or token_endpoint"),
        ({"issuer_url": "https://a.example", "token_endpoint": "https://a.example/t"}, "not both"),
        ({"token_endpoint": "http://auth.example/token"}, "https"),
        ({"token_endpoint": "https://a.example/t", "auth_method": "private_key_jwt"}, "auth_method"),
        ({"token_endpoint": "https://a.example/t", "client_secret": ""}, "client_secret"),
        ({"client_id": "c"}, "for token exchange"),
        (
            {
                "internal_key": {"kty": "oct", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA"},
                "internal_issuer": "https://me",
            },
            "asymmetric",
        ),
    ],
)
def test_configuration_errors_say_what_is_wrong(options: dict[str, Any], message: str) -> None:
    options = {"client_id": "c", "client_secret": "s", **options} if "token_endpoint" in options else options
    with pytest.raises(ValueError, match=message):
        Downstream(**options)


def test_the_repr_shows_no_secret(issuer: RunningIssuer) -> None:
    d = Downstream(token_endpoint=issuer.token_endpoint, client_id="svc", client_secret="hunter2-secret")
    assert "hunter2" not in repr(d) and "svc" in repr(d)
