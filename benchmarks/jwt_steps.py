"""Pieces of the jwt benchmark (``bench_jwt``): CPU-time rates, a token cycle, the claims minted, and where
a distinct token's time goes in the stage, step by step."""

from __future__ import annotations

import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from cachetools import TLRUCache

from fastapps_auth.access_token import AccessToken
from fastapps_auth.backends.token_cache import VerifiedTokenCache
from fastapps_auth.clock import SYSTEM_CLOCK
from fastapps_auth.fingerprint import token_digest
from fastapps_auth.stage import Verification
from fastapps_auth.stages.jwt import JWTVerifier
from tests.support.jwt_mint import signing_key

AUDIENCE = "api://mcp"
T = TypeVar("T")


def token_claims(issuer: str, i: int, now: float) -> dict[str, Any]:
    return {
        "iss": issuer,
        "sub": f"user-{i % 97}",
        "aud": AUDIENCE,
        "iat": int(now) - 10,
        "exp": int(now) + 3600,
        "scope": "read write",
        "client_id": "bench",
        "jti": str(i),
    }


def cpu_rate(fn: Callable[[], object], number: int) -> float:
    """Calls per second of CPU time (the process's): time this process was descheduled does not count."""
    fn()  # warm-up
    t0 = time.process_time()
    for _ in range(number):
        fn()
    return number / (time.process_time() - t0)


async def cpu_arate(fn: Callable[[], Awaitable[object]], number: int) -> float:
    """``cpu_rate`` of an awaited call, sequentially."""
    await fn()  # warm-up
    t0 = time.process_time()
    for _ in range(number):
        await fn()
    return number / (time.process_time() - t0)


class Cycle(Generic[T]):
    """Hands out the pool's tokens (or their digests) in turn."""

    def __init__(self, tokens: list[T]) -> None:
        self.tokens = tokens
        self.i = 0

    def __call__(self) -> T:
        self.i = (self.i + 1) % len(self.tokens)
        return self.tokens[self.i]


async def breakdown(alg: str, *, number: int, rounds: int, pool: int, issuer: str) -> list[list[str]]:
    """Where a distinct token's CPU time goes in the stage, step by step (medians over rounds, µs)."""
    key = signing_key(alg)
    now = SYSTEM_CLOCK.time()
    tokens = [key.token(token_claims(issuer, i, now)) for i in range(pool)]
    stage = JWTVerifier(
        jwks={"keys": [key.jwk()]},
        issuer_url=issuer,
        audience=AUDIENCE,
        algorithms=[alg],
        max_cached_tokens=max(1, pool // 2),
    )
    _, kid, sig, payload, signing_input = stage._parse(tokens[0])
    keys = stage._source.current()
    assert keys is not None
    verify = keys.candidates(kid, alg)[0].verifiers[alg]
    cyc = {name: Cycle(tokens) for name in ("digest", "parse", "whole")}

    async def whole() -> None:
        await stage(Verification(cyc["whole"](), now=SYSTEM_CLOCK.time(), clock=SYSTEM_CLOCK))

    at, _, _ = stage._rules.check(tokens[0], payload, now)
    fields = at.model_dump()
    steps: dict[str, Callable[[], object]] = {
        "SHA-256 of the token (the cache key, shared by the chain)": lambda: token_digest(cyc["digest"]()),
        "parse: split, base64url, header (memoized), payload JSON": lambda: stage._parse(cyc["parse"]()),
        "signature verify (the key's prepared verifier)": lambda: verify(sig, signing_input),
        "claims checks + AccessToken (pydantic constructor)": lambda: stage._rules.check(tokens[0], payload, now),
    }
    # Not steps of the stage: the AccessToken alone, and the cache insertion the stage makes next to the
    # one it would make with cachetools' TLRUCache (per-entry expiry), both into a full cache, evicting.
    digests = [token_digest(t) for t in tokens]
    lru = VerifiedTokenCache(max(1, pool // 2), 300.0)
    tlru: TLRUCache[bytes, float] = TLRUCache(max(1, pool // 2), lambda _k, exp, t: min(exp, t + 300.0), time.time)
    ins = {name: Cycle(digests) for name in ("lru", "tlru")}
    aside: dict[str, Callable[[], object]] = {
        "AccessToken(...) alone (pydantic constructor)": lambda: AccessToken(**fields),
        "cache insertion into a full LRUCache (the stage's)": lambda: lru.store(
            ins["lru"](), at, (), now=now, expires=now + 3600
        ),
        "cache insertion into a full TLRUCache (not used)": lambda: tlru.__setitem__(ins["tlru"](), now + 3600),
    }
    for d in digests:  # fill both caches
        lru.store(d, at, (), now=now, expires=now + 3600)
        tlru[d] = now + 3600
    samples: dict[str, list[float]] = {name: [] for name in [*steps, *aside, "whole"]}
    for _ in range(rounds):
        for name, fn in (steps | aside).items():
            samples[name].append(1e6 / cpu_rate(fn, number))
        samples["whole"].append(1e6 / await cpu_arate(whole, number))
    cost = {name: statistics.median(v) for name, v in samples.items()}
    rest = cost["whole"] - sum(cost[name] for name in steps)
    rows = [[name, f"{cost[name]:.1f}"] for name in steps]
    rows.append(
        ["the rest: Verification object, cache lookup + insert + eviction, key lookup, coroutine", f"{rest:.1f}"]
    )
    rows.append(["**the stage call, distinct token**", f"**{cost['whole']:.1f}**"])
    rows.extend([f"aside: {name}", f"{cost[name]:.1f}"] for name in aside)
    return rows
