"""The Redis half of ``bench_rate_limit``: a check against PING on one server and on a Redis Cluster, and cold bursts.

A check is the backend's public redis-py path (``register_script``'s EVALSHA through the client's
pool); PING is the same client's ``ping()``, to the node that owns the key on a cluster. Calls
alternate one by one, so every contender sees the same load. The cold bursts are the test's
scenario (4 processes x 40 concurrent first requests of one user, limit 50, two more processes
spinning), measured: admissions, the latency of each check, connections per process.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import multiprocessing
import shutil
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from limits import RateLimitItemPerHour

from benchmarks.common import fmt_rate, table
from fastapps_auth.backends.ratelimit import DEFAULT_MAX_CONNECTIONS, DEFAULT_TIMEOUT
from fastapps_auth.backends.ratelimit.algorithm import Rule
from fastapps_auth.backends.ratelimit.redis import RedisRateLimitBackend

Call = Callable[[], Awaitable[object]]
REDIS_URL = "redis://127.0.0.1:6379/13"
WINDOW = 3600.0


def users(n: int) -> list[str]:
    return [f"user-{i:07d}" for i in range(n)]


async def alternate(calls: dict[str, Call], number: int, rounds: int = 5) -> dict[str, float]:
    """Calls per second of each contender: call by call in turn, the best of ``rounds`` rounds of ``number``."""
    for fn in calls.values():
        await fn()  # warm-up: connect, load the script
    best = dict.fromkeys(calls, 0.0)
    clock = time.perf_counter
    for _ in range(rounds):
        spent = dict.fromkeys(calls, 0.0)
        for _ in range(number):
            for name, fn in calls.items():
                t0 = clock()
                await fn()
                spent[name] += clock() - t0
        for name, s in spent.items():
            best[name] = max(best[name], number / s)
    return best


def _single_calls(
    ours: RedisRateLimitBackend, moving: Any, swc: Any, item: Any, rules: tuple[Rule, ...], keys: list[str]
) -> dict[str, Call]:
    """One round trip of each contender, the next user from ``keys`` each time."""
    it = itertools.cycle(keys)
    return {
        "PING": ours.client.ping,
        "limits MovingWindow": lambda: moving.hit(item, next(it)),
        "limits SlidingWindowCounter": lambda: swc.hit(item, next(it)),
        "rate-limit backend": lambda: ours.hit(next(it), rules),
    }


async def _breakdown(ours: RedisRateLimitBackend, number: int, rounds: int) -> list[list[object]]:
    """The check's cost step by step on the same client: a bound, a script call, the GCRA script, the check."""
    client: Any = ours.client
    empty = client.register_script("return {1, 0, 0, 0}")
    await empty(["bench-empty"], [])
    key, args = [b"bench-rl-breakdown:{u}:x"], [b"", b"36000000", b"0"]
    steps: dict[str, Call] = {
        "PING": client.ping,
        "PING under asyncio.timeout": lambda: _bounded(client.ping(), ours.timeout),
        "EVALSHA of an empty script (execute_command)": lambda: client.execute_command(
            "EVALSHA", empty.sha, 1, *key, *args
        ),
        "the same through register_script": lambda: empty(key, args),
        "the GCRA script through register_script": lambda: ours.script(key, args),
        "**the backend's check** (timeout, keys, reply checked)": lambda: ours.hit("u", (Rule.make(100, WINDOW),)),
    }
    r = await alternate(steps, number, rounds)
    rows: list[list[object]] = [[name, f"{1e6 / v:,.0f} µs", f"{v / r['PING']:.2f}x"] for name, v in r.items()]
    hit = steps["**the backend's check** (timeout, keys, reply checked)"]
    for name, command, call in (("PING", "ping", client.ping), ("the backend's check", "evalsha", hit)):
        usec = await _server_usec(client, command, call, number)
        rows.append([f"{name}: the server's own time (INFO commandstats)", f"{usec:,.1f} µs", ""])
    return rows


async def _server_usec(client: Any, command: str, call: Call, number: int) -> float:
    """Microseconds the server itself spends per ``command``, from INFO commandstats around ``number`` calls."""

    async def total() -> tuple[int, int]:
        stats = (await client.info("commandstats")).get(f"cmdstat_{command}", {})
        return int(stats.get("calls", 0)), int(stats.get("usec", 0))

    calls0, usec0 = await total()
    for _ in range(number):
        await call()
    calls1, usec1 = await total()
    return (usec1 - usec0) / max(1, calls1 - calls0)


