"""An introspection endpoint that is down, slow or answers garbage: always 503, never an acceptance, never cached."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from fastapps_auth.stages.introspection import IntrospectionStage
from tests.support.introspection import evaluate, now_clock
from tests.support.jwks_server import JWKSServer

GOOD: dict[str, Any] = {"active": True, "sub": "alice", "client_id": "app", "aud": "api", "scope": "read"}


@pytest.fixture
def srv() -> Iterator[JWKSServer]:
    with JWKSServer() as server:
        yield server


def stage(url: str, **options: Any) -> IntrospectionStage:
    options.setdefault("audience", "api")
    return IntrospectionStage(introspection_url=url, client_id="rs", client_secret="secret", **options)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_an_endpoint_that_is_down_is_503() -> None:
    st = stage(f"http://127.0.0.1:{free_port()}/introspect")
    d = await evaluate(st, "tok")
    assert (d.allowed, d.status, d.error, d.stage) == (False, 503, "temporarily_unavailable", "introspection")
    assert d.trace[0].outcome == "error-denied"
    await st.aclose()


async def test_a_slow_endpoint_times_out_with_503(srv: JWKSServer) -> None:
    srv.set_json("/introspect", GOOD)
    srv.delay = 5.0
    st = stage(srv.url + "/introspect", timeout=0.2)
    t0 = time.perf_counter()
    d = await evaluate(st, "tok")
    assert time.perf_counter() - t0 < 2.0
    assert (d.allowed, d.status) == (False, 503)
    await st.aclose()


GARBAGE: list[tuple[str, bytes, int]] = [
    ("html", b"<html>login</html>", 200),
    ("array", b"[]", 200),
    ("no active", json.dumps({"sub": "alice"}).encode(), 200),
    ("active as a string", json.dumps({**GOOD, "active": "true"}).encode(), 200),
    ("active as a number", json.dumps({**GOOD, "active": 1}).encode(), 200),
    ("exp as a string", json.dumps({**GOOD, "exp": "tomorrow"}).encode(), 200),
    ("exp out of range", json.dumps({**GOOD, "exp": 1e300}).encode(), 200),
    ("exp a boolean", json.dumps({**GOOD, "exp": True}).encode(), 200),
    ("NaN", b'{"active": true, "sub": "alice", "exp": NaN}', 200),
    ("aud a number", json.dumps({**GOOD, "aud": 5}).encode(), 200),
    ("aud a list with a number", json.dumps({**GOOD, "aud": ["api", 5]}).encode(), 200),
    ("scope a list", json.dumps({**GOOD, "scope": ["read"]}).encode(), 200),
    ("iss a number", json.dumps({**GOOD, "iss": 7}).encode(), 200),
    ("sub an object", json.dumps({**GOOD, "sub": {}}).encode(), 200),
    ("token_type a number", json.dumps({**GOOD, "token_type": 3}).encode(), 200),
    ("HTTP 500", json.dumps(GOOD).encode(), 500),
    ("HTTP 401 (our credentials)", b'{"error": "invalid_client"}', 401),
    ("too large", json.dumps({**GOOD, "pad": "x" * 70000}).encode(), 200),
]


@pytest.mark.parametrize(("body", "status"), [(b, s) for _, b, s in GARBAGE], ids=[g[0] for g in GARBAGE])
async def test_a_malformed_answer_is_503_and_not_cached(srv: JWKSServer, body: bytes, status: int) -> None:
    srv.set_raw("/introspect", body, status=status)
    st = stage(srv.url + "/introspect")
    for _ in range(2):
        d = await evaluate(st, "tok")
        assert (d.allowed, d.status, d.error) == (False, 503, "temporarily_unavailable")
        assert d.access_token is None
    assert srv.count("/introspect") == 2, "a failure is asked again, not remembered"
    await st.aclose()


async def test_the_same_answer_well_formed_is_accepted(srv: JWKSServer) -> None:
    srv.set_json("/introspect", GOOD)
    st = stage(srv.url + "/introspect")
    d = await evaluate(st, "tok")
    assert d.allowed and d.access_token is not None and d.access_token.scopes == ["read"]
    await st.aclose()


@pytest.mark.parametrize(
    "answer",
    [{"active": True, "aud": "api"}, {"active": True, "sub": "alice"}],
    ids=["neither client_id nor sub", "no aud while an audience is required"],
)
async def test_an_active_answer_missing_what_this_server_needs_is_refused(
    srv: JWKSServer, answer: dict[str, Any]
) -> None:
    srv.set_json("/introspect", answer)
    st = stage(srv.url + "/introspect")
    d = await evaluate(st, "tok")
    assert (d.allowed, d.status, d.reason) == (False, 401, "missing_claim")
    await st.aclose()


async def test_the_stage_recovers_when_the_endpoint_does(srv: JWKSServer) -> None:
    srv.status_override = 503
    srv.set_json("/introspect", GOOD)
    st = stage(srv.url + "/introspect")
    assert (await evaluate(st, "tok")).status == 503
    srv.status_override = None
    assert (await evaluate(st, "tok")).allowed
    await st.aclose()


async def test_discovery_that_fails_backs_off_then_succeeds(srv: JWKSServer) -> None:
    clock = now_clock()
    st = IntrospectionStage(issuer_url=srv.url, client_id="rs", client_secret="secret", clock=clock)
    d = await evaluate(st, "tok", clock)
    assert d.status == 503
    fetched = srv.total
    assert (await evaluate(st, "tok", clock)).status == 503
    assert srv.total == fetched, "within the backoff, discovery is not retried"
    srv.set_json(
        "/.well-known/openid-configuration", {"issuer": srv.url, "introspection_endpoint": srv.url + "/introspect"}
    )
    srv.set_json("/introspect", {"active": True, "sub": "alice"})
    clock.advance(1.0)
    assert (await evaluate(st, "tok", clock)).allowed
    await st.aclose()


async def test_metadata_naming_a_plain_http_endpoint_off_loopback_is_refused(srv: JWKSServer) -> None:
    srv.set_json(
        "/.well-known/openid-configuration",
        {"issuer": srv.url, "introspection_endpoint": "http://auth.example.com/introspect"},
    )
    st = IntrospectionStage(issuer_url=srv.url, client_id="rs", client_secret="secret")
    d = await evaluate(st, "tok")
    assert d.status == 503
    await st.aclose()


async def test_a_token_larger_than_max_token_bytes_is_refused_without_a_request(srv: JWKSServer) -> None:
    srv.set_json("/introspect", GOOD)
    st = stage(srv.url + "/introspect", max_token_bytes=100)
    d = await evaluate(st, "x" * 101)
    assert (d.allowed, d.reason) == (False, "token_too_large")
    assert srv.count("/introspect") == 0
    await st.aclose()
