"""Shared fixtures: an injected clock, a local JWKS server, the real services, a cuttable TCP proxy."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from hypothesis import settings

from fastapps_auth.clock import ManualClock
from tests.support.jwks_server import JWKSServer
from tests.support.services import PG_HOST, PG_PORT, REDIS_HOST, REDIS_PORT, require_service
from tests.support.tcp_proxy import TCPProxy

# CI replays the same examples on every run (a red CI is about the change, not a lucky draw);
# developers' runs keep exploring new ones, and hypothesis prints a failing example's blob.
settings.register_profile("ci", derandomize=True, print_blob=True, deadline=None)
settings.register_profile("dev", print_blob=True, deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(1_800_000_000.0)


@pytest.fixture
def srv() -> Iterator[JWKSServer]:
    """A JWKS and discovery server on 127.0.0.1, started for the test."""
    with JWKSServer() as server:
        yield server


@pytest.fixture
def postgres_dsn() -> str:
    """DSN of the real PostgreSQL (database ``test``); fails in CI, skips elsewhere, when it is down."""
    require_service("PostgreSQL", PG_HOST, PG_PORT)
    return f"postgresql://postgres@{PG_HOST}:{PG_PORT}/test"


@pytest.fixture
def redis_url() -> str:
    """URL of the real Redis, database 13 (tests clean it); fails in CI, skips elsewhere, when it is down."""
    require_service("Redis", REDIS_HOST, REDIS_PORT)
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/13"


@pytest.fixture
async def redis_prefix(redis_url: str) -> AsyncIterator[str]:
    """A Redis key prefix of this test's own; its keys are deleted afterwards (other tests share database 13)."""
    import redis.asyncio as aioredis

    p = f"test-{uuid.uuid4().hex[:12]}"
    yield p
    client = aioredis.Redis.from_url(redis_url)
    try:
        keys = [k async for k in client.scan_iter(match=f"{p}*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture
async def pg_proxy(postgres_dsn: str) -> AsyncIterator[TCPProxy]:
    proxy = await TCPProxy(PG_HOST, PG_PORT).start()
    yield proxy
    await proxy.aclose()


@pytest.fixture
async def redis_proxy(redis_url: str) -> AsyncIterator[TCPProxy]:
    proxy = await TCPProxy(REDIS_HOST, REDIS_PORT).start()
    yield proxy
    await proxy.aclose()
