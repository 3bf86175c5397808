"""The rate-limit stage as a fleet runs it: several processes and uvicorn workers on one real Redis.

With default options, cold bursts from four processes and from four uvicorn workers admit exactly
the limit; connections per process stay within ``max_connections`` and are reused; a check whose
reply was lost is never charged twice; ``start()`` never raises, ``probe()`` does; ``aclose()``
with checks in flight closes every connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import multiprocessing
import os
import subprocess
import sys
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from fastapps_auth import VerifierChain
from fastapps_auth.backends.ratelimit.algorithm import Rule
from fastapps_auth.backends.ratelimit.redis import RedisRateLimitBackend
from fastapps_auth.stages.rate_limit import RateLimitStage
from tests.support.redis_servers import free_port
from tests.support.stages import TokenIsSubject
from tests.support.tcp_proxy import TCPProxy

pytestmark = pytest.mark.redis
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def prefix(redis_prefix: str) -> str:
    return redis_prefix


def _spin(stop: Any) -> None:
    """Keeps a core busy: the bursts below run on a machine that has other work."""
    while not stop.is_set():
        sum(range(10_000))


def _cold_burst(url: str, prefix: str, start: Any, n: int) -> int:
    """One process: a default rate-limit stage, started, then ``n`` concurrent first requests of one user."""

    async def run() -> int:
        chain = VerifierChain(TokenIsSubject(), RateLimitStage(limit=50, window=3600, backend=url, prefix=prefix))
        async with chain:
            await chain.start()
            start.wait()
            decisions = await asyncio.gather(*(chain.evaluate("user:cold") for _ in range(n)))
        assert all(d.status in (200, 429) for d in decisions), [d for d in decisions if d.status not in (200, 429)]
        return sum(d.allowed for d in decisions)

    return asyncio.run(run())


def test_a_cold_burst_from_four_busy_processes_admits_exactly_the_limit(redis_url: str, prefix: str) -> None:
    ctx = multiprocessing.get_context("fork")
    with ctx.Manager() as manager:
        start, stop = manager.Event(), manager.Event()
        spinners = [ctx.Process(target=_spin, args=(stop,)) for _ in range(2)]
        for s in spinners:
            s.start()
        try:
            with ctx.Pool(4) as pool:
                pending = [pool.apply_async(_cold_burst, (redis_url, prefix, start, 40)) for _ in range(4)]
                with contextlib.suppress(multiprocessing.TimeoutError):
                    pending[0].get(timeout=1.0)  # give every process the time to start (none returns before `start`)
                start.set()
                admitted = [p.get(timeout=120) for p in pending]
        finally:
            stop.set()
            for s in spinners:
                s.join(10)
    assert sum(admitted) == 50, admitted  # 160 first requests, default options: not one failed open


async def _client_ids(name: str) -> set[str]:
    admin = aioredis.Redis(host="127.0.0.1", port=6379, protocol=2)
    try:
        return {str(c["id"]) for c in await admin.client_list() if c.get("name") == name}
    finally:
        await admin.aclose()


def _connections_in_a_burst(url: str, prefix: str, name: str, n: int) -> dict[str, Any]:
    """One process: ``n`` concurrent checks, twice, while its Redis connections are counted on the server."""

    async def run() -> dict[str, Any]:
        store = RedisRateLimitBackend(f"{url}?client_name={name}", prefix=prefix, timeout=10.0)
        rules = (Rule.make(1_000_000, 3600.0),)
        await store.start()
        warm = await _client_ids(name)
        most = 0
        done = asyncio.Event()

        async def count() -> None:
            nonlocal most
            while not done.is_set():
                most = max(most, len(await _client_ids(name)))

        counter = asyncio.create_task(count())
        seen = []
        for _ in range(2):
            await asyncio.gather(*(store.hit(f"user-{i % 25}", rules) for i in range(n)))
            seen.append(await _client_ids(name))
        done.set()
        await counter
        peak = store.peak
        await store.aclose()
        return {"warm": warm, "seen": seen, "most": most, "peak": peak, "after_close": await _client_ids(name)}

    return asyncio.run(run())


def test_connections_per_process_stay_within_max_connections_and_return_to_the_pool(
    redis_url: str, prefix: str
) -> None:
    tag = uuid.uuid4().hex[:8]
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(4) as pool:
        pending = [
            pool.apply_async(_connections_in_a_burst, (redis_url, prefix, f"rl-{tag}-{i}", 250)) for i in range(4)
        ]
        results = [p.get(timeout=120) for p in pending]
    for r in results:
        assert len(r["warm"]) == 32  # start() opened the whole pool (max_connections, the default)
        assert r["peak"] == 250 and r["most"] <= 32  # 250 checks at once, never more than 32 connections
        assert r["seen"] == [r["warm"], r["warm"]]  # the same connections, back in the pool and used again
        assert r["after_close"] == set()


class ReplyDropper(TCPProxy):
    """A proxy that, ``drop`` times, lets a command reach Redis and closes the client's connection, not replying."""

    drop = 0

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        to_client = writer.get_extra_info("peername") != (self.target_host, self.target_port)
        if not to_client:
            return await super()._pipe(reader, writer)
        try:
            while data := await reader.read(65536):
                if self.drop:
                    self.drop -= 1
                    writer.transport.abort()  # the command ran; its reply is lost with the connection
                    return
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()