async def bench_single(smoke: bool) -> tuple[list[list[object]], dict[str, float], list[list[object]]] | None:
    """One Redis server: PING, ``limits``' two Redis strategies, and the backend's check."""
    import redis.asyncio as aioredis
    from limits.aio.storage import RedisStorage
    from limits.aio.strategies import MovingWindowRateLimiter, SlidingWindowCounterRateLimiter

    number, rounds = (100, 1) if smoke else (600, 5)
    tag = uuid.uuid4().hex[:10]
    ours = RedisRateLimitBackend(REDIS_URL, prefix=f"bench-rl-{tag}", timeout=1.0)
    try:
        await ours.start()
    except Exception:
        await ours.aclose()
        return None
    storage = RedisStorage("async+" + REDIS_URL, implementation="redispy", key_prefix=f"bench-lim-{tag}")
    moving, swc = MovingWindowRateLimiter(storage), SlidingWindowCounterRateLimiter(storage)
    rows: list[list[object]] = []
    found: dict[str, float] = {}
    many = users(1_000 if smoke else 100_000)
    try:
        for limit in (100, 10_000):
            item = RateLimitItemPerHour(limit)
            rules = (Rule.make(limit, WINDOW),)
            for label, keys in (("1 hot user", ["hot-user"]), (f"{len(many):,} users", many)):
                r = await alternate(_single_calls(ours, moving, swc, item, rules, keys), number, rounds)
                best_limits = max(r["limits MovingWindow"], r["limits SlidingWindowCounter"])
                key = f"{limit}/{label}"
                found[key] = r["rate-limit backend"] / r["PING"]
                found[f"{key}/rate"], found[f"{key}/ping"] = r["rate-limit backend"], r["PING"]
                rows.append(
                    [
                        f"limit {limit:,}, {label}",
                        *(fmt_rate(v) for v in r.values()),
                        f"{found[key]:.2f}x",
                        f"{r['rate-limit backend'] / best_limits:.2f}x",
                    ]
                )
        steps = await _breakdown(ours, number, rounds)
    finally:
        client = aioredis.Redis.from_url(REDIS_URL)
        for pattern in (f"bench-rl-{tag}*", f"bench-lim-{tag}*"):
            stale = [k async for k in client.scan_iter(match=pattern, count=5000)]
            for i in range(0, len(stale), 5000):
                await client.delete(*stale[i : i + 5000])
        await client.aclose()
        await ours.aclose()
    return rows, found, steps


def _cluster_calls(ours: RedisRateLimitBackend, keys: list[str]) -> dict[str, Call]:
    """A check of the next user, and a PING to the node that owns that user's key, on the same client."""
    cluster: Any = ours.client
    rules = (Rule.make(10_000, WINDOW),)
    owners = {k: cluster.get_node_from_key(ours.redis_key(k, rules[0])) for k in keys}
    ping_keys, hit_keys = itertools.cycle(keys), itertools.cycle(keys)
    empty = cluster.register_script("return {1, 0, 0, 0}")
    return {
        "PING (owner node)": lambda: cluster.ping(target_nodes=owners[next(ping_keys)]),
        "EVALSHA of an empty script": lambda: empty([ours.redis_key(next(ping_keys), rules[0])], []),
        "rate-limit backend": lambda: ours.hit(next(hit_keys), rules),
    }


async def _bounded(call: Awaitable[object], seconds: float) -> object:
    """``call`` under ``asyncio.timeout``, as the backend runs each check (so: PING with the same bound)."""
    async with asyncio.timeout(seconds):
        return await call


async def _cluster_rates(url: str, smoke: bool) -> tuple[list[list[object]], dict[str, float]]:
    number, rounds = (100, 1) if smoke else (600, 5)
    ours = RedisRateLimitBackend(url, prefix="bench", timeout=1.0)
    await ours.start()
    rows: list[list[object]] = []
    found: dict[str, float] = {}
    try:
        for label, keys in (("1 hot user", ["hot-user"]), ("10,000 users", users(10_000))):
            r = await alternate(_cluster_calls(ours, keys), number, rounds)
            ratio = r["rate-limit backend"] / r["PING (owner node)"]
            empty = r["EVALSHA of an empty script"] / r["PING (owner node)"]
            found[label] = ratio
            found[f"{label}/rate"], found[f"{label}/ping"] = r["rate-limit backend"], r["PING (owner node)"]
            rows.append(
                [f"limit 10,000, {label}", *(fmt_rate(v) for v in r.values()), f"{empty:.2f}x", f"{ratio:.2f}x"]
            )
    finally:
        await ours.aclose()
    return rows, found


