"""Attacks on the introspection stage: a misbehaving authorization server, odd-but-legal answers and tokens,
composition with a jwt stage, and a shared cache written by someone else. None may be accepted.

Each test started as a failing one (or pins a defence that held); see docs/security.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from fastapps_auth import AnyOf, ConfigError, VerifierChain
from fastapps_auth.dev_issuer import RunningIssuer
from fastapps_auth.stages.introspection import IntrospectionStage
from fastapps_auth.testing.issuer import jwt_stage, start_issuer
from tests.support.introspection import evaluate, requests
from tests.support.introspection import stage as issuer_stage
from tests.support.jwks_server import JWKSServer

SECRET = "s3cr3t-never-shown"
GOOD: dict[str, Any] = {"active": True, "sub": "alice", "client_id": "app", "aud": "api", "scope": "read"}


@pytest.fixture
def srv() -> Iterator[JWKSServer]:
    with JWKSServer() as server:
        yield server


def stage(url: str, **options: Any) -> IntrospectionStage:
    options.setdefault("audience", "api")
    options.setdefault("client_id", "rs")
    return IntrospectionStage(introspection_url=url, client_secret=SECRET, **options)


async def until(predicate: Any) -> bool:
    """Poll ``predicate`` for up to 5 s without blocking the event loop (a bounded wait, not a timed assertion)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(5):
            while not predicate():  # noqa: ASYNC110 - the server's threads count, polled
                await asyncio.sleep(0.01)
    return bool(predicate())


# -- what the answer says --------------------------------------------------------------------------


BROKEN: list[tuple[str, bytes]] = [
    ("duplicate active, inactive first", b'{"active":false,"active":true,"sub":"alice","aud":"api"}'),
    ("duplicate sub", b'{"active":true,"sub":"alice","sub":"admin","aud":"api"}'),
    ("duplicate member in cnf", b'{"active":true,"sub":"a","aud":"api","cnf":{"jkt":"x","jkt":"y"}}'),
    ("lone surrogate in sub", b'{"active":true,"sub":"al\\ud800ice","aud":"api"}'),
    ("lone surrogate in a name", b'{"active":true,"sub":"alice","aud":"api","\\udfff":1}'),
    ("lone surrogate in aud list", b'{"active":true,"sub":"alice","aud":["api","\\ud800"]}'),
    ("active null", b'{"active":null,"sub":"alice","aud":"api"}'),
    ("aud nested list", b'{"active":true,"sub":"alice","aud":[["api"]]}'),
    ("aud an object", b'{"active":true,"sub":"alice","aud":{"api":true}}'),
    ("exp a huge integer", b'{"active":true,"sub":"alice","aud":"api","exp":' + b"9" * 40 + b"}"),
    ("nbf a string", b'{"active":true,"sub":"alice","aud":"api","nbf":"now"}'),
    ("cnf a string", b'{"active":true,"sub":"alice","aud":"api","cnf":"jkt"}'),
    ("cnf.jkt a number", b'{"active":true,"sub":"alice","aud":"api","cnf":{"jkt":5}}'),
    ("auth_time a boolean", b'{"active":true,"sub":"alice","aud":"api","auth_time":true}'),
    ("iat NaN-like string", b'{"active":true,"sub":"alice","aud":"api","iat":"NaN"}'),
    ("sub empty", b'{"active":true,"sub":"","client_id":"app","aud":"api"}'),
]


@pytest.mark.parametrize("aud", [{"api": True}, [["api"]], 5, ["api", None]], ids=str)
async def test_a_malformed_aud_is_503_even_when_no_audience_is_checked(srv: JWKSServer, aud: Any) -> None:
    srv.set_json("/introspect", {**GOOD, "aud": aud})
    st = stage(srv.url + "/introspect", audience=None)
    assert (await evaluate(st, "tok")).status == 503
    await st.aclose()


async def test_an_empty_aud_list_is_for_no_one(srv: JWKSServer) -> None:
    srv.set_json("/introspect", {**GOOD, "aud": []})
    st = stage(srv.url + "/introspect")
    assert (await evaluate(st, "tok")).reason == "wrong_audience"
    await st.aclose()


@pytest.mark.parametrize("on_error", ["allow", "local"])
def test_the_stage_cannot_fail_open(on_error: str) -> None:
    for mode in ("authenticate", "check"):
        with pytest.raises(ConfigError) as err:
            stage("https://as.example/introspect", on_error=on_error, mode=mode)
        assert err.value.location.key == "on_error"


