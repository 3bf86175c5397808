"""The ``introspection`` stage: a cached decision vs a cached jwt decision, an uncached one vs a bare httpx POST.

Cached: ``VerifierChain(introspection)`` on a repeated opaque token (the stage's in-process cache
answers: a ``TLRUCache`` lookup by the token's SHA-256) against ``VerifierChain(jwt)`` on a repeated
JWT (the jwt stage's verified-token cache answers). Both are pure CPU; the ratio says what an opaque
token costs once its answer is cached.

Uncached: the stage with its cache off, so every decision sends one introspection request to the
dev issuer on 127.0.0.1 (client_secret_basic, a kept-alive connection), against a bare
``httpx.AsyncClient`` sending the same POST (same form, same Basic header) and parsing the JSON.
The issuer answers in a thread of this process, so both sides pay it alike; the ratio says what the
stage adds around the request (bounded read, answer checks, ``AccessToken``, single-flight task).

Every round measures both sides of a ratio right next to each other (order alternating), in wall
time (the uncached side waits on a socket). The ratio column is the median over rounds of the paired
ratios. Targets: cached introspection >= 0.8x a cached jwt decision; uncached >= 0.7x the bare POST.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from benchmarks.common import fmt_rate, table, write_page, write_results
from benchmarks.signing import claims, jwt_options, keys
from fastapps_auth import FixedClock, VerifierChain
from fastapps_auth.stages.introspection import IntrospectionStage
from fastapps_auth.stages.jwt import JWTVerifier
from fastapps_auth.testing.issuer import start_issuer

CACHED_TARGET = 0.8
UNCACHED_TARGET = 0.7


async def wall_rate(fn: Callable[[], Awaitable[object]], number: int) -> float:
    t0 = time.perf_counter()
    for _ in range(number):
        await fn()
    return number / max(time.perf_counter() - t0, 1e-9)


async def paired(
    a: Callable[[], Awaitable[object]], b: Callable[[], Awaitable[object]], number: int, rounds: int
) -> tuple[float, float, float]:
    """Median rate of ``a``, of ``b``, and median of the paired ratios a/b (order alternating by round)."""
    await a()
    await b()
    ra, rb, ratios = [], [], []
    for r in range(rounds):
        if r % 2 == 0:
            x, y = await wall_rate(a, number), await wall_rate(b, number)
        else:
            y, x = await wall_rate(b, number), await wall_rate(a, number)
        ra.append(x)
        rb.append(y)
        ratios.append(x / y)
    return statistics.median(ra), statistics.median(rb), statistics.median(ratios)


async def measure(number: int, network_number: int, rounds: int) -> dict[str, tuple[float, float, float]]:
    issuer = start_issuer(opaque=True)
    try:
        now = time.time()
        clock = FixedClock(now)
        secret = issuer.client.secret
        common: dict[str, Any] = {
            "introspection_url": issuer.introspection_endpoint,
            "client_id": issuer.client.client_id,
            "client_secret": secret,
            "audience": issuer.audience,
        }
        opaque = issuer.mint_opaque("alice", scopes=["read", "write"])
        cached = VerifierChain(IntrospectionStage(clock=clock, **common), clock=clock)
        jwt_chain = VerifierChain(JWTVerifier(clock=clock, **jwt_options()), clock=clock)
        jwt_token = keys().sign(claims("alice", now), alg="RS256")
        uncached = VerifierChain(IntrospectionStage(max_entries=0, **common))
        bare = httpx.AsyncClient(auth=httpx.BasicAuth(issuer.client.client_id, secret))
        form = {"token": opaque, "token_type_hint": "access_token"}

        async def intro_cached() -> None:
            assert (await cached.evaluate(opaque)).allowed

        async def jwt_cached() -> None:
            assert (await jwt_chain.evaluate(jwt_token)).allowed

        async def intro_uncached() -> None:
            d = await uncached.evaluate(opaque)
            assert d.allowed, d.reason
            assert d.trace[0].cache_hit is False

        async def bare_post() -> None:
            resp = await bare.post(issuer.introspection_endpoint, data=form)
            assert resp.json()["active"] is True

        try:
            return {
                "cached": await paired(intro_cached, jwt_cached, number, rounds),
                "uncached": await paired(intro_uncached, bare_post, network_number, rounds),
            }
        finally:
            for chain in (cached, jwt_chain, uncached):
                await chain.aclose()
            await bare.aclose()
    finally:
        issuer.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--smoke", action="store_true", help="a few hundred calls; no pages written")
    args = parser.parse_args(argv)
    number, network_number, rounds = (200, 20, 1) if args.smoke else (20_000, 1_000, 7)
    got = asyncio.run(measure(number, network_number, rounds))
    ci, cj, cached_ratio = got["cached"]
    ui, ub, uncached_ratio = got["uncached"]
    rows = [
        ("chain.evaluate: introspection, cached answer", fmt_rate(ci), f"{cached_ratio:.2f}x a cached jwt decision"),
        ("chain.evaluate: jwt (RS256), cached verification", fmt_rate(cj), "1.00x"),
        ("chain.evaluate: introspection, no cache (one POST each)", fmt_rate(ui), f"{uncached_ratio:.2f}x bare POST"),
        ("bare httpx POST + JSON parse, same endpoint", fmt_rate(ub), "1.00x"),
    ]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    body = (
        f"Median of {rounds} paired rounds ({number:,} cached calls, {network_number:,} network calls per round; "
        f"wall time). Load average at the end: {load:.1f} on {os.cpu_count()} CPUs. The introspection endpoint is "
        "the dev issuer on 127.0.0.1, in a thread of the same process.\n\n"
        + table(["Decision", "Rate", "Ratio"], rows)
        + f"\n\nTargets: cached introspection >= {CACHED_TARGET:g}x a cached jwt decision, measured "
        f"**{cached_ratio:.2f}x** ({'met' if cached_ratio >= CACHED_TARGET else 'NOT met'}); uncached >= "
        f"{UNCACHED_TARGET:g}x a bare POST, measured **{uncached_ratio:.2f}x** "
        f"({'met' if uncached_ratio >= UNCACHED_TARGET else 'NOT met'}).\n\n"
        "Why: a cached answer is one SHA-256 of the token and one cache lookup, like the jwt stage's hit. "
        "Uncached, the request dominates: the stage adds the bounded streaming read of `JSONClient`, the "
        "answer's checks, pydantic's `AccessToken` constructor and the task that lets concurrent lookups of "
        "the token share the request. In production the round trip to a remote issuer (milliseconds) "
        "dwarfs both, which is why answers are cached.\n"
    )
    print(body)
    if not args.smoke:
        write_page("introspection", "Introspection: cached and uncached decisions", body, packages=("httpx",))
        write_results(
            "introspection",
            [
                {
                    "label": "cached introspection decision vs cached jwt decision",
                    "ratio": cached_ratio,
                    "target": CACHED_TARGET,
                    "note": f"{fmt_rate(ci)} vs {fmt_rate(cj)}",
                },
                {
                    "label": "uncached introspection decision vs bare httpx POST",
                    "ratio": uncached_ratio,
                    "target": UNCACHED_TARGET,
                    "note": f"{fmt_rate(ui)} vs {fmt_rate(ub)}",
                },
            ],
            title="Introspection",
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
