"""Soak: hundreds of thousands of decisions over many users and tokens; every cache stays within its bound.

The chain is the full one (jwt → user-status on SQLite → rate-limit in memory, with the audit and metrics
observers), each cache configured with a bound well below the number of distinct users and tokens, and a
manual clock that moves on so entries expire and windows roll. Every ``--report`` decisions it prints the
resident memory and every cache's size; the run fails (exit 1) if a cache ever exceeds its bound.

``python -m benchmarks.soak`` (300,000 decisions); ``tests/test_soak.py`` runs a short version.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import sqlite3
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.signing import claims, jwt_options, keys
from fastapps_auth.chain import VerifierChain
from fastapps_auth.clock import ManualClock
from fastapps_auth.stages.audit import AuditObserver
from fastapps_auth.stages.jwt import JWTVerifier
from fastapps_auth.stages.metrics import MetricsObserver
from fastapps_auth.stages.rate_limit import RateLimitStage
from fastapps_auth.stages.user_status import UserStatusStage

START = 1_800_000_000.0


@dataclass(frozen=True)
class Bounds:
    """The cache bounds under test (gauge name in ``chain.stats()`` → its configured maximum)."""

    jwt_tokens: int = 5_000
    users: int = 10_000
    rate_keys: int = 8_000

    def as_gauges(self) -> dict[str, int]:
        return {
            "jwt.cached_tokens": self.jwt_tokens,
            "user-status.cache_entries": self.users,
            "rate-limit.keys": self.rate_keys,
        }


@dataclass
class Sample:
    decisions: int
    rss_mib: float
    gauges: dict[str, float]


@dataclass
class SoakResult:
    decisions: int = 0
    allowed: int = 0
    distinct_tokens: int = 0
    samples: list[Sample] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    seconds: float = 0.0


def rss_mib() -> float:
    """Current resident set size of this process, MiB (Linux /proc; 0 where unavailable)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def make_users(path: Path, n: int, *, banned_every: int = 50) -> None:
    """A SQLite users table of ``n`` users; every ``banned_every``-th one banned."""
    con = sqlite3.connect(path)
    with con:
        con.execute("CREATE TABLE users (id TEXT PRIMARY KEY, active INTEGER NOT NULL, banned INTEGER NOT NULL)")
        con.executemany(
            "INSERT INTO users VALUES (?, 1, ?)", ((f"user-{i}", int(i % banned_every == 0)) for i in range(n))
        )
    con.close()


def build_chain(db: Path, clock: ManualClock, bounds: Bounds) -> VerifierChain:
    audit_log = logging.getLogger("fastapps_auth.soak.audit")
    audit_log.handlers[:] = [logging.NullHandler()]
    audit_log.propagate = False
    audit_log.setLevel(logging.INFO)  # events are rendered, then dropped: the observer's cost is real
    return VerifierChain(
        JWTVerifier(clock=clock, **jwt_options(max_cached_tokens=bounds.jwt_tokens, cache_ttl=300)),
        UserStatusStage(dsn=f"sqlite:///{db}", clock=clock, max_entries=bounds.users, cache_ttl=30, negative_ttl=5),
        RateLimitStage(limit=100, window=60, max_keys=bounds.rate_keys, clock=clock),
        observers=[
            AuditObserver(logger=audit_log.name, clock=clock),
            MetricsObserver(registry="private", clock=clock),
        ],
        clock=clock,
    )


async def soak(
    decisions: int,
    *,
    users: int,
    bounds: Bounds,
    fresh_token_rate: float = 0.3,
    tick: float = 0.01,
    report_every: int = 25_000,
    seed: int = 0,
    progress: Callable[[Sample], None] | None = None,
) -> SoakResult:
    """Run ``decisions`` decisions and sample memory and cache sizes every ``report_every``."""
    rng = random.Random(seed)
    clock = ManualClock(START)
    k = keys()
    limits = bounds.as_gauges()
    res = SoakResult()
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "users.db"
        make_users(db, users)
        chain = build_chain(db, clock, bounds)
        # Each user reuses their current token until it is replaced (a client refreshing its token).
        current: dict[int, str] = {}
        t0 = time.perf_counter()

        def check() -> None:
            gauges = chain.stats()
            sample = Sample(res.decisions, rss_mib(), {g: gauges.get(g, -1.0) for g in limits})
            for gauge, bound in limits.items():
                if sample.gauges[gauge] > bound:
                    res.violations.append(f"{gauge} = {sample.gauges[gauge]:.0f} > {bound} after {res.decisions}")
            res.samples.append(sample)
            if progress is not None:
                progress(sample)

        try:
            check()
            for i in range(decisions):
                # A skewed mix: a few heavy users, a long tail of occasional ones.
                u = int(users * rng.random() ** 2.5)
                token = current.get(u)
                if token is None or rng.random() < fresh_token_rate:
                    token = k.sign(claims(f"user-{u}", clock.time(), lifetime=600, jti=f"{u}-{i}"), alg="ES256")
                    res.distinct_tokens += 1
                    if len(current) < 20_000 or u in current:  # the driver's own memory is bounded too
                        current[u] = token
                d = await chain.evaluate(token)
                res.decisions += 1
                res.allowed += d.allowed
                clock.advance(tick)
                if res.decisions % report_every == 0:
                    check()
            if res.decisions % report_every:
                check()
        finally:
            await chain.aclose()
        res.seconds = time.perf_counter() - t0
    return res


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--decisions", type=int, default=300_000)
    parser.add_argument("--users", type=int, default=50_000)
    parser.add_argument("--report", type=int, default=25_000, help="sample every this many decisions")
    args = parser.parse_args(argv)
    bounds = Bounds()
    names = list(bounds.as_gauges())
    print(f"soak: {args.decisions:,} decisions over {args.users:,} users; bounds {bounds.as_gauges()}\n")
    print("| decisions | RSS MiB | " + " | ".join(names) + " |")
    print("|---:|---:|" + "---:|" * len(names))

    def show(s: Sample) -> None:
        cells = " | ".join(f"{s.gauges[n]:,.0f}" for n in names)
        print(f"| {s.decisions:,} | {s.rss_mib:.1f} | {cells} |", flush=True)

    res = asyncio.run(soak(args.decisions, users=args.users, bounds=bounds, report_every=args.report, progress=show))
    rss = [s.rss_mib for s in res.samples]
    half = len(rss) // 2
    print(
        f"\n{res.decisions:,} decisions ({res.allowed:,} allowed) with {res.distinct_tokens:,} distinct tokens "
        f"in {res.seconds:.0f}s ({res.decisions / res.seconds:,.0f}/s)"
    )
    if len(rss) >= 4:
        print(
            f"RSS: {rss[1]:.1f} MiB after the first sample, {rss[half]:.1f} MiB at half time, {rss[-1]:.1f} MiB "
            f"at the end (second-half growth {rss[-1] - rss[half]:+.1f} MiB)"
        )
    for v in res.violations:
        print("BOUND EXCEEDED:", v)
    return 1 if res.violations else 0


if __name__ == "__main__":
    raise SystemExit(main())
