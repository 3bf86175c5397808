"""Attacks on the introspection stage through what it is composed with: a jwt alternative in any-of whose
refusal must stand, and a shared Redis cache that someone else can write to. None may be accepted."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator

import pytest

from fastapps_auth import AnyOf, ConfigError, VerifierChain
from fastapps_auth.dev_issuer import RunningIssuer
from fastapps_auth.stages.introspection import IntrospectionStage
from fastapps_auth.testing.issuer import jwt_stage, start_issuer
from tests.support.introspection import GOOD, SECRET, evaluate, requests, stage_at
from tests.support.introspection import stage as issuer_stage
from tests.support.jwks_server import JWKSServer


@pytest.fixture
def srv() -> Iterator[JWKSServer]:
    with JWKSServer() as server:
        yield server


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
    a = stage_at(url, client_id="rs-a", cache=redis_url, cache_prefix=redis_prefix)
    b = stage_at(url, client_id="rs-b", cache=redis_url, cache_prefix=redis_prefix)
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
    first = stage_at(url, cache=redis_url, cache_prefix=redis_prefix)
    assert (await evaluate(first, "tok")).allowed
    [(key, value)] = (await _entries(redis_url, redis_prefix)).items()
    assert key.endswith(_digest_hex("tok"))
    item = json.loads(value)
    item["a"]["sub"] = "admin"
    forged = json.dumps(item).encode()
    await _write(redis_url, key, forged)
    await _write(redis_url, key[: -len(_digest_hex("x"))] + _digest_hex("made-up"), forged)
    srv.set_json("/introspect", {"active": False})
    worker = stage_at(url, cache=redis_url, cache_prefix=redis_prefix)  # another worker: empty in-process cache
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
    a = stage_at(url, cache=redis_url, cache_prefix=redis_prefix)
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
    st = stage_at(srv.url + "/introspect", cache=redis_url, cache_prefix=redis_prefix)
    d = await evaluate(st, token)
    assert d.allowed and d.access_token is not None and "token" not in (d.access_token.claims or {})
    blob = b"".join(k.encode() + v for k, v in (await _entries(redis_url, redis_prefix)).items())
    assert token.encode() not in blob and SECRET.encode() not in blob
    await st.aclose()


def _digest_hex(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# -- one chain, two servers ------------------------------------------------------------------------


def test_a_chain_bound_to_one_server_cannot_be_rebound_to_another(issuer: RunningIssuer) -> None:
    """Last-bind-wins would make the first server accept the tokens minted for the second."""
    chain = VerifierChain(AnyOf(jwt_stage(issuer, audience=None), issuer_stage(issuer, audience=None)))
    chain.bind_resource("https://a.example/mcp")
    chain.bind_resource("HTTPS://A.example:443/mcp/")  # the same resource: fine
    with pytest.raises(ConfigError) as err:
        chain.bind_resource("https://b.example/mcp")
    assert err.value.location.key == "resource_url" and "b.example" in str(err.value)


async def test_a_stage_with_an_audience_may_serve_several_servers(srv: JWKSServer) -> None:
    srv.set_json("/introspect", GOOD)
    st = stage_at(srv.url + "/introspect", audience="api")
    st.bind_resource("https://a.example/mcp")
    st.bind_resource("https://b.example/mcp")  # the explicit audience wins, for both
    assert (await evaluate(st, "tok")).allowed
    await st.aclose()
