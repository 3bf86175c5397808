"""End to end over HTTP: a protected WidgetMCPServer vs the same server unprotected.

Two server processes (uvicorn on 127.0.0.1) serve the same FastApps widget; one is protected by the chain
jwt → user-status (SQLite, cached) → rate-limit (memory) → audit. This process is the load generator: it
sends MCP ``tools/call`` requests with one cached bearer token from a fixed number of concurrent
connections, bounded by a request count and a time limit, alternating between the servers round by round
so that drift on a shared machine hits both alike. Target: protected >= 0.95x unprotected throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import fmt_rate, table, write_page, write_results

TARGET = 0.95
TOOL = "echo"
CALL = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": TOOL, "arguments": {"text": "hi"}}}
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


# -- the server side (run in a child process) ------------------------------------------------------------


def build_app(kind: str, jwks: dict[str, Any] | None = None, db: str | None = None) -> Any:
    """The widget server's Starlette app: ``open``, or ``protected`` by the chain (needs ``jwks`` and ``db``)."""
    import logging

    from fastapps import BaseWidget
    from fastapps.builder.compiler import WidgetBuildResult
    from pydantic import BaseModel

    from fastapps_auth.chain import VerifierChain
    from fastapps_auth.integrations.fastapps import WidgetMCPServer
    from fastapps_auth.stages.audit import AuditObserver
    from fastapps_auth.stages.jwt import JWTVerifier
    from fastapps_auth.stages.rate_limit import RateLimitStage
    from fastapps_auth.stages.user_status import UserStatusStage

    class EchoInput(BaseModel):
        text: str = ""

    class Echo(BaseWidget):  # type: ignore[misc]  # fastapps ships no type information: BaseWidget is Any
        identifier = TOOL
        title = "Echo"
        input_schema = EchoInput

        async def execute(self, input_data: Any, context: Any = None, user: Any = None) -> dict[str, Any]:
            subject = user.subject if user is not None and user.is_authenticated else None
            return {"text": input_data.text, "subject": subject}

    widget = Echo(WidgetBuildResult(name=TOOL, hash="0", html="<div></div>"))
    if kind == "protected":
        from benchmarks.signing import AUDIENCE, ISSUER

        assert jwks is not None
        assert db is not None
        log = logging.getLogger("fastapps_auth.bench.audit")
        log.handlers[:] = [logging.NullHandler()]
        log.propagate = False
        log.setLevel(logging.INFO)
        chain = VerifierChain(
            JWTVerifier(issuer_url=ISSUER, audience=AUDIENCE, jwks=jwks, algorithms=["RS256", "ES256"]),
            UserStatusStage(dsn=f"sqlite:///{db}"),
            RateLimitStage(limit=1_000_000_000, window=3600),
            observers=[AuditObserver(logger=log.name)],
        )
        server = WidgetMCPServer(
            name="bench", widgets=[widget], token_verifier=chain, auth_resource_server_url="http://127.0.0.1/mcp"
        )
    else:
        server = WidgetMCPServer(name="bench", widgets=[widget])
    return server.get_app()


def make_users_db(path: Path) -> None:
    """The SQLite user store of the protected server: alice, active."""
    con = sqlite3.connect(path)
    with con:
        con.execute("CREATE TABLE users (id TEXT PRIMARY KEY, active INTEGER, banned INTEGER)")
        con.execute("INSERT INTO users VALUES ('alice', 1, 0)")
    con.close()


def serve(kind: str, jwks_file: str | None, db: str | None) -> None:
    """Run the widget server (``open`` or ``protected``) on a free port; print ``READY <port>`` when up."""
    import uvicorn

    jwks = json.loads(Path(jwks_file).read_text()) if jwks_file else None
    app = build_app(kind, jwks, db)

    async def run() -> None:
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", access_log=False, lifespan="on")
        srv = uvicorn.Server(config)
        task = asyncio.create_task(srv.serve())
        while not srv.started:
            if task.done():
                task.result()
                return
            await asyncio.sleep(0.02)
        port = srv.servers[0].sockets[0].getsockname()[1]
        print(f"READY {port}", flush=True)
        await task

    with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises the SIGINT that stopped it
        asyncio.run(run())


# -- the load side ------------------------------------------------------------------------------------------


@dataclass
class Server:
    kind: str
    proc: subprocess.Popen[str]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"


SERVER_CPU, LOAD_CPU = 0, 1

#: Each series: the server it loads and whether the request carries the bearer token.
SERIES: dict[str, tuple[str, bool]] = {
    "open": ("open", True),
    "protected": ("protected", True),
    "no-token": ("open", False),
}
LABELS = {
    "open": "unprotected (same request, token ignored)",
    "protected": "protected (jwt → user-status → rate-limit → audit)",
    "no-token": "unprotected, request without the Authorization header",
}