@pytest.mark.parametrize("body", [b for _, b in BROKEN], ids=[n for n, _ in BROKEN])
async def test_an_ambiguous_or_unencodable_answer_is_503_never_a_decision(srv: JWKSServer, body: bytes) -> None:
    srv.set_raw("/introspect", body)
    st = stage(srv.url + "/introspect")
    d = await evaluate(st, "tok")
    assert (d.allowed, d.status) == (False, 503), d.reason
    await st.aclose()


def test_an_escaped_surrogate_pair_is_one_character_and_fine() -> None:
    assert json.loads('"\\ud83d\\ude00"') == "\U0001f600"


async def test_a_well_formed_answer_with_an_escaped_pair_is_accepted(srv: JWKSServer) -> None:
    srv.set_raw("/introspect", b'{"active":true,"sub":"al\\ud83d\\ude00","aud":"api"}')
    st = stage(srv.url + "/introspect")
    d = await evaluate(st, "tok")
    assert d.allowed and d.access_token is not None and d.access_token.subject == "al\U0001f600"
    await st.aclose()


@pytest.mark.parametrize(
    "answer",
    [
        {"token_type": "refresh"},
        {"token_type": "Refresh_Token"},
        {"token_type": "urn:ietf:params:oauth:token-type:refresh_token"},
        {"token_type": "id_token"},
        {"token_type": "urn:ietf:params:oauth:token-type:id_token"},
        {"typ": "Refresh"},  # Keycloak
        {"typ": "Offline"},  # Keycloak's offline refresh token
        {"typ": "ID"},  # Keycloak's ID token
    ],
    ids=str,
)
async def test_a_token_that_is_not_an_access_token_is_refused(srv: JWKSServer, answer: dict[str, Any]) -> None:
    srv.set_json("/introspect", {**GOOD, **answer})
    st = stage(srv.url + "/introspect")
    d = await evaluate(st, "tok")
    assert (d.allowed, d.status, d.reason) == (False, 401, "wrong_token_type")
    await st.aclose()


@pytest.mark.parametrize("token_type", ["Bearer", "bearer", "DPoP", "N_A", "access_token"])
async def test_access_token_types_are_accepted(srv: JWKSServer, token_type: str) -> None:
    srv.set_json("/introspect", {**GOOD, "token_type": token_type, "typ": "Bearer"})
    st = stage(srv.url + "/introspect")
    assert (await evaluate(st, "tok")).allowed
    await st.aclose()


@pytest.mark.parametrize("sep", ["\u00a0", "\u2028", "\t", "\n", "\x1f", "\u3000"])
async def test_scope_is_split_on_spaces_only(srv: JWKSServer, sep: str) -> None:
    """RFC 7662 §2.2: space-separated. "read<NBSP>admin" is one (odd) scope, not a grant of admin."""
    srv.set_json("/introspect", {**GOOD, "scope": f"read{sep}admin"})
    st = stage(srv.url + "/introspect", required_scopes=["admin"])
    d = await evaluate(st, "tok")
    assert (d.allowed, d.status, d.reason) == (False, 403, "insufficient_scope")
    await st.aclose()


async def test_scope_with_several_spaces_is_still_split(srv: JWKSServer) -> None:
    srv.set_json("/introspect", {**GOOD, "scope": "  read   admin "})
    st = stage(srv.url + "/introspect", required_scopes=["admin"])
    d = await evaluate(st, "tok")
    assert d.allowed and d.access_token is not None and d.access_token.scopes == ["read", "admin"]
    await st.aclose()


async def test_an_iss_differing_by_a_slash_or_case_is_another_issuer(srv: JWKSServer) -> None:
    for iss in ("https://as.example/", "https://AS.example", "https://as.example/x"):
        srv.set_json("/introspect", {**GOOD, "iss": iss})
        st = stage(srv.url + "/introspect", issuer_url="https://as.example")
        assert (await evaluate(st, "tok")).reason == "wrong_issuer", iss
        await st.aclose()


# -- what the token looks like ---------------------------------------------------------------------


@pytest.mark.parametrize("token", ["\ud800abc", "a\x00b", "a b", "caf\u00e9", "a\nb", "=abc", "a=b"])
async def test_a_token_that_is_not_a_bearer_token_is_refused_without_a_request(srv: JWKSServer, token: str) -> None:
    srv.set_json("/introspect", GOOD)
    st = stage(srv.url + "/introspect")
    d = await evaluate(st, token)
    assert (d.allowed, d.status, d.reason) == (False, 401, "malformed")
    assert srv.count("/introspect") == 0
    assert await VerifierChain(st).verify_token(token) is None
    await st.aclose()


