"""The rate-limit stage on a Sentinel-managed primary: a primary, its replica and a Sentinel started for the test.

Counts are shared through the primary the Sentinel names; when that primary dies, the Sentinel
promotes the replica and the stage follows it, with the counts the replica had.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import pytest

from fastapps_auth import VerifierChain
from fastapps_auth.stages.rate_limit import RateLimitStage
from tests.support.redis_servers import SentinelServers, command, require_redis_server
from tests.support.stages import TokenIsSubject

pytestmark = pytest.mark.redis


@pytest.fixture
def sentinel() -> Iterator[SentinelServers]:
    require_redis_server()
    servers = SentinelServers().start()
    try:
        yield servers
    finally:
        servers.stop()


async def test_counts_are_shared_through_the_primary_and_a_failover_is_followed(sentinel: SentinelServers) -> None:
    stage = RateLimitStage(
        limit=10, window=3600, backend=sentinel.url, prefix=f"t{uuid.uuid4().hex[:8]}", timeout=2.0, on_error="deny"
    )
    async with VerifierChain(TokenIsSubject(), stage) as chain:
        await chain.start()
        await stage.probe()
        for expected in (9, 8, 7):
            d = await chain.evaluate("user:alice")
            assert d.allowed and d.rate_limit is not None and d.rate_limit.remaining == expected
        assert int(command(sentinel.primary, "DBSIZE")) == 1  # the state is on the primary
        command(sentinel.primary, "WAIT", "1", "2000")  # and on its replica (replication is asynchronous)
        sentinel.primary.kill()
        refused = 0
        deadline = time.monotonic() + 60
        while True:
            d = await chain.evaluate("user:alice")
            if d.allowed:
                break
            assert (d.status, d.reason) == (503, "unavailable")
            refused += 1
            assert time.monotonic() < deadline, "the Sentinel never promoted the replica"
            await asyncio.sleep(0.1)  # a failover, not an expiry: the Sentinel decides when it is over
        assert refused > 0
        assert sentinel.master_port() == sentinel.replica.port
        assert d.rate_limit is not None and d.rate_limit.remaining == 6  # the promoted replica had the count
        stats = stage.stats()
        assert stats["outages"] == 1 and stats["denied_unavailable"] == refused