def bench_cluster(smoke: bool) -> tuple[list[list[object]], dict[str, float]] | None:
    """A Redis Cluster of our own (3 primaries + 3 replicas on loopback), if redis-server is installed."""
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        return None
    from tests.support.redis_servers import RedisClusterServers

    servers = RedisClusterServers().start()
    try:
        return asyncio.run(_cluster_rates(servers.url, smoke))
    finally:
        servers.stop()


def _spin(stop: Any) -> None:
    while not stop.is_set():
        sum(range(10_000))


def _burst(url: str, prefix: str, start: Any, n: int, warm: bool, timeout: float) -> dict[str, Any]:
    """One process: a backend, warmed or not, then ``n`` concurrent first checks of one user (limit 50)."""
    import redis.asyncio as aioredis

    async def run() -> dict[str, Any]:
        name = f"bench-burst-{uuid.uuid4().hex[:8]}"
        store = RedisRateLimitBackend(
            f"{url}?client_name={name}", prefix=prefix, timeout=timeout, warm_connections=None if warm else 0
        )
        rules = (Rule.make(50, WINDOW),)
        if warm:
            with contextlib.suppress(Exception):  # as the stage does: a failed start is logged, checks connect
                await store.start()
        start.wait()
        waits: list[float] = []

        async def one() -> bool:
            t0 = time.perf_counter()
            try:
                return (await store.hit("cold", rules)).allowed
            except Exception:
                return True  # what the stage's default on_error ("allow") does
            finally:
                waits.append(time.perf_counter() - t0)

        admitted = sum(await asyncio.gather(*(one() for _ in range(n))))
        admin = aioredis.Redis.from_url(url, protocol=2)
        connections = sum(1 for c in await admin.client_list() if c.get("name") == name)
        await admin.aclose()
        await store.aclose()
        return {"admitted": admitted, "waits": waits, "connections": connections, "errors": store.errors}

    return asyncio.run(run())


def cold_bursts(smoke: bool) -> list[dict[str, Any]]:
    """The cold burst, with today's defaults and with the old ones (no warm-up, 100 ms), a few rounds each."""
    ctx = multiprocessing.get_context("fork")
    out = []
    for label, warm, timeout in (
        (f"defaults: {DEFAULT_MAX_CONNECTIONS} warm connections, timeout {DEFAULT_TIMEOUT:g} s", True, DEFAULT_TIMEOUT),
        ("no warm-up, timeout 0.1 s (before)", False, 0.1),
        ("no warm-up, timeout 10 s (latency only)", False, 10.0),
        (f"{DEFAULT_MAX_CONNECTIONS} warm connections, timeout 10 s (latency only)", True, 10.0),
    ):
        admitted: list[int] = []
        waits: list[float] = []
        connections: list[int] = []
        for _ in range(1 if smoke else 5):
            prefix = f"bench-burst-{uuid.uuid4().hex[:8]}"
            with ctx.Manager() as manager:
                start, stop = manager.Event(), manager.Event()
                spinners = [ctx.Process(target=_spin, args=(stop,)) for _ in range(2)]
                for s in spinners:
                    s.start()
                with ctx.Pool(4) as pool:
                    job = (REDIS_URL, prefix, start, 40, warm, timeout)
                    pending = [pool.apply_async(_burst, job) for _ in range(4)]
                    time.sleep(1.0)  # every process connected (or not) and waiting for the start
                    start.set()
                    results = [p.get(timeout=120) for p in pending]
                stop.set()
                for s in spinners:
                    s.join(10)
            admitted.append(sum(r["admitted"] for r in results))
            waits += [w for r in results for w in r["waits"]]
            connections += [r["connections"] for r in results]
            _forget(prefix)
        waits.sort()
        p50, p99, most = statistics.median(waits), waits[int(len(waits) * 0.99)], waits[-1]
        times = (f"{t * 1000:.0f} ms" for t in (p50, p99, most))
        row = [label, ", ".join(map(str, admitted)), *times, str(max(connections))]
        out.append({"admitted": admitted, "max": most, "row": row})
    return out


