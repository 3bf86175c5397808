"""The DPoP replay cache on the real Redis (database 13, a key prefix of each test's own), on a Redis
Cluster and on a Sentinel-managed primary started for this module: the same URLs as the rate limiter.

The claim is about several workers, so it is tested with several: two real processes, each with
its own chain and connection pool, given the same proof at the same moment; exactly one accepts it,
on one server and on a cluster.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import redis.asyncio as aioredis

from fastapps_auth import ManualClock
from fastapps_auth.backends.dpop.replay import RedisReplayStore, replay_key
from tests.support.dpop import URL, Setup
from tests.support.dpop import request as info
from tests.support.redis_servers import RedisClusterServers, SentinelServers, require_redis_server
from tests.support.services import REDIS_HOST

pytestmark = pytest.mark.redis
Servers = TypeVar("Servers", RedisClusterServers, SentinelServers)
ROOT = Path(__file__).resolve().parent.parent


def _running(make: Callable[[], Servers]) -> Iterator[Servers]:
    require_redis_server()
    servers = make()
    servers.start()
    try:
        yield servers
    finally:
        servers.stop()


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterServers]:
    yield from _running(RedisClusterServers)


@pytest.fixture(scope="module")
def sentinel() -> Iterator[SentinelServers]:
    yield from _running(SentinelServers)


@pytest.fixture(params=["server", "cluster"])
def fleet_url(request: pytest.FixtureRequest) -> str:
    """The shared Redis, or the Redis Cluster (started only for the tests that take it)."""
    if request.param == "cluster":
        return str(request.getfixturevalue("cluster").url)
    return str(request.getfixturevalue("redis_url"))


def worker(job: dict[str, object]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.support.dpop_worker", json.dumps(job)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_proof_replayed_to_another_worker_process_is_refused(
    clock: ManualClock, fleet_url: str, redis_prefix: str
) -> None:
    s = Setup(clock)  # keys are memoized: each worker's Setup has the same issuer and client keys
    token = s.token()
    proof = s.proof(token)
    job = {
        "now": clock.time(),
        "jwks": {"keys": [s.issuer.jwk()]},
        "issuer": "https://issuer.example/",
        "audience": "api://mcp",
        "redis_url": fleet_url,
        "prefix": redis_prefix,
        "token": token,
        "proof": proof,
        "url": URL,
    }
    procs = [worker(job), worker(job)]
    try:
        for p in procs:
            assert p.stdout is not None
            line = p.stdout.readline()
            assert line.strip() == "ready", p.stderr.read() if p.stderr else line
        for p in procs:  # both go at once: the race is Redis's to settle
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        results = [json.loads(p.communicate(timeout=60)[0].strip().splitlines()[-1]) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
    assert sorted(r["allowed"] for r in results) == [False, True], results
    assert [r["reason"] for r in results if not r["allowed"]] == ["dpop_proof_replayed"]


async def test_the_redis_entry_is_a_digest_with_the_proofs_ttl(
    clock: ManualClock, redis_url: str, redis_prefix: str
) -> None:
    s = Setup(clock, replay_cache=redis_url, replay_prefix=redis_prefix)
    token = s.token()
    proof = s.proof(token, jti="my-secret-jti", iat=clock.time() - 100)
    assert (await s.chain.evaluate(token, request=info(proof))).allowed
    assert (await s.chain.evaluate(token, request=info(proof))).reason == "dpop_proof_replayed"
    client = aioredis.Redis.from_url(redis_url)
    try:
        keys = [k.decode() async for k in client.scan_iter(match=f"{redis_prefix}*")]
        assert keys == [f"{redis_prefix}:dpop:{replay_key(s.jkt, 'my-secret-jti').hex()}"]
        assert "my-secret-jti" not in keys[0] and proof[:20] not in keys[0]
        ttl = await client.pttl(keys[0])
        assert 220_000 < ttl <= 230_000  # what is left of iat + max_age + leeway
    finally:
        await client.aclose()
        await s.chain.aclose()


async def test_the_pool_is_bounded_and_a_burst_waits_for_it(redis_url: str, redis_prefix: str) -> None:
    name = f"{redis_prefix}-pool"
    store = RedisReplayStore(f"{redis_url}?client_name={name}", prefix=redis_prefix, timeout=5.0, max_connections=2)
    client = aioredis.Redis.from_url(redis_url)
    try:
        results = await asyncio.gather(*(store.first_use(bytes([i]) * 32, 30.0) for i in range(60)))
        assert all(results)
        clients = [c for c in await client.client_list() if c.get("name") == name]
        assert 1 <= len(clients) <= 2
        assert not await store.first_use(bytes([7]) * 32, 30.0)
    finally:
        await client.aclose()
        await store.aclose()


@pytest.mark.parametrize(("on_error", "allowed"), [("deny", False), ("allow", True)])
async def test_redis_down_follows_on_error(
    clock: ManualClock, caplog: pytest.LogCaptureFixture, on_error: str, allowed: bool
) -> None:
    with socket.socket() as sock:  # a port nobody listens on once it is closed
        sock.bind((REDIS_HOST, 0))
        port = sock.getsockname()[1]
    down = f"redis://{REDIS_HOST}:{port}/13"
    s = Setup(clock, replay_cache=down, replay_timeout=0.5, on_error=on_error)
    token = s.token()
    d = await s.chain.evaluate(token, request=info(s.proof(token)))
    assert d.allowed is allowed
    assert d.failed_open == (("dpop",) if allowed else ())
    if not allowed:
        assert (d.status, d.error) == (503, "temporarily_unavailable")
    with pytest.raises(RuntimeError, match="replay cache unreachable"):
        await s.dpop.probe()
    await s.dpop.start()  # logged, not raised
    assert "cannot reach its replay cache" in caplog.text
    await s.chain.aclose()


@pytest.mark.parametrize("where", ["cluster", "sentinel"])
async def test_two_workers_share_the_cache_on_a_cluster_and_through_sentinel(
    clock: ManualClock, request: pytest.FixtureRequest, where: str
) -> None:
    url = request.getfixturevalue(where).url
    prefix = f"t{uuid.uuid4().hex[:8]}"
    first = Setup(clock, replay_cache=url, replay_prefix=prefix, replay_timeout=2.0)
    second = Setup(clock, replay_cache=url, replay_prefix=prefix, replay_timeout=2.0)
    try:
        await first.dpop.probe()
        tokens = [first.token(jti=f"t-{i}") for i in range(12)]  # twelve proofs: their keys spread over the slots
        proofs = [first.proof(t) for t in tokens]
        for token, proof in zip(tokens, proofs, strict=True):
            d = await first.chain.evaluate(token, request=info(proof))
            assert d.allowed, d.reason
        for token, proof in zip(tokens, proofs, strict=True):
            d = await second.chain.evaluate(token, request=info(proof))
            assert d.reason == "dpop_proof_replayed"
    finally:
        await first.chain.aclose()
        await second.chain.aclose()


async def test_a_plain_url_at_a_cluster_node_says_to_use_redis_cluster(
    clock: ManualClock, cluster: RedisClusterServers
) -> None:
    node = cluster.servers[0]
    s = Setup(clock, replay_cache=f"redis://{node.address}/0", replay_timeout=2.0)
    try:
        with pytest.raises(RuntimeError, match="use redis\\+cluster://"):
            await s.dpop.probe()
    finally:
        await s.chain.aclose()