@pytest.mark.parametrize(
    "token", ["abc", "A-._~+/9", "gho_16C7e42F292c6912E7710c838347Ae178B4a", "YWJj==", "v2.local.x"]
)
async def test_rfc_6750_tokens_are_introspected(srv: JWKSServer, token: str) -> None:
    srv.set_json("/introspect", GOOD)
    st = stage(srv.url + "/introspect")
    assert (await evaluate(st, token)).allowed
    await st.aclose()


# -- HTTP ---------------------------------------------------------------------------------------------


async def test_a_redirect_is_not_followed_and_the_credentials_stay_home(srv: JWKSServer) -> None:
    with JWKSServer() as other:
        other.set_json("/steal", GOOD)
        for status in (301, 302, 303, 307, 308):
            srv.routes["/introspect"] = (status, b"{}", {"Location": other.url + "/steal"})
            st = stage(srv.url + "/introspect")
            assert (await evaluate(st, "tok")).status == 503
            await st.aclose()
        assert other.total == 0


async def test_an_endless_dripping_body_is_cut_by_the_one_time_limit(srv: JWKSServer) -> None:
    srv.set_json("/introspect", {**GOOD, "pad": "x" * 5000})
    srv.drip = 0.01
    st = stage(srv.url + "/introspect", timeout=0.5)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    d = await evaluate(st, "tok")
    assert d.status == 503 and loop.time() - t0 < 2.0
    await st.aclose()


async def test_a_gzip_bomb_costs_no_more_than_the_size_bound(srv: JWKSServer, caplog: pytest.LogCaptureFixture) -> None:
    bomb = gzip.compress(b'{"active":true,"pad":"' + b"x" * (50 << 20) + b'"}')
    srv.routes["/introspect"] = (200, bomb, {"Content-Encoding": "gzip"})
    st = stage(srv.url + "/introspect")
    d = await evaluate(st, "tok")
    assert d.status == 503
    assert any("larger than 65536 bytes" in r.getMessage() for r in caplog.records)
    await st.aclose()


async def test_a_200_with_html_is_503(srv: JWKSServer) -> None:
    srv.set_raw("/introspect", b"<!doctype html><title>Sign in</title>")
    st = stage(srv.url + "/introspect")
    assert (await evaluate(st, "tok")).status == 503
    await st.aclose()


async def test_introspection_requests_in_flight_are_bounded(srv: JWKSServer) -> None:
    """300 distinct tokens at once open at most ``max_connections`` connections to the server."""
    srv.hang = True
    st = stage(srv.url + "/introspect", max_connections=4, timeout=2.0)
    chain = VerifierChain(st)
    tasks = [asyncio.ensure_future(chain.evaluate(f"tok-{i}")) for i in range(300)]
    assert await until(lambda: srv.count("/introspect") >= 4)
    await asyncio.sleep(0.3)  # room for more to arrive, were they not bounded
    assert srv.count("/introspect") == 4
    decisions = await asyncio.gather(*tasks)
    assert {d.status for d in decisions} == {503}
    await chain.aclose()


def test_max_connections_must_be_positive() -> None:
    with pytest.raises(ConfigError):
        stage("https://as.example/introspect", max_connections=0)


# -- the endpoint URL ----------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["https://rs:pw@as.example/introspect", "https://rs@as.example/introspect"])
def test_a_configured_endpoint_with_userinfo_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError) as err:
        IntrospectionStage(introspection_url=url, client_id="rs", client_secret=SECRET)
    assert "pw" not in str(err.value)


async def test_a_discovered_endpoint_with_userinfo_is_refused(srv: JWKSServer) -> None:
    issuer = srv.url
    srv.set_json(
        "/.well-known/openid-configuration",
        {"issuer": issuer, "introspection_endpoint": f"http://rs:leak@127.0.0.1:{srv.port}/introspect"},
    )
    srv.set_json("/introspect", GOOD)
    st = IntrospectionStage(issuer_url=issuer, client_id="rs", client_secret=SECRET, audience="api")
    d = await evaluate(st, "tok")
    assert d.status == 503 and "leak" not in (d.description or "")
    assert srv.count("/introspect") == 0
    await st.aclose()