async def test_a_check_whose_reply_is_lost_is_charged_once_and_reported(redis_url: str, prefix: str) -> None:
    proxy = ReplyDropper("127.0.0.1", 6379)
    await proxy.start()
    host, port = proxy.address
    store = RedisRateLimitBackend(f"redis://{host}:{port}/13", prefix=prefix, timeout=2.0, max_connections=1)
    rules = (Rule.make(10, 3600.0),)
    try:
        await store.start()
        assert (await store.hit("u", rules)).remaining == 9
        proxy.drop = 1
        with pytest.raises(RedisConnectionError):
            await store.hit("u", rules)  # may have been charged (it was): reported, not resent
        assert (await store.hit("u", rules)).remaining == 7  # charged once for the lost reply, not twice
    finally:
        await store.aclose()
        await proxy.aclose()


async def test_start_never_raises_and_probe_says_why_in_one_line(caplog: pytest.LogCaptureFixture) -> None:
    url = f"redis://:s3cret@127.0.0.1:{free_port()}/0"
    stage = RateLimitStage(limit=5, window=60, backend=url, timeout=0.5)
    chain = VerifierChain(TokenIsSubject(), stage)
    async with chain:
        await chain.start()  # Redis is down: said, not raised (the app still starts; checks connect on use)
        assert "could not be reached at start" in caplog.text and "ConnectionError" in caplog.text
        with pytest.raises(Exception) as exc:
            await stage.probe()
        message = str(exc.value)
        assert "\n" not in message and "Connection" in message
        d = await chain.evaluate("user:alice")
        assert d.allowed and list(d.failed_open) == ["rate-limit"]  # on_error = "allow", recorded
    assert "s3cret" not in caplog.text and "s3cret" not in message


async def test_aclose_with_checks_in_flight_closes_every_connection(
    redis_proxy: TCPProxy, redis_url: str, prefix: str
) -> None:
    host, port = redis_proxy.address
    name = f"rl-close-{uuid.uuid4().hex[:8]}"
    stage = RateLimitStage(
        limit=1000, window=60, backend=f"redis://{host}:{port}/13?client_name={name}", prefix=prefix, timeout=2.0
    )
    chain = VerifierChain(TokenIsSubject(), stage)
    await chain.start()
    opened = redis_proxy.connections
    redis_proxy.delay = 0.05
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        checks = [asyncio.create_task(chain.evaluate(f"user:u{i}")) for i in range(100)]
        await asyncio.sleep(0)  # the checks are on their way
        await chain.aclose()
        decisions = await asyncio.gather(*checks)
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert all(d.status in (200, 503) for d in decisions)  # those that came after the close were refused
    assert stage.closed
    d = await chain.evaluate("user:late")
    assert (d.status, d.error) == (503, "temporarily_unavailable")
    assert redis_proxy.connections == opened  # nothing was opened after the close
    deadline = time.monotonic() + 10
    while await _client_ids(name):  # the server sees them go (the proxy passes the close on)
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)


def test_uvicorn_workers_behind_the_middleware_admit_exactly_the_limit(redis_url: str, prefix: str) -> None:
    port = free_port()
    env = {
        **os.environ,
        "FASTAPPS_RL_URL": redis_url,
        "FASTAPPS_RL_PREFIX": prefix,
        "FASTAPPS_RL_LIMIT": "50",
        "PYTHONPATH": str(ROOT),
    }
    app = "tests.support.ratelimit_app:create_app"
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", app, "--port", str(port), "--workers", "4", "--no-access-log"],
        cwd=ROOT,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stderr is not None
        started = 0
        deadline = time.monotonic() + 90
        while started < 4:  # every worker has run its lifespan (chain.start(): connections warm)
            line = server.stderr.readline()
            assert line and time.monotonic() < deadline, "uvicorn did not start its four workers"
            started += "Application startup complete" in line
        statuses, pids = asyncio.run(_burst(f"http://127.0.0.1:{port}/", 128))
    finally:
        server.terminate()
        server.wait(30)
    assert statuses.count(200) == 50 and statuses.count(429) == 78, sorted(set(statuses))
    assert len(pids) > 1  # several workers answered, sharing one count


async def _burst(url: str, n: int) -> tuple[list[int], set[str]]:
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        responses = await asyncio.gather(
            *(client.get(url, headers={"Authorization": "Bearer user:crowd"}) for _ in range(n))
        )
    return [r.status_code for r in responses], {r.text for r in responses if r.status_code == 200}
