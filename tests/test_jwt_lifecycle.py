"""The jwt stage's lifecycle against a real key server on 127.0.0.1: ``start()`` never raises for an
unreachable issuer, ``probe()`` says in one line what is wrong, a closed stage refuses and opens nothing
(and leaves no socket behind), and scheduled key set refreshes are spread by jitter (ManualClock, no sleep)."""

from __future__ import annotations

import asyncio
import gc
import logging
import random
import warnings

import pytest

from fastapps_auth import ManualClock, TransientError, Verification
from fastapps_auth.backends.http_json import JSONClient
from fastapps_auth.backends.jwks import RemoteKeySource
from fastapps_auth.stages.jwt import JWTVerifier
from tests.support.jwks_server import JWKSServer
from tests.support.jwt_mint import claims, signing_key
from tests.support.jwt_stages import evaluate, remote


def source(st: JWTVerifier) -> RemoteKeySource:
    src = st._source
    assert isinstance(src, RemoteKeySource)
    return src


# -- start --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("down", ["503", "unreachable", "discovery"])
async def test_start_never_raises_and_logs_one_warning(
    clock: ManualClock, srv: JWKSServer, caplog: pytest.LogCaptureFixture, down: str
) -> None:
    caplog.set_level(logging.WARNING, logger="fastapps_auth")
    if down == "503":
        srv.status_override = 503
        st = remote(clock, srv, audience="api://mcp")
    elif down == "unreachable":
        st = JWTVerifier(jwks_uri="http://127.0.0.1:9/jwks.json", audience="api://mcp", clock=clock, http_timeout=1.0)
    else:
        st = JWTVerifier(issuer_url=srv.url, audience="api://mcp", clock=clock, http_timeout=1.0)
    await st.start()
    assert len(caplog.records) == 1, [r.getMessage() for r in caplog.records]
    assert caplog.records[0].levelno == logging.WARNING
    await st.aclose()


async def test_start_that_times_out_waiting_logs_one_warning(
    clock: ManualClock, srv: JWKSServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="fastapps_auth")
    srv.hang = True
    st = remote(clock, srv, audience="api://mcp", timeout=0.2, http_timeout=5.0)
    await st.start()
    assert [r.getMessage()[:24] for r in caplog.records] == ["JWKS not loaded at start"]
    await st.aclose()


# -- probe --------------------------------------------------------------------------------------------------


async def test_probe_passes_for_a_working_issuer_and_for_static_keys(clock: ManualClock, srv: JWKSServer) -> None:
    issuer = srv.serve_discovery()
    srv.set_jwks([signing_key().jwk()])
    st = JWTVerifier(issuer_url=issuer, audience="api://mcp", clock=clock)
    await st.probe()
    assert srv.count("/.well-known/openid-configuration") == 1 and srv.count() == 1
    await st.aclose()
    await JWTVerifier(jwks={"keys": [signing_key().jwk()]}, algorithms=["RS256"]).probe()


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("unreachable", r"unreachable \(ConnectError\)"),
        ("http-error", "answered HTTP 503"),
        ("not-json", "not valid JSON"),
        ("no-usable-key", "no usable key for the configured algorithms"),
        ("issuer-mismatch", "metadata issuer does not equal the configured issuer"),
        ("no-discovery", "discovery failed"),
    ],
)
async def test_probe_says_what_is_wrong_in_one_line(clock: ManualClock, srv: JWKSServer, case: str, match: str) -> None:
    options: dict[str, object] = {"jwks_uri": srv.url + "/jwks.json"}
    if case == "unreachable":
        options = {"jwks_uri": "http://127.0.0.1:9/jwks.json", "http_timeout": 1.0}
    elif case == "http-error":
        srv.status_override = 503
    elif case == "not-json":
        srv.set_raw("/jwks.json", b"<html>")
    elif case == "no-usable-key":
        srv.set_jwks([signing_key("ES256").jwk()])  # an EC key; only RS256 configured
    elif case == "issuer-mismatch":
        srv.serve_discovery(issuer="https://evil.example/")
        options = {"issuer_url": srv.url}
    else:
        options = {"issuer_url": srv.url}
    st = JWTVerifier(audience="api://mcp", algorithms=["RS256"], clock=clock, **options)  # type: ignore[arg-type]
    with pytest.raises(Exception, match=match) as info:
        await st.probe()
    assert "\n" not in str(info.value)
    await st.aclose()


# -- aclose ---------------------------------------------------------------------------------------------------