async def test_a_discovered_endpoint_issuer_that_differs_by_a_slash_is_refused(srv: JWKSServer) -> None:
    srv.set_json(
        "/.well-known/openid-configuration", {"issuer": srv.url + "/", "introspection_endpoint": srv.url + "/i"}
    )
    srv.set_json("/i", GOOD)
    st = IntrospectionStage(issuer_url=srv.url, client_id="rs", client_secret=SECRET, audience="api")
    assert (await evaluate(st, "tok")).status == 503
    assert srv.count("/i") == 0
    await st.aclose()


# -- secrets and tokens never shown -------------------------------------------------------------------


@pytest.mark.parametrize("auth_method", ["client_secret_basic", "client_secret_post"])
async def test_neither_the_secret_nor_the_token_appears_anywhere(
    srv: JWKSServer, caplog: pytest.LogCaptureFixture, auth_method: str
) -> None:
    token = "tok-SENSITIVE-9f8e7d"
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    for status, body in ((401, b'{"error":"invalid_client"}'), (200, b"garbage"), (200, json.dumps(GOOD).encode())):
        srv.set_raw("/introspect", body, status=status)
        st = stage(srv.url + "/introspect", auth_method=auth_method, cache_ttl=0)
        d = await evaluate(st, token)
        seen += [repr(d), str(d), d.description or "", repr(st), repr(st.options), str(st.options.model_dump())]
        seen += [json.dumps(t.as_dict()) for t in d.trace]
        if d.access_token is not None:
            seen += [repr(d.access_token), str(d.access_token)]
        await st.aclose()
    seen += [r.getMessage() for r in caplog.records] + [str(r.exc_info) for r in caplog.records]
    text = "\n".join(seen)
    assert SECRET not in text and token not in text


# -- any-of(jwt, introspection) ------------------------------------------------------------------------


@pytest.fixture
def issuer() -> Iterator[RunningIssuer]:
    running = start_issuer()
    yield running
    running.stop()


OTHER_API = "https://other.example/api"


async def test_a_jwt_refused_for_its_audience_does_not_get_a_second_chance_by_introspection(
    issuer: RunningIssuer,
) -> None:
    """The JWT verified (it is the issuer's), the jwt stage refused its claims: introspection, with a looser
    audience rule, must not accept what the jwt stage refused."""
    intro = issuer_stage(issuer, introspection_url=issuer.introspection_endpoint, audience=[issuer.audience, OTHER_API])
    chain = VerifierChain(AnyOf(jwt_stage(issuer), intro))
    d = await chain.evaluate(issuer.mint("alice", audience=OTHER_API))
    assert not d.allowed and [(t.stage, t.reason) for t in d.trace] == [
        ("jwt", "wrong_audience"),
        ("introspection", "jwt_refused"),
    ]
    assert requests(intro) == 0
    await chain.aclose()


async def test_a_jwt_refused_for_its_type_is_not_introspected(issuer: RunningIssuer) -> None:
    """An ID token (typ JWT, not at+jwt) the jwt stage refused is not accepted by an unchecked introspection."""
    intro = issuer_stage(issuer, introspection_url=issuer.introspection_endpoint, audience=None)
    chain = VerifierChain(AnyOf(jwt_stage(issuer), intro))
    d = await chain.evaluate(issuer.mint("alice", typ="JWT"))
    assert not d.allowed and d.trace[-1].reason == "jwt_refused"
    assert requests(intro) == 0
    await chain.aclose()


async def test_a_token_the_jwt_stage_cannot_parse_is_still_introspected(issuer: RunningIssuer) -> None:
    intro = issuer_stage(issuer, introspection_url=issuer.introspection_endpoint)
    chain = VerifierChain(AnyOf(jwt_stage(issuer), intro))
    d = await chain.evaluate(issuer.mint_opaque("bob"))
    assert d.allowed and [t.reason for t in d.trace] == ["malformed", None]
    await chain.aclose()


async def test_introspect_on_jwt_failure_also_sends_claim_refusals(issuer: RunningIssuer) -> None:
    intro = issuer_stage(issuer, introspection_url=issuer.introspection_endpoint, introspect_on_jwt_failure=True)
    chain = VerifierChain(AnyOf(jwt_stage(issuer), intro))
    d = await chain.evaluate(issuer.mint("alice", audience=OTHER_API))
    assert not d.allowed and [t.reason for t in d.trace] == ["wrong_audience", "wrong_audience"]
    assert requests(intro) == 1
    await chain.aclose()


# -- lifecycle ---------------------------------------------------------------------------------------


