"""The jwt stage against a real JWKS/discovery server on 127.0.0.1: discovery, caching, rotation,
single flight, floods of unknown kids, outages (stale-if-error, backoff) and bounded fetches."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from fastapps_auth import ManualClock, VerifierChain
from fastapps_auth.stages.jwt import JWTVerifier
from tests.support.jwks_server import JWKSServer
from tests.support.jwt_mint import claims, signing_key
from tests.support.jwt_stages import evaluate, remote

AUD = "api://mcp"


async def settle(st: JWTVerifier) -> None:
    """Let a background refresh finish (bounded: its HTTP fetch has a timeout)."""
    for _ in range(500):
        task = st._source._task  # type: ignore[attr-defined]
        if task is None:
            return
        await asyncio.gather(task, return_exceptions=True)


async def test_oidc_discovery(clock: ManualClock, srv: JWKSServer) -> None:
    issuer = srv.serve_discovery(kind="oidc", issuer_path="/tenant/")
    key = signing_key()
    srv.set_jwks([key.jwk()])
    st = JWTVerifier(issuer_url=issuer, audience=AUD, clock=clock)
    d = await evaluate(st, key.token(claims(clock.time(), iss=issuer)))
    assert d.allowed, d.reason
    assert srv.count("/tenant/.well-known/openid-configuration") == 1
    assert srv.count("/jwks.json") == 1
    await st.aclose()


async def test_rfc8414_fallback(clock: ManualClock, srv: JWKSServer) -> None:
    issuer = srv.serve_discovery(kind="oauth", issuer_path="/tenant")
    key = signing_key("ES256")
    srv.set_jwks([key.jwk()])
    st = JWTVerifier(issuer_url=issuer, algorithms=["ES256"], clock=clock)
    d = await evaluate(st, key.token(claims(clock.time(), iss=issuer)))
    assert d.allowed, d.reason
    assert srv.count("/tenant/.well-known/openid-configuration") == 1  # tried first, 404
    assert srv.count("/.well-known/oauth-authorization-server/tenant") == 1
    await st.aclose()


async def test_metadata_issuer_must_match(clock: ManualClock, srv: JWKSServer) -> None:
    srv.serve_discovery(issuer="https://evil.example/")
    srv.set_jwks([signing_key().jwk()])
    st = JWTVerifier(issuer_url=srv.url, clock=clock)
    d = await evaluate(st, signing_key().token(claims(clock.time(), iss=srv.url)))
    assert (d.allowed, d.status, d.error) == (False, 503, "temporarily_unavailable")
    assert srv.count("/jwks.json") == 0
    await st.aclose()


async def test_discovered_jwks_uri_must_be_https(clock: ManualClock, srv: JWKSServer) -> None:
    srv.set_json("/.well-known/openid-configuration", {"issuer": srv.url, "jwks_uri": "http://keys.example/jwks"})
    st = JWTVerifier(issuer_url=srv.url, clock=clock)
    d = await evaluate(st, signing_key().token(claims(clock.time(), iss=srv.url)))
    assert d.status == 503
    await st.aclose()


async def test_start_prefetches_and_aclose_is_idempotent(clock: ManualClock, srv: JWKSServer) -> None:
    key = signing_key()
    srv.set_jwks([key.jwk()])
    st = remote(clock, srv)
    await st.start()
    assert srv.count() == 1
    assert (await evaluate(st, key.token(claims(clock.time())))).allowed
    assert srv.count() == 1
    assert st.stats()["keys"] == 1
    await st.aclose()
    await st.aclose()


async def test_no_io_in_constructor(clock: ManualClock, srv: JWKSServer) -> None:
    srv.serve_discovery()
    st = JWTVerifier(issuer_url=srv.url, clock=clock)
    assert srv.total == 0
    await st.aclose()


async def test_cold_cache_single_flight(clock: ManualClock, srv: JWKSServer) -> None:
    key = signing_key()
    srv.set_jwks([key.jwk()])
    srv.delay = 0.2  # keep the fetch in flight while all 300 arrive
    st = remote(clock, srv)
    chain = VerifierChain(st, clock=clock)
    tokens = [key.token(claims(clock.time(), jti=str(i))) for i in range(300)]
    results = await asyncio.gather(*(chain.verify_token(t) for t in tokens))
    assert all(r is not None for r in results)
    assert srv.count() == 1
    await st.aclose()


async def test_cold_cache_single_flight_with_discovery(clock: ManualClock, srv: JWKSServer) -> None:
    issuer = srv.serve_discovery()
    key = signing_key()
    srv.set_jwks([key.jwk()])
    srv.delay = 0.1
    st = JWTVerifier(issuer_url=issuer, clock=clock)
    chain = VerifierChain(st, clock=clock)
    token = key.token(claims(clock.time(), iss=issuer))
    results = await asyncio.gather(*(chain.verify_token(token) for _ in range(300)))
    assert all(r is not None for r in results)
    assert srv.total == 2  # one discovery, one JWKS
    await st.aclose()


async def test_rotation_accepted_once_interval_allows(clock: ManualClock, srv: JWKSServer) -> None:
    old, new, newer = signing_key("RS256", 0, kid="old"), signing_key("RS256", 1, kid="new"), signing_key("ES256", 0)
    srv.set_jwks([old.jwk()])
    st = remote(clock, srv, algorithms=["RS256", "ES256"], min_refresh_interval=1.0)
    assert (await evaluate(st, old.token(claims(clock.time())))).allowed
    # Rotation right after the first fetch: the interval has not passed, the new kid is unknown.
    srv.set_jwks([old.jwk(), new.jwk()])
    assert (await evaluate(st, new.token(claims(clock.time())))).reason == "unknown_key"
    assert srv.count() == 1
    clock.advance(1.0)
    assert (await evaluate(st, new.token(claims(clock.time())))).allowed
    assert srv.count() == 2
    # The old key is gone from the set; its cached-token entries aside, new tokens signed by it fail.
    srv.set_jwks([new.jwk(), newer.jwk()])
    clock.advance(1.0)
    assert (await evaluate(st, newer.token(claims(clock.time())))).allowed
    assert (await evaluate(st, old.token(claims(clock.time(), jti="x")))).reason == "unknown_key"
    await st.aclose()


async def test_flood_of_random_kids_costs_one_fetch_per_interval(clock: ManualClock, srv: JWKSServer) -> None:
    key = signing_key()
    srv.set_jwks([key.jwk()])
    st = remote(clock, srv, min_refresh_interval=1.0)
    chain = VerifierChain(st, clock=clock)
    await st.start()
    for _second in range(5):
        tokens = [key.token(claims(clock.time()), kid=uuid.uuid4().hex) for _ in range(20)]
        decisions = await asyncio.gather(*(chain.evaluate(t) for t in tokens))
        assert {d.reason for d in decisions} == {"unknown_key"}
        assert all(d.status == 401 for d in decisions)
        clock.advance(1.0)
    # The initial load, then one per interval: none in the first second (the load itself was one).
    assert srv.count() == 1 + 4
    await st.aclose()


async def test_cache_control_max_age_clamped(clock: ManualClock, srv: JWKSServer) -> None:
    key = signing_key()
    srv.set_jwks([key.jwk()], cache_control="public, max-age=120")
    st = remote(clock, srv, jwks_cache_min_ttl=60, jwks_cache_max_ttl=3600, jwks_refresh_jitter=0)
    chain = VerifierChain(st, clock=clock)
    await st.start()
    clock.advance(100)
    assert await chain.verify_token(key.token(claims(clock.time()))) is not None
    await settle(st)
    assert srv.count() == 1
    clock.advance(25)
    assert await chain.verify_token(key.token(claims(clock.time()))) is not None  # served by the old keys
    await settle(st)
    assert srv.count() == 2  # refreshed in the background after max-age
    # max-age beyond the maximum is clamped to it
    srv.set_jwks([key.jwk()], cache_control="max-age=999999")
    clock.advance(200)
    await chain.verify_token(key.token(claims(clock.time())))
    await settle(st)
    assert srv.count() == 3
    clock.advance(3599)
    await chain.verify_token(key.token(claims(clock.time())))
    await settle(st)
    assert srv.count() == 3
    clock.advance(2)
    await chain.verify_token(key.token(claims(clock.time())))
    await settle(st)
    assert srv.count() == 4
    await st.aclose()


async def test_default_ttl_without_cache_control(clock: ManualClock, srv: JWKSServer) -> None:
    key = signing_key()
    srv.set_jwks([key.jwk()])
    st = remote(clock, srv, jwks_refresh_jitter=0)  # default 600 s
    chain = VerifierChain(st, clock=clock)
    await st.start()
    clock.advance(599)
    await chain.verify_token(key.token(claims(clock.time())))
    await settle(st)
    assert srv.count() == 1
    clock.advance(2)
    await chain.verify_token(key.token(claims(clock.time())))
    await settle(st)
    assert srv.count() == 2
    await st.aclose()


async def test_outage_keeps_last_good_keys_and_backs_off(clock: ManualClock, srv: JWKSServer) -> None:
    key = signing_key()
    srv.set_jwks([key.jwk()])
    st = remote(clock, srv, min_refresh_interval=1.0, max_refresh_backoff=8.0)
    chain = VerifierChain(st, clock=clock)
    await st.start()
    srv.status_override = 503
    clock.advance(601)  # the key set is expired: a background refresh starts and fails
    assert await chain.verify_token(key.token(claims(clock.time()))) is not None  # stale-if-error
    await settle(st)
    assert srv.count() == 2
    # Within the backoff no new fetch happens, and a known key keeps working.
    for i in range(10):
        assert await chain.verify_token(key.token(claims(clock.time(), jti=str(i)))) is not None
    await settle(st)
    assert srv.count() == 2
    # An unknown kid while the endpoint is down is transient (503), not a rejection, and costs no fetch.
    d = await chain.evaluate(signing_key("RS256", 1, kid="rotated").token(claims(clock.time())))
    assert (d.status, d.error, d.reason) == (503, "temporarily_unavailable", "unavailable")
    assert d.retry_after is not None and d.retry_after > 0
    assert srv.count() == 2
    # Backoff doubles: 1 s, 2 s, 4 s ...
    clock.advance(1.0)
    await chain.verify_token(key.token(claims(clock.time())))
    await settle(st)
    assert srv.count() == 3
    clock.advance(1.0)
    await chain.verify_token(key.token(claims(clock.time())))
    await settle(st)
    assert srv.count() == 3
    clock.advance(1.0)
    await chain.verify_token(key.token(claims(clock.time())))
    await settle(st)
    assert srv.count() == 4
    # Recovery: the rotated key is accepted once a refresh succeeds.
    srv.status_override = None
    rotated = signing_key("RS256", 1, kid="rotated")
    srv.set_jwks([key.jwk(), rotated.jwk()])
    clock.advance(4.0)
    assert await chain.verify_token(rotated.token(claims(clock.time()))) is not None
    assert st.stats()["jwks_failures"] == 0
    await st.aclose()


async def test_cold_start_while_down_is_503(clock: ManualClock, srv: JWKSServer) -> None:
    srv.status_override = 500
    st = remote(clock, srv)
    chain = VerifierChain(st, clock=clock)
    d = await chain.evaluate(signing_key().token(claims(clock.time())))
    assert (d.status, d.stage) == (503, "jwt")
    d2 = await chain.evaluate(signing_key().token(claims(clock.time())))
    assert d2.status == 503
    assert srv.count() == 1  # the second one did not hammer the endpoint
    await st.aclose()


async def test_hanging_endpoint_is_bounded_by_timeout(clock: ManualClock, srv: JWKSServer) -> None:
    srv.hang = True
    st = remote(clock, srv, timeout=0.3, http_timeout=5.0)
    chain = VerifierChain(st, clock=clock)
    d = await asyncio.wait_for(chain.evaluate(signing_key().token(claims(clock.time()))), 10)
    assert d.status == 503
    await st.aclose()


async def test_hanging_endpoint_is_bounded_by_http_timeout(clock: ManualClock, srv: JWKSServer) -> None:
    srv.hang = True
    st = remote(clock, srv, timeout=5.0, http_timeout=0.3)
    d = await asyncio.wait_for(evaluate(st, signing_key().token(claims(clock.time()))), 10)
    assert d.status == 503
    await st.aclose()


async def test_unreachable_endpoint(clock: ManualClock) -> None:
    st = JWTVerifier(jwks_uri="http://127.0.0.1:9/jwks.json", clock=clock, timeout=2.0, http_timeout=1.0)
    d = await asyncio.wait_for(evaluate(st, signing_key().token(claims(clock.time()))), 10)
    assert d.status == 503
    await st.aclose()


async def test_oversized_jwks_refused(clock: ManualClock, srv: JWKSServer) -> None:
    key = signing_key()
    srv.set_json("/jwks.json", {"keys": [key.jwk()], "padding": "x" * 5000})
    st = remote(clock, srv, max_jwks_bytes=4096)
    assert (await evaluate(st, key.token(claims(clock.time())))).status == 503
    await st.aclose()


@pytest.mark.parametrize("body", [b"not json", b"[1,2]", b'{"keys": 5}', b'{"keys": [], "x": NaN}', b"[" * 100000])
async def test_bad_jwks_documents_are_transient(clock: ManualClock, srv: JWKSServer, body: bytes) -> None:
    srv.set_raw("/jwks.json", body)
    st = remote(clock, srv)
    assert (await evaluate(st, signing_key().token(claims(clock.time())))).status == 503
    await st.aclose()


async def test_unusable_keys_in_remote_set_are_skipped(clock: ManualClock, srv: JWKSServer) -> None:
    good, enc, ops, bad = (signing_key("RS256", i, kid=k) for i, k in enumerate(["good", "enc", "ops", "bad"]))
    srv.set_jwks(
        [
            good.jwk(),
            enc.jwk(use="enc"),
            ops.jwk(key_ops=["encrypt"]),
            {"kty": "RSA", "kid": "bad", "n": "!!", "e": "AQAB"},
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
        ]
    )
    st = remote(clock, srv)
    chain = VerifierChain(st, clock=clock)
    assert await chain.verify_token(good.token(claims(clock.time()))) is not None
    for k in (enc, ops, bad):
        assert (await chain.evaluate(k.token(claims(clock.time())))).reason == "unknown_key"
    assert st.stats()["keys"] == 1
    await st.aclose()


async def test_redirects_not_followed(clock: ManualClock, srv: JWKSServer) -> None:
    srv.routes["/jwks.json"] = (302, b"", {"Location": srv.url + "/other.json"})
    srv.set_json("/other.json", {"keys": [signing_key().jwk()]})
    st = remote(clock, srv)
    assert (await evaluate(st, signing_key().token(claims(clock.time())))).status == 503
    assert srv.count("/other.json") == 0
    await st.aclose()


def test_jwks_json_shape_is_real_http(srv: JWKSServer) -> None:
    import httpx

    srv.set_jwks([signing_key().jwk()], cache_control="max-age=5")
    r = httpx.get(srv.url + "/jwks.json")
    assert r.status_code == 200 and r.headers["cache-control"] == "max-age=5"
    assert json.loads(r.content)["keys"][0]["kid"] == "rs256-0"


async def test_start_while_down_does_not_raise_and_recovers(clock: ManualClock, srv: JWKSServer) -> None:
    srv.status_override = 503
    key = signing_key()
    srv.set_jwks([key.jwk()])
    st = remote(clock, srv, min_refresh_interval=1.0)
    await st.start()  # logged, not raised: the application still starts
    assert (await evaluate(st, key.token(claims(clock.time())))).status == 503
    srv.status_override = None
    clock.advance(1.0)
    assert (await evaluate(st, key.token(claims(clock.time())))).allowed
    await st.aclose()


def test_stage_survives_a_new_event_loop(srv: JWKSServer) -> None:
    """A CLI or a test harness may run the same stage under successive event loops."""
    clock = ManualClock(1_800_000_000.0)
    key = signing_key()
    srv.set_jwks([key.jwk()])
    st = remote(clock, srv, min_refresh_interval=0.0, jwks_cache_min_ttl=0.0, jwks_cache_ttl=1.0)
    chain = VerifierChain(st, clock=clock)
    assert asyncio.run(chain.verify_token(key.token(claims(clock.time())))) is not None
    clock.advance(2.0)  # the key set expired: the next loop refetches with a fresh client
    rotated = signing_key("RS256", 1, kid="rotated")
    srv.set_jwks([key.jwk(), rotated.jwk()])
    assert asyncio.run(chain.verify_token(rotated.token(claims(clock.time())))) is not None
    assert srv.count() == 2
    asyncio.run(st.aclose())
