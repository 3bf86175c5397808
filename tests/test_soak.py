"""Soak, short version: many distinct users and tokens through the full chain; every cache stays bounded.

The long run (``python -m benchmarks.soak``) also prints resident memory over time. Here the bounds are
small so that each cache is driven to its bound and must evict; each sample checks the gauge never
exceeds it.
"""

from __future__ import annotations

from benchmarks.soak import Bounds, soak


async def test_every_cache_stays_within_its_bound() -> None:
    bounds = Bounds(jwt_tokens=300, users=400, rate_keys=300)
    res = await soak(3_000, users=2_000, bounds=bounds, tick=0.001, report_every=250, seed=3)

    assert res.decisions == 3_000
    assert res.distinct_tokens > bounds.jwt_tokens * 3  # far more tokens and users than the caches may hold
    assert not res.violations, res.violations
    last = res.samples[-1].gauges
    # each cache was actually driven to its bound (so the bound, not the traffic, limited it)...
    assert last["jwt.cached_tokens"] == bounds.jwt_tokens
    assert last["user-status.cache_entries"] == bounds.users
    assert max(s.gauges["rate-limit.keys"] for s in res.samples) > bounds.rate_keys // 2
    # ...and never beyond it at any sample
    for s in res.samples:
        for gauge, bound in bounds.as_gauges().items():
            assert 0 <= s.gauges[gauge] <= bound, (s.decisions, gauge)
    # the traffic is mostly legitimate: bounded caches did not turn into wrong answers
    assert res.allowed / res.decisions > 0.9