async def test_a_closed_stage_is_503_and_verify_token_is_none(srv: JWKSServer) -> None:
    srv.set_json("/introspect", GOOD)
    st = stage(srv.url + "/introspect")
    chain = VerifierChain(st)
    assert (await chain.evaluate("tok")).allowed
    await chain.aclose()
    assert (await chain.evaluate("tok")).status == 503
    assert await chain.verify_token("tok") is None


# -- the shared cache ----------------------------------------------------------------------------------


async def _entries(redis_url: str, prefix: str) -> dict[str, bytes]:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url)
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
        out: dict[str, bytes] = {}
        for k in keys:
            value = await client.get(k)
            if isinstance(value, bytes):
                out[k.decode()] = value
        return out
    finally:
        await client.aclose()


async def _write(redis_url: str, key: str, value: bytes) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url)
    try:
        await client.set(key, value, px=60_000)
    finally:
        await client.aclose()


@pytest.mark.redis
async def test_an_answer_given_to_one_client_is_not_served_to_another(
    srv: JWKSServer, redis_url: str, redis_prefix: str
) -> None:
    """RFC 7662 §2.2: the server may answer differently per client ("not for this client": inactive)."""
    url = srv.url + "/introspect"
    srv.set_json("/introspect", GOOD)
    a = stage(url, client_id="rs-a", cache=redis_url, cache_prefix=redis_prefix)
    b = stage(url, client_id="rs-b", cache=redis_url, cache_prefix=redis_prefix)
    assert (await evaluate(a, "tok")).allowed
    srv.set_json("/introspect", {"active": False})  # what the server says to rs-b
    d = await evaluate(b, "tok")
    assert (d.allowed, d.reason) == (False, "inactive")
    assert srv.count("/introspect") == 2
    await a.aclose()
    await b.aclose()


@pytest.mark.redis
async def test_an_entry_forged_or_altered_in_redis_is_not_believed(
    srv: JWKSServer, redis_url: str, redis_prefix: str
) -> None:
    """A co-tenant that can write the shared Redis can neither change a real answer nor mint one."""
    url = srv.url + "/introspect"
    srv.set_json("/introspect", GOOD)
    first = stage(url, cache=redis_url, cache_prefix=redis_prefix)
    assert (await evaluate(first, "tok")).allowed
    [(key, value)] = (await _entries(redis_url, redis_prefix)).items()
    assert key.endswith(_digest_hex("tok"))
    item = json.loads(value)
    item["a"]["sub"] = "admin"
    forged = json.dumps(item).encode()
    await _write(redis_url, key, forged)
    await _write(redis_url, key[: -len(_digest_hex("x"))] + _digest_hex("made-up"), forged)
    srv.set_json("/introspect", {"active": False})
    worker = stage(url, cache=redis_url, cache_prefix=redis_prefix)  # another worker: empty in-process cache
    for token in ("tok", "made-up"):
        d = await evaluate(worker, token)
        assert (d.allowed, d.reason) == (False, "inactive"), token
    assert srv.count("/introspect") == 3, "both asked at the endpoint"
    await first.aclose()
    await worker.aclose()


@pytest.mark.redis
async def test_an_entry_is_not_readable_by_a_stage_with_another_secret(
    srv: JWKSServer, redis_url: str, redis_prefix: str
) -> None:
    url = srv.url + "/introspect"
    srv.set_json("/introspect", GOOD)
    a = stage(url, cache=redis_url, cache_prefix=redis_prefix)
    assert (await evaluate(a, "tok")).allowed
    b = IntrospectionStage(
        introspection_url=url,
        client_id="rs",
        client_secret="another",
        audience="api",
        cache=redis_url,
        cache_prefix=redis_prefix,
    )
    assert (await evaluate(b, "tok")).allowed
    assert srv.count("/introspect") == 2
    await a.aclose()
    await b.aclose()


@pytest.mark.redis
async def test_the_shared_entry_holds_neither_the_token_nor_the_secret(
    srv: JWKSServer, redis_url: str, redis_prefix: str
) -> None:
    token = "tok-SENSITIVE-1234"
    srv.set_json("/introspect", {**GOOD, "token": token})  # an endpoint that echoes the token back
    st = stage(srv.url + "/introspect", cache=redis_url, cache_prefix=redis_prefix)
    d = await evaluate(st, token)
    assert d.allowed and d.access_token is not None and "token" not in (d.access_token.claims or {})
    blob = b"".join(k.encode() + v for k, v in (await _entries(redis_url, redis_prefix)).items())
    assert token.encode() not in blob and SECRET.encode() not in blob
    await st.aclose()


def _digest_hex(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