def _forget(prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        stale = list(client.scan_iter(match=f"{prefix}*"))
        if stale:
            client.delete(*stale)
    finally:
        client.close()


def redis_parts(smoke: bool, results: list[dict[str, object]]) -> list[str]:
    """The Redis sections of the page; their result rows are appended to ``results``."""
    parts: list[str] = []
    single = asyncio.run(bench_single(smoke))
    if single is None:
        return ["\n## Redis\n\nRedis was not reachable on 127.0.0.1:6379: not measured."]
    rows, red, steps = single
    worst_key = min((k for k in red if not k.endswith(("/rate", "/ping"))), key=red.__getitem__)
    worst = red[worst_key]
    parts += [
        "\n## Redis (one server, sequential round trips)\n",
        "Each check is the backend's `hit()`: redis-py's `register_script` EVALSHA of the GCRA script through the "
        "client's `BlockingConnectionPool`, under the check's `asyncio.timeout`. PING is `ping()` on the same "
        "client; `limits` uses its own redis-py client. The four calls alternate one by one (best of 5 rounds), "
        "so all see the same load.\n",
        table(
            [
                "scenario",
                "PING",
                "limits MovingWindow",
                "limits SlidingWindowCounter",
                "**rate-limit backend**",
                "backend / PING",
                "backend / best `limits`",
            ],
            rows,
        ),
        "",
        f"Target: a check >= 0.85x PING; worst scenario ({worst_key}) **{worst:.2f}x** "
        f"({'met' if worst >= 0.85 else 'NOT met'}).",
        "\nWhere a check's time goes, step by step on the same client (the same alternation, one key):\n",
        table(["call", "time per call", "rate / PING"], steps),
        "",
        "A check is one EVALSHA: what separates it from a PING is redis-py's script call (its `register_script` "
        "wrapper included), the GCRA script's own work on the server (TIME, GET, SET), and the check's bound "
        "(`asyncio.timeout`). `limits`, on the same client library, pays the same. The last two rows are the "
        "server's own time per command: the GCRA script's work on the server alone is that much of a round trip.",
    ]
    results.append(
        {
            "label": "rate-limit Redis check vs PING, public redis-py path (worst scenario)",
            "ratio": worst,
            "target": 0.85,
            "note": f"{fmt_rate(red[worst_key + '/rate'])} vs PING {fmt_rate(red[worst_key + '/ping'])}",
        }
    )
    cluster = bench_cluster(smoke)
    if cluster is None:
        parts.append("\n## Redis Cluster\n\nredis-server is not installed: not measured.")
    else:
        rows, found = cluster
        worst_label = min((k for k in found if "/" not in k), key=found.__getitem__)
        parts += [
            "\n## Redis Cluster (3 primaries + 3 replicas on loopback, sequential round trips)\n",
            "The same check through redis-py's `RedisCluster` (it routes the EVALSHA by the key's slot), against "
            "`ping(target_nodes=<the node that owns the key>)` on the same client, alternating call by call.\n",
            table(
                [
                    "scenario",
                    "PING (owner node)",
                    "EVALSHA of an empty script",
                    "**rate-limit backend**",
                    "empty script / PING",
                    "backend / PING",
                ],
                rows,
            ),
            "",
            f"Target: >= 0.85x; worst scenario ({worst_label}) **{found[worst_label]:.2f}x** "
            f"({'met' if found[worst_label] >= 0.85 else 'NOT met'}).",
        ]
        results.append(
            {
                "label": "rate-limit Redis Cluster check vs PING to the key's node (worst scenario)",
                "ratio": found[worst_label],
                "target": 0.85,
                "note": f"{fmt_rate(found[worst_label + '/rate'])} vs PING {fmt_rate(found[worst_label + '/ping'])}",
            }
        )
    bursts = cold_bursts(smoke)
    parts += [
        "\n## Cold bursts: 4 processes x 40 concurrent first requests of one user, limit 50\n",
        "Each process builds a backend (`start()` opens its connections, or not), waits for a common start, then "
        "sends 40 checks at once; two more processes keep both cores busy. A check that fails (a timeout) counts "
        "as admitted, as the stage's default `on_error = \"allow\"` would let it through. Latency is each check's "
        f"own, waiting for a connection included; connections are those of one process on the server "
        f"(`CLIENT LIST`) after its burst. Rounds: {1 if smoke else 5} per row.\n",
        table(
            ["setup", "admitted per round", "p50", "p99", "max", "connections per process"], [b["row"] for b in bursts]
        ),
        "",
        "The default timeout is chosen from the rows measured with a 10 s timeout: it must stay above the slowest "
        "check of a cold burst on a busy machine (then no check fails open and exactly the limit is admitted), "
        "and it is how long a request waits for a Redis that does not answer at all before `on_error` applies.",
    ]
    default = bursts[0]
    results.append(
        {
            "label": "rate-limit cold burst 4x40, limit 50, defaults: limit / admitted (worst round)",
            "ratio": 50 / max(default["admitted"]),
            "target": 1.0,
            "note": f"admitted {', '.join(map(str, default['admitted']))}; max check {default['max'] * 1000:.0f} ms",
        }
    )
    return parts