def pinning() -> bool:
    """Servers on CPU 0, this load generator on CPU 1, when the machine has both (Linux)."""
    return hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) >= 2


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc; 0.0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def spawn_server(kind: str, jwks_file: Path, db: Path, *, pin: bool) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "benchmarks.bench_http", "--serve", kind, "--jwks", str(jwks_file), "--db", str(db)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parent.parent, env=env)
    if pin:
        os.sched_setaffinity(proc.pid, {SERVER_CPU})
    return proc


def wait_ready(kind: str, proc: subprocess.Popen[str]) -> Server:
    """Wait for the child's ``READY <port>`` line (servers start in parallel: importing FastMCP is slow)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("READY "):
            return Server(kind, proc, int(line.split()[1]))
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError(f"the {kind} server did not start")


def stop_server(server: Server) -> None:
    with contextlib.suppress(ProcessLookupError):
        server.proc.send_signal(signal.SIGINT)
    try:
        server.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()


@dataclass
class Load:
    requests: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    server_cpu: float = 0.0  # seconds of the server process's CPU time during the round

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


async def load(url: str, token: str | None, *, requests: int, seconds: float, concurrency: int) -> Load:
    """Send up to ``requests`` tools/calls within ``seconds`` from ``concurrency`` connections."""
    import httpx

    headers = dict(HEADERS)
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    out = Load()
    body = json.dumps(CALL).encode()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=10.0) as client:
        # warm-up: the first call also checks the server answers this request correctly
        resp = await client.post(url, content=body, headers=headers)
        if resp.status_code != 200 or '"text":"hi"' not in resp.text.replace(" ", ""):
            raise RuntimeError(f"{url}: unexpected answer {resp.status_code}: {resp.text[:300]}")
        budget = requests
        t0 = time.perf_counter()
        stop_at = t0 + seconds

        async def worker() -> None:
            nonlocal budget
            while budget > 0 and time.perf_counter() < stop_at:
                budget -= 1
                t = time.perf_counter()
                try:
                    r = await client.post(url, content=body, headers=headers)
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                out.latencies.append(time.perf_counter() - t)
                out.requests += 1
                out.errors += not ok

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        out.seconds = time.perf_counter() - t0
    return out


def percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--smoke", action="store_true", help="a few dozen requests; no pages written")
    parser.add_argument("--serve", choices=["open", "protected"], help=argparse.SUPPRESS)
    parser.add_argument("--jwks", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=2000, help="per server per round")
    parser.add_argument("--seconds", type=float, default=15.0, help="time limit per server per round")
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve, args.jwks, args.db)
        return 0
    rounds, requests, seconds = (1, 40, 10.0) if args.smoke else (args.rounds, args.requests, args.seconds)

    from benchmarks.signing import claims, keys

    k = keys()
    token = k.sign(claims("alice", time.time(), lifetime=24 * 3600), alg="RS256")
    results: dict[str, list[Load]] = {series: [] for series in SERIES}
    pinned = pinning()
    with tempfile.TemporaryDirectory() as tmp:
        jwks_file, db = Path(tmp) / "jwks.json", Path(tmp) / "users.db"
        jwks_file.write_text(json.dumps(k.jwks()))
        make_users_db(db)
        procs = {kind: spawn_server(kind, jwks_file, db, pin=pinned) for kind in ("open", "protected")}
        servers = {kind: wait_ready(kind, proc) for kind, proc in procs.items()}
        if pinned:
            os.sched_setaffinity(0, {LOAD_CPU})
        try:
            for r in range(rounds):
                order = list(SERIES) if r % 2 == 0 else list(SERIES)[::-1]
                for series in order:
                    kind, sends_token = SERIES[series]
                    cpu0 = cpu_seconds(servers[kind].proc.pid)
                    res = asyncio.run(
                        load(
                            servers[kind].url,
                            token if sends_token else None,
                            requests=requests,
                            seconds=seconds,
                            concurrency=args.concurrency,
                        )
                    )
                    res.server_cpu = cpu_seconds(servers[kind].proc.pid) - cpu0
                    results[series].append(res)
                    print(
                        f"round {r + 1} {series:<10} {res.requests:>6} req  {fmt_rate(res.throughput):>10}  "
                        f"server CPU {res.server_cpu / max(res.requests, 1) * 1e6:.0f} µs/req",
                        flush=True,
                    )
            # the protected server really is protected: no token, no tool call
            refused = asyncio.run(load_refused(servers["protected"].url))
        finally:
            for s in servers.values():
                stop_server(s)

    summary = {}
    for series, runs in results.items():
        lat = [x for run in runs for x in run.latencies]
        summary[series] = (
            statistics.median(run.throughput for run in runs),
            percentile(lat, 50) * 1000,
            percentile(lat, 99) * 1000,
            sum(run.errors for run in runs),
            sum(run.requests for run in runs),
            sum(run.server_cpu for run in runs) / max(sum(run.requests for run in runs), 1) * 1e6,
        )
    base = summary["open"][0]
    rows = [
        (
            LABELS[series],
            fmt_rate(tp),
            f"{tp / base:.2f}x",
            f"{p50:.2f} ms",
            f"{p99:.2f} ms",
            f"{cpu:.0f} µs",
            f"{errors}/{total}",
        )
        for series, (tp, p50, p99, errors, total, cpu) in summary.items()
    ]
    # Rounds alternate servers back to back, so a per-round ratio cancels the drift of a shared machine.
    per_round = [p.throughput / o.throughput for p, o in zip(results["protected"], results["open"], strict=True)]
    ratio = statistics.median(per_round)
    no_header = [n.throughput / o.throughput for n, o in zip(results["no-token"], results["open"], strict=True)]
    cpu = {series: row[5] for series, row in summary.items()}
    body = (
        f"MCP `tools/call` over HTTP to a FastApps `WidgetMCPServer` (uvicorn, 127.0.0.1), load from a separate "
        f"process with {args.concurrency} concurrent keep-alive connections; {rounds} rounds of at most "
        f"{requests:,} requests or {seconds:g}s per series, the series alternating within each round "
        "(throughput: median over rounds; latency percentiles over all requests). "
        + (
            f"The servers run pinned to CPU {SERVER_CPU} and the load generator to CPU {LOAD_CPU}, so they do not "
            "compete for a core. "
            if pinned
            else ""
        )
        + "Server CPU per request is the server process's user + system time over the requests it served.\n\n"
        "The protected server and the unprotected one receive **the same request**, a `tools/call` with "
        "`Authorization: Bearer <token>` (the unprotected one ignores it), so the difference between them is "
        "what protecting the server costs. The last row sends the unprotected server the request without the "
        "header: with uvicorn's pure-Python HTTP stack (h11, the default without `uvicorn[standard]`) the "
        "header alone costs the server the difference shown there, protected or not.\n\n"
        + table(["Series", "Throughput", "vs unprotected", "p50", "p99", "server CPU per request", "errors"], rows)
        + "\n\nPer-round throughput ratios (protected / unprotected, measured back to back): "
        + ", ".join(f"{r:.2f}" for r in per_round)
        + ". Unprotected without the header / with it: "
        + ", ".join(f"{r:.2f}" for r in no_header)
        + f".\n\nServer CPU per request: protected {cpu['protected']:.0f} µs, unprotected {cpu['open']:.0f} µs "
        f"({cpu['protected'] - cpu['open']:+.0f} µs); the bearer header itself "
        f"{cpu['open'] - cpu['no-token']:+.0f} µs. "
        "Replacing the middleware by one that only marks the request authenticated brings the protected server "
        "back to the unprotected one's CPU, so the difference is the middleware's own work, spread over its "
        "parts: reading the body for the tool name, the chain with its audit event, and the RateLimit headers "
        "(each a few tens of µs inside a busy server, several times its cost in a tight loop; "
        "[the breakdown](http-breakdown.md) times each part from inside the server)."
        + f"\n\nTarget: protected >= {TARGET:g}x unprotected throughput. Measured (median of the per-round "
        f"ratios): **{ratio:.2f}x** "
        f"({'met' if ratio >= TARGET else 'NOT met'}). A request without a token to the protected server "
        f"got HTTP {refused}.\n"
    )
    print()
    print(body)
    failed = any(s[3] for s in summary.values()) or refused != 401
    if not args.smoke:
        write_page("http", "End-to-end HTTP: protected vs unprotected", body, packages=("fastapps", "fastmcp", "mcp"))
        write_results(
            "http",
            [
                {
                    "label": "protected vs unprotected throughput",
                    "ratio": ratio,
                    "target": TARGET,
                    "note": f"same request to both; server CPU {cpu['protected']:.0f} vs {cpu['open']:.0f} µs/request",
                }
            ],
            title="End-to-end HTTP",
        )
    return 1 if failed else 0


async def load_refused(url: str) -> int:
    import httpx

    async with httpx.AsyncClient(timeout=10.0) as client:
        r = await client.post(url, content=json.dumps(CALL).encode(), headers=HEADERS)
        return r.status_code


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