async def test_a_closed_stage_refuses_and_opens_nothing(clock: ManualClock, srv: JWKSServer) -> None:
    key = signing_key()
    srv.set_jwks([key.jwk()])
    st = remote(clock, srv, audience="api://mcp", min_refresh_interval=0.0)
    token = key.token(claims(clock.time()))
    assert (await evaluate(st, token)).allowed
    await st.aclose()
    assert st.closed
    fetched = srv.count()
    d = await evaluate(st, token)  # even the cached token
    assert (d.allowed, d.status, d.error) == (False, 503, "temporarily_unavailable")
    with pytest.raises(TransientError, match="closed"):
        await st(Verification(key.token(claims(clock.time(), kid="new")), now=clock.time(), clock=clock))
    clock.advance(10_000)  # the key set expired: still no refresh
    await st.start()
    assert (await evaluate(st, key.token(claims(clock.time(), jti="x")))).status == 503
    assert srv.count() == fetched
    assert source(st).http._client is None
    await st.aclose()


async def test_aclose_with_a_fetch_in_flight_leaves_no_socket(clock: ManualClock, srv: JWKSServer) -> None:
    """Keys loaded once, then a refresh (an unknown kid) hangs on the server when the stage closes: the
    waiting verification gets a 503, and no socket or transport is left for the garbage collector."""
    key = signing_key()
    srv.set_jwks([key.jwk()])
    st = remote(clock, srv, audience="api://mcp", timeout=30.0, http_timeout=30.0, min_refresh_interval=0.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        assert (await evaluate(st, key.token(claims(clock.time())))).allowed
        srv.hang = True
        rotated = signing_key("RS256", 1, kid="rotated").token(claims(clock.time()))
        waiting = asyncio.get_running_loop().create_task(evaluate(st, rotated))
        for _ in range(500):  # until the refresh has reached the server (bounded)
            if srv.count() == 2:
                break
            await asyncio.sleep(0.01)
        assert srv.count() == 2
        await st.aclose()
        d = await asyncio.wait_for(waiting, 10)
        assert d.status == 503
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)], [str(w.message) for w in caught]


async def test_a_keepalive_client_closes_its_pooled_connections(srv: JWKSServer) -> None:
    """What introspection will use: pooled connections are closed by ``aclose()``, none is left open."""
    srv.set_json("/x", {"a": 1})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        http = JSONClient(timeout=2.0, max_bytes=1024, keepalive=True)
        for _ in range(3):
            assert (await http.get(srv.url + "/x")).data == {"a": 1}
        await http.aclose()
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)], [str(w.message) for w in caught]


# -- refresh jitter ------------------------------------------------------------------------------------------


async def test_scheduled_refreshes_are_spread_by_jitter(clock: ManualClock, srv: JWKSServer) -> None:
    """Eight workers load the key set at the same instant; each refreshes when its own jittered lifetime
    (600 s shortened by up to 10%, drawn from its random source) is over, not all at 600 s."""
    key = signing_key()
    srv.set_jwks([key.jwk()])
    draws = [random.Random(i).random() for i in range(8)]
    fleet = [remote(clock, srv, audience="api://mcp", cache_ttl=0, random=random.Random(i).random) for i in range(8)]
    for st in fleet:
        await st.start()
    start = clock.monotonic()
    refreshed: dict[int, float] = {}
    while len(refreshed) < len(fleet) and clock.monotonic() - start <= 601:
        clock.advance(1.0)
        for i, st in enumerate(fleet):
            assert (await evaluate(st, key.token(claims(clock.time())))).allowed
            task = source(st)._task
            if task is not None:
                await task
            if i not in refreshed and st.stats()["jwks_fetches"] == 2:
                refreshed[i] = clock.monotonic() - start
    assert sorted(refreshed) == list(range(8))
    for i, at in refreshed.items():
        due = 600 * (1 - 0.1 * draws[i])
        assert due <= at < due + 1  # the first step at or after its own due time
        assert 540 <= at <= 600
    assert len(set(refreshed.values())) >= 6
    for st in fleet:
        await st.aclose()


async def test_no_jitter_refreshes_exactly_at_the_lifetime(clock: ManualClock, srv: JWKSServer) -> None:
    key = signing_key()
    srv.set_jwks([key.jwk()])
    st = remote(clock, srv, audience="api://mcp", cache_ttl=0, jwks_refresh_jitter=0, random=lambda: 0.99)
    await st.start()
    clock.advance(599.9)
    await evaluate(st, key.token(claims(clock.time())))
    assert source(st)._task is None and srv.count() == 1
    clock.advance(0.1)
    await evaluate(st, key.token(claims(clock.time())))
    task = source(st)._task
    assert task is not None
    await task
    assert srv.count() == 2
    await st.aclose()


def test_jitter_is_bounded_by_configuration() -> None:
    with pytest.raises(Exception, match="jwks_refresh_jitter"):
        JWTVerifier(jwks_uri="https://keys.example/jwks.json", jwks_refresh_jitter=0.6)
