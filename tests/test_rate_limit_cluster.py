"""The rate-limit stage on a real Redis Cluster: three primaries and three replicas started for this session.

Exact admissions for users over every primary; MOVED after a slot is resharded, ASK (and TRYAGAIN)
while it migrates; a primary killed: its users fail per policy until its replica takes over, then
the replica decides with the counts intact; a plain redis:// URL at a cluster node reported once.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from redis.crc import key_slot

from fastapps_auth import VerifierChain
from fastapps_auth.backends.ratelimit.redis import RedisRateLimitBackend
from fastapps_auth.stages.rate_limit import RateLimitStage
from tests.support.redis_servers import RedisClusterServers, RedisServer, command, require_redis_server
from tests.support.stages import TokenIsSubject

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterServers]:
    require_redis_server()
    servers = RedisClusterServers().start()
    try:
        yield servers
    finally:
        servers.stop()


@pytest.fixture
async def chain(cluster: RedisClusterServers) -> AsyncIterator[VerifierChain]:
    stage = RateLimitStage(
        limit=5, window=3600, backend=cluster.url, prefix=f"t{uuid.uuid4().hex[:8]}", timeout=2.0, on_error="deny"
    )
    async with VerifierChain(TokenIsSubject(), stage) as chain:
        await chain.start()
        yield chain


def stage_of(chain: VerifierChain) -> RateLimitStage:
    stage = chain.stages[-1]
    assert isinstance(stage, RateLimitStage)
    return stage


def slot_of(chain: VerifierChain, subject: str) -> int:
    backend = stage_of(chain).backend
    assert isinstance(backend, RedisRateLimitBackend)
    rule = stage_of(chain).rules[0]
    return key_slot(backend.redis_key(subject, rule).encode())


async def remaining(chain: VerifierChain, subject: str) -> int | None:
    d = await chain.evaluate(f"user:{subject}")
    return d.rate_limit.remaining if d.allowed and d.rate_limit else None


def other_primary(cluster: RedisClusterServers, than: RedisServer) -> RedisServer:
    return next(s for s in cluster.primaries() if s.address != than.address)


def move_slot(
    cluster: RedisClusterServers, slot: int, dest: RedisServer, *, keys: int | None = None, finish: bool = True
) -> None:
    """Migrate ``slot`` to ``dest`` as ``redis-cli --cluster reshard`` does; ``keys``/``finish`` stop half-way."""
    src = cluster.owner(slot)
    src_id, dest_id = cluster.node_id(src), cluster.node_id(dest)
    command(dest, "CLUSTER", "SETSLOT", str(slot), "IMPORTING", src_id)
    command(src, "CLUSTER", "SETSLOT", str(slot), "MIGRATING", dest_id)
    names = command(src, "CLUSTER", "GETKEYSINSLOT", str(slot), "100").split()
    for name in names[:keys]:
        command(src, "MIGRATE", "127.0.0.1", str(dest.port), name, "0", "5000")
    if finish and keys is None:
        finish_move(cluster, slot, dest)


def finish_move(cluster: RedisClusterServers, slot: int, dest: RedisServer) -> None:
    dest_id = cluster.node_id(dest)
    for server in cluster.primaries():
        command(server, "CLUSTER", "SETSLOT", str(slot), "NODE", dest_id)


async def test_exact_admissions_for_hundreds_of_users_on_every_primary(
    chain: VerifierChain, cluster: RedisClusterServers
) -> None:
    users = [f"u{i}" for i in range(300)]
    owners = {cluster.owner(slot_of(chain, u)).address for u in users}
    assert len(owners) == 3  # the users' slots span every primary
    decisions = await asyncio.gather(*(chain.evaluate(f"user:{u}") for u in users for _ in range(7)))
    admitted: dict[str, int] = dict.fromkeys(users, 0)
    for d in decisions:
        assert d.status in (200, 429), d
        if d.allowed:
            assert d.subject is not None
            admitted[d.subject] += 1
    assert set(admitted.values()) == {5}
    assert stage_of(chain).stats()["errors"] == 0


async def test_moved_after_resharding_a_slot_is_followed_with_the_count_intact(
    chain: VerifierChain, cluster: RedisClusterServers
) -> None:
    assert await remaining(chain, "moving") == 4
    slot = slot_of(chain, "moving")
    src = cluster.owner(slot)
    dest = other_primary(cluster, src)
    move_slot(cluster, slot, dest)
    assert cluster.owner(slot).address == dest.address
    assert await remaining(chain, "moving") == 3  # the client asked the old owner, was MOVED, went on
    assert await remaining(chain, "moving") == 2
    assert stage_of(chain).stats()["errors"] == 0


async def test_ask_and_tryagain_during_a_migration(cluster: RedisClusterServers) -> None:
    stage = RateLimitStage(
        rules=[{"limit": 5, "window": 60}, {"limit": 50, "window": 3600}],
        backend=cluster.url,
        prefix=f"t{uuid.uuid4().hex[:8]}",
        timeout=2.0,
        on_error="deny",
    )
    async with VerifierChain(TokenIsSubject(), stage) as chain:
        assert await remaining(chain, "migrating") == 4
        slot = slot_of(chain, "migrating")
        src = cluster.owner(slot)
        dest = other_primary(cluster, src)
        move_slot(cluster, slot, dest, keys=1)  # one of the user's two keys has moved, the other not yet
        d = await chain.evaluate("user:migrating")
        # TRYAGAIN (a multi-key script across a half-moved slot) is retried briefly, then on_error applies
        assert (d.status, d.trace[-2].reason) == (503, "unavailable")
        move_slot(cluster, slot, dest, finish=False)  # every key moved, the slot not yet handed over
        assert cluster.owner(slot).address == src.address
        assert await remaining(chain, "migrating") == 3  # the old owner answered ASK; asked, the new one decided
        assert int(command(dest, "CLUSTER", "COUNTKEYSINSLOT", str(slot))) == 2
        finish_move(cluster, slot, dest)
        assert await remaining(chain, "migrating") == 2  # and now MOVED


async def test_a_killed_primary_fails_its_users_per_policy_then_its_replica_decides_with_the_counts(
    chain: VerifierChain, cluster: RedisClusterServers, caplog: pytest.LogCaptureFixture
) -> None:
    users = [f"k{i}" for i in range(40)]
    for u in users:
        assert await remaining(chain, u) == 4
    victim = cluster.owner(slot_of(chain, users[0]))
    affected = [u for u in users if cluster.owner(slot_of(chain, u)).address == victim.address]
    spared = [u for u in users if u not in affected]
    assert affected and spared
    command(victim, "WAIT", "1", "2000")  # the replica has every write (replication is asynchronous)
    victim.kill()
    refused = 0
    try:
        deadline = time.monotonic() + 60
        while True:
            d = await chain.evaluate(f"user:{affected[0]}")
            if d.allowed:
                break
            assert (d.status, d.reason) == (503, "unavailable")  # on_error = "deny", no other outcome
            refused += 1
            assert time.monotonic() < deadline, "the replica never took over"
            await asyncio.sleep(0.1)  # a failover, not an expiry: the cluster decides when it is over
        assert refused > 0
        assert d.rate_limit is not None and d.rate_limit.remaining == 3  # the promoted replica had the count
        for u in spared:  # the other primaries' users were never affected, and their counts are intact
            assert await remaining(chain, u) == 3
        for u in affected[1:]:
            assert await remaining(chain, u) == 3
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "unavailable" in r.getMessage()]
        assert len(warnings) == 1
    finally:
        victim.start()  # it rejoins as a replica of the promoted node
        cluster.wait_healthy(deadline=60)


async def test_a_plain_url_at_a_cluster_node_is_reported_at_start_and_first_use(
    cluster: RedisClusterServers, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"redis://{cluster.primaries()[0].address}"
    started = RateLimitStage(limit=5, window=60, backend=url, on_error="deny", name="started", timeout=2.0)
    lazy = RateLimitStage(limit=5, window=60, backend=url, on_error="deny", name="lazy", timeout=2.0)
    async with VerifierChain(TokenIsSubject(), started) as a, VerifierChain(TokenIsSubject(), lazy) as b:
        await started.start()  # never raises: it says what is wrong
        assert any(r.levelno == logging.ERROR and "use redis+cluster://" in r.getMessage() for r in caplog.records)
        decisions = [await chain.evaluate(f"user:p{i}") for chain in (a, b) for i in range(30)]
        # every user, not only those whose slot is elsewhere: a third limited and the rest not would be worse
        assert {d.status for d in decisions[:30]} == {503}
        assert {d.status for d in decisions[45:]} == {503}  # once seen, on every check
        with pytest.raises(Exception, match="use redis\\+cluster://"):
            await lazy.probe()
    storm = [r for r in caplog.records if r.levelno == logging.WARNING and "use redis+cluster://" in r.getMessage()]
    assert len(storm) == 2  # one per stage, not one per request
