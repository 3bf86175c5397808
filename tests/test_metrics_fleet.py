"""The metrics observer across a fleet: ``uvicorn --workers 4`` in prometheus-client's multiprocess mode.

Requests spread over the workers; then every scrape, whichever worker answers it, returns the
totals of all workers, and the counters never go back, not even when a worker is killed and
replaced.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from prometheus_client.multiprocess import mark_process_dead
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
WORKERS = 4
DEADLINE = 90.0  # seconds: the longest any wait of this test may take


@dataclass
class Fleet:
    url: str
    proc: subprocess.Popen[bytes]
    multiproc_dir: Path
    pids: set[str] = field(default_factory=set)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    directory = tmp_path / "prometheus"
    directory.mkdir()  # empty at start, as the docs require
    port = _free_port()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory), "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "uvicorn", "tests.support.metrics_fleet:app", "--workers", str(WORKERS)]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", "--no-access-log"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield Fleet(f"http://127.0.0.1:{port}", proc, directory)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


def _client() -> httpx.AsyncClient:
    """A new connection per request, so that requests spread over the workers."""
    return httpx.AsyncClient(limits=httpx.Limits(max_keepalive_connections=0), timeout=10.0)


async def _wait_up(fleet: Fleet) -> None:
    deadline = time.monotonic() + DEADLINE
    async with _client() as client:
        while time.monotonic() < deadline:
            assert fleet.proc.poll() is None, (fleet.proc.stderr.read() if fleet.proc.stderr else b"").decode()
            try:
                if (await client.get(f"{fleet.url}/metrics")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    pytest.fail("the workers did not start in time")


async def _decide(fleet: Fleet, tokens: list[str], concurrency: int = 16) -> dict[str, int]:
    """Send one request per token (``concurrency`` at a time); the statuses counted."""
    statuses: dict[str, int] = {}
    queue = list(tokens)

    async def worker(client: httpx.AsyncClient) -> None:
        while queue:
            token = queue.pop()
            response = await client.get(f"{fleet.url}/decide", headers={"Authorization": f"Bearer {token}"})
            fleet.pids.add(response.headers["x-worker-pid"])
            statuses[str(response.status_code)] = statuses.get(str(response.status_code), 0) + 1

    async with _client() as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return statuses


@dataclass
class Scrape:
    pid: str
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float]

    def value(self, name: str, **labels: str) -> float:
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def series(self, name: str) -> list[dict[str, str]]:
        return [dict(labels) for n, labels in self.samples if n == name]


async def _scrapes(fleet: Fleet, n: int) -> list[Scrape]:
    async def one(client: httpx.AsyncClient) -> Scrape:
        response = await client.get(f"{fleet.url}/metrics")
        assert response.status_code == 200
        samples = {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(response.text)
            for s in family.samples
        }
        return Scrape(response.headers["x-worker-pid"], samples)

    async with _client() as client:
        return list(await asyncio.gather(*(one(client) for _ in range(n))))


async def _scrapes_from_several_workers(fleet: Fleet) -> list[Scrape]:
    """Concurrent scrapes until at least two workers have answered (bounded)."""
    out: list[Scrape] = []
    for _ in range(20):
        out += await _scrapes(fleet, 8)
        if len({s.pid for s in out}) >= 2:
            return out
    pytest.fail("every scrape was answered by the same worker")


DECISIONS = "fastapps_auth_decisions_total"


def _assert_totals(scrapes: list[Scrape], allowed: int, banned: int) -> None:
    for s in scrapes:
        assert s.value(DECISIONS, stage="", outcome="allowed", reason="") == allowed, s.pid
        assert s.value(DECISIONS, stage="ban", outcome="rejected", reason="user_banned") == banned, s.pid
        assert s.value("fastapps_auth_stage_seconds_count", stage="auth") == allowed + banned
        assert s.value("fastapps_auth_stage_seconds_bucket", stage="ban", le="+Inf") == allowed + banned


async def test_every_scrape_of_any_worker_returns_the_totals_of_all(fleet: Fleet) -> None:
    await _wait_up(fleet)
    allowed = banned = 0
    for batch in range(25):  # until every worker has decided (bounded)
        statuses = await _decide(fleet, [f"good-{batch}-{i}" for i in range(30)] + [f"banned-{i}" for i in range(10)])
        allowed += statuses.get("200", 0)
        banned += statuses.get("403", 0)
        if len(fleet.pids) == WORKERS:
            break
    assert len(fleet.pids) == WORKERS, f"only {len(fleet.pids)} workers answered"
    assert sum(statuses.values()) == 40

    scrapes = await _scrapes_from_several_workers(fleet)
    _assert_totals(scrapes, allowed, banned)
    # the stats() gauges: cache entries summed over live workers, the stalest key set, one series per worker
    for s in scrapes:
        assert s.value("fastapps_auth_cache_entries", stage="auth", cache="cache_entries") == WORKERS
        assert s.value("fastapps_auth_jwks_age_seconds", stage="auth") == max(float(p) for p in fleet.pids)
        assert {labels["pid"] for labels in s.series("fastapps_auth_stage_stat")} == fleet.pids

    # A worker dies and uvicorn replaces it: its counts stay in the directory, no counter goes back.
    victim = sorted(fleet.pids)[0]
    os.kill(int(victim), signal.SIGKILL)
    mark_process_dead(int(victim), str(fleet.multiproc_dir))  # type: ignore[no-untyped-call]  # gunicorn's child_exit
    _assert_totals(await _scrapes(fleet, 8), allowed, banned)
    fleet.pids.discard(victim)
    before = set(fleet.pids)
    for batch in range(25):  # until the replacement has decided (bounded)
        statuses = await _decide(fleet, [f"good-after-{batch}-{i}" for i in range(20)])
        allowed += statuses.get("200", 0)
        if fleet.pids - before:
            break
    assert fleet.pids - before, "no replacement worker answered"
    scrapes = await _scrapes_from_several_workers(fleet)
    _assert_totals(scrapes, allowed, banned)
    for s in scrapes:
        assert s.value("fastapps_auth_cache_entries", stage="auth", cache="cache_entries") == WORKERS
        assert victim not in {labels["pid"] for labels in s.series("fastapps_auth_stage_stat")}
