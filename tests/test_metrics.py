"""The metrics observer: decision counters, stage histograms, stats gauges and the exposition app."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import httpx
import pytest
from mcp.server.auth.provider import AccessToken
from prometheus_client import REGISTRY, CollectorRegistry, Counter
from starlette.applications import Starlette

from fastapps_auth import (
    ConfigError,
    Decision,
    Rejected,
    Stage,
    StageOptions,
    StageTrace,
    Verification,
    VerifierChain,
    chain_from_config,
)
from fastapps_auth import registry as plugin_registry
from fastapps_auth.observers.metrics import OVERFLOW, MetricsObserver, metrics_app, metrics_route, render_metrics

GOOD, BANNED = "good-token-0123456789abcdefghij", "banned-token-0123456789abcdefgh"


class Auth(Stage[StageOptions]):
    """Authenticates any token but an empty one; reports cache gauges."""

    plugin_name: ClassVar[str] = "auth"
    authenticates: ClassVar[bool] = True

    async def __call__(self, v: Verification) -> None:
        subject = "banned" if v.token == BANNED else "user"
        v.access_token = AccessToken(token=v.token, client_id="c", scopes=[], subject=subject, claims={})

    def stats(self) -> dict[str, float]:
        return {"cache_size": 3.0, "cached_tokens": 4.0, "jwks_age_seconds": 12.5, "cache_hits": 7.0}


class Ban(Stage[StageOptions]):
    plugin_name: ClassVar[str] = "ban"

    async def __call__(self, v: Verification) -> None:
        if v.access_token is not None and v.access_token.subject == "banned":
            raise Rejected("user_banned", status=403)


class Flaky(Stage[StageOptions]):
    plugin_name: ClassVar[str] = "flaky"

    async def __call__(self, v: Verification) -> None:
        raise TimeoutError("redis timed out")


class Chatty(Stage[StageOptions]):
    """A badly written stage that invents a new reason for every request (unbounded label values)."""

    plugin_name: ClassVar[str] = "chatty"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.n = 0

    async def __call__(self, v: Verification) -> None:
        self.n += 1
        raise Rejected(f"reason_{self.n}")


def value(reg: CollectorRegistry, name: str, **labels: str) -> float:
    found = reg.get_sample_value(name, labels)
    return 0.0 if found is None else found


async def test_decisions_are_counted_by_stage_outcome_and_reason() -> None:
    metrics = MetricsObserver(registry="private", decision_seconds=True)
    chain = VerifierChain(Auth(), Ban(), observers=[metrics])
    for _ in range(3):
        await chain.evaluate(GOOD)
    await chain.evaluate(BANNED)
    await chain.evaluate("")
    reg = metrics.registry
    total = "fastapps_auth_decisions_total"
    assert value(reg, total, stage="", outcome="allowed", reason="") == 3
    assert value(reg, total, stage="ban", outcome="rejected", reason="user_banned") == 1
    assert value(reg, total, stage="", outcome="rejected", reason="missing_token") == 1
    assert value(reg, "fastapps_auth_decision_seconds_count") == 5


async def test_fail_open_and_unavailable_outcomes() -> None:
    metrics = MetricsObserver(registry="private")
    await VerifierChain(Auth(), Flaky(on_error="allow"), observers=[metrics]).evaluate(GOOD)
    await VerifierChain(Auth(), Flaky(), observers=[metrics]).evaluate(GOOD)
    total = "fastapps_auth_decisions_total"
    assert value(metrics.registry, total, stage="flaky", outcome="failed-open", reason="unavailable") == 1
    assert value(metrics.registry, total, stage="flaky", outcome="unavailable", reason="unavailable") == 1


async def test_the_decision_histogram_is_optional() -> None:
    metrics = MetricsObserver(registry="private")
    await VerifierChain(Auth(), observers=[metrics]).evaluate(GOOD)
    text = render_metrics(registry=metrics.registry).decode()
    assert "fastapps_auth_decision_seconds_count" not in text
    assert 'fastapps_auth_stage_seconds_count{stage="auth"} 1.0' in text


async def test_stage_durations_are_observed_per_stage() -> None:
    metrics = MetricsObserver(registry="private", buckets=[0.5, 1.0])
    chain = VerifierChain(Auth(), Ban(), observers=[metrics])
    for _ in range(4):
        await chain.evaluate(GOOD)
    await chain.evaluate(BANNED)
    reg = metrics.registry
    assert value(reg, "fastapps_auth_stage_seconds_count", stage="auth") == 5
    assert value(reg, "fastapps_auth_stage_seconds_count", stage="ban") == 5
    # microsecond stages land in the first bucket; the custom buckets are used
    assert value(reg, "fastapps_auth_stage_seconds_bucket", stage="auth", le="0.5") == 5
    assert value(reg, "fastapps_auth_stage_seconds_bucket", stage="auth", le="+Inf") == 5


async def test_label_sets_are_bounded() -> None:
    metrics = MetricsObserver(registry="private", max_label_sets=10)
    chain = VerifierChain(Chatty(), observers=[metrics])
    for _ in range(50):
        await chain.evaluate(GOOD)
    reg = metrics.registry
    samples = [s for m in reg.collect() if m.name == "fastapps_auth_decisions" for s in m.samples]
    counted = [s for s in samples if s.name == "fastapps_auth_decisions_total" and s.labels["outcome"] == "rejected"]
    assert len(counted) == 11  # ten distinct reasons, then everything else under "other"
    assert sum(s.value for s in counted) == 50
    assert value(reg, "fastapps_auth_decisions_total", stage="chatty", outcome="rejected", reason=OVERFLOW) == 40
    assert metrics.stats()["label_sets"] <= 12  # and the allowed decisions' own


async def test_stats_gauges_come_from_the_attached_chain() -> None:
    metrics = MetricsObserver(registry="private")
    chain = VerifierChain(Auth(), observers=[metrics])
    text = render_metrics(chain).decode()
    assert 'fastapps_auth_cache_entries{cache="cache_size",stage="auth"} 3.0' in text
    assert 'fastapps_auth_jwks_age_seconds{stage="auth"} 12.5' in text
    assert 'fastapps_auth_cache_entries{cache="cached_tokens",stage="auth"} 4.0' in text
    assert 'fastapps_auth_stage_stat{stage="auth",stat="cache_hits"} 7.0' in text  # a counter, not a size


async def test_a_failing_stats_does_not_break_the_scrape(caplog: pytest.LogCaptureFixture) -> None:
    class BadStats(Auth):
        def stats(self) -> dict[str, float]:
            raise RuntimeError("boom")

    metrics = MetricsObserver(registry="private")
    chain = VerifierChain(BadStats(), observers=[metrics])
    await chain.evaluate(GOOD)
    text = render_metrics(chain).decode()
    assert 'fastapps_auth_decisions_total{outcome="allowed",reason="",stage=""} 1.0' in text
    assert "stats() of 'chain' failed" in caplog.text


async def test_asgi_app_serves_the_exposition() -> None:
    metrics = MetricsObserver(registry="private")
    chain = VerifierChain(Auth(), Ban(), observers=[metrics])
    await chain.evaluate(BANNED)
    transport = httpx.ASGITransport(app=metrics_app(chain))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        got = await client.get("/metrics")
        posted = await client.post("/metrics")
        head = await client.head("/metrics")
    assert got.status_code == 200
    assert got.headers["content-type"].startswith("text/plain; version=")
    assert 'fastapps_auth_decisions_total{outcome="rejected",reason="user_banned",stage="ban"} 1.0' in got.text
    assert 'fastapps_auth_cache_entries{cache="cache_size",stage="auth"} 3.0' in got.text
    assert posted.status_code == 405
    assert head.status_code == 200
    assert head.content == b""


async def test_starlette_route() -> None:
    metrics = MetricsObserver(registry="private", prefix="routed")
    chain = VerifierChain(Auth(), observers=[metrics])
    await chain.evaluate(GOOD)
    web = Starlette(routes=[metrics_route(chain)])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=web), base_url="http://testserver") as client:
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert 'routed_decisions_total{outcome="allowed",reason="",stage=""} 1.0' in response.text


async def test_default_registry_is_shared_by_observers_with_the_same_prefix() -> None:
    first = MetricsObserver(prefix="fa_test_shared")
    second = MetricsObserver(prefix="fa_test_shared")  # no "Duplicated timeseries" error
    assert first.registry is REGISTRY
    await VerifierChain(Auth(), observers=[first]).evaluate(GOOD)
    await VerifierChain(Auth(), observers=[second]).evaluate(GOOD)
    before = value(REGISTRY, "fa_test_shared_decisions_total", stage="", outcome="allowed", reason="")
    await VerifierChain(Auth(), observers=[second]).evaluate(GOOD)
    after = value(REGISTRY, "fa_test_shared_decisions_total", stage="", outcome="allowed", reason="")
    assert before >= 2
    assert after == before + 1


@pytest.fixture
def auth_plugin() -> Iterator[str]:
    plugin_registry.register("metrics-test-auth", Auth)
    yield "metrics-test-auth"
    plugin_registry.unregister("metrics-test-auth")


async def test_built_from_config_by_name(auth_plugin: str) -> None:
    chain = chain_from_config({"stages": [{"use": auth_plugin}, {"use": "metrics", "registry": "private"}]})
    [metrics] = chain.observers
    assert isinstance(metrics, MetricsObserver)
    await chain.evaluate(GOOD)
    assert value(metrics.registry, "fastapps_auth_decisions_total", stage="", outcome="allowed", reason="") == 1


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"buckets": [1.0, 0.5]}, "buckets"),
        ({"buckets": [0, 1]}, "buckets"),
        ({"prefix": "has-dash"}, "prefix"),
        ({"registry": "global"}, "registry"),
        ({"max_label_sets": 1}, "max_label_sets"),
    ],
)
def test_bad_options_name_the_key(options: dict[str, Any], key: str, auth_plugin: str) -> None:
    with pytest.raises(ConfigError) as info:
        chain_from_config({"stages": [{"use": auth_plugin}, {"use": "metrics", **options}]})
    assert info.value.location.key == key


def test_histogram_buckets_are_less_than_or_equal() -> None:
    metrics = MetricsObserver(registry="private", buckets=[0.1, 0.5, 1.0], decision_seconds=True)
    for seconds in (0.1, 0.3, 0.5, 2.0):
        metrics(Decision(True, None, trace=(StageTrace("s", "passed", seconds),), duration=seconds))
    reg = metrics.registry
    buckets = {le: value(reg, "fastapps_auth_stage_seconds_bucket", stage="s", le=le) for le in ("0.1", "0.5", "1.0")}
    assert buckets == {"0.1": 1, "0.5": 3, "1.0": 3}
    assert value(reg, "fastapps_auth_stage_seconds_bucket", stage="s", le="+Inf") == 4
    assert value(reg, "fastapps_auth_stage_seconds_sum", stage="s") == pytest.approx(2.9)
    assert value(reg, "fastapps_auth_decision_seconds_count") == 4


def test_shared_prefix_with_other_buckets_is_a_config_error() -> None:
    MetricsObserver(prefix="fa_test_buckets", buckets=[0.1, 1.0])
    with pytest.raises(ConfigError) as info:
        MetricsObserver(prefix="fa_test_buckets", buckets=[0.2, 1.0])
    assert info.value.location.key == "buckets"


def test_a_prefix_taken_by_another_collector_is_a_config_error() -> None:
    Counter("fa_test_taken_decisions", "someone else's metric")
    with pytest.raises(ConfigError) as info:
        MetricsObserver(prefix="fa_test_taken")
    assert info.value.location.key == "prefix"


def test_shadowed_rejections_are_counted_beside_the_decision() -> None:
    metrics = MetricsObserver(registry="private")
    trace = (StageTrace("auth", "passed", 0.001), StageTrace("rate-limit", "shadow-rejected", 0.002))
    shadowed = (("rate-limit", "rate_limited"),)
    metrics(Decision(True, None, trace=trace, shadowed=shadowed))
    metrics(Decision(True, None, trace=trace, shadowed=shadowed))
    both = (("rate-limit", "rate_limited"), ("scopes", "insufficient_scope"))
    metrics(Decision(False, None, status=403, stage="ban", reason="user_banned", shadowed=both))
    reg, total = metrics.registry, "fastapps_auth_decisions_total"
    assert value(reg, total, stage="", outcome="allowed", reason="") == 2  # each decision once, by its own outcome
    assert value(reg, total, stage="ban", outcome="rejected", reason="user_banned") == 1
    assert value(reg, total, stage="rate-limit", outcome="shadow_rejected", reason="rate_limited") == 3
    assert value(reg, total, stage="scopes", outcome="shadow_rejected", reason="insufficient_scope") == 1
    assert value(reg, "fastapps_auth_stage_seconds_count", stage="rate-limit") == 2


def test_the_old_import_path_keeps_working() -> None:
    from fastapps_auth.observers import metrics as new
    from fastapps_auth.stages import metrics as old

    assert old.MetricsObserver is new.MetricsObserver
    assert old.metrics_app is new.metrics_app
    assert plugin_registry.load("metrics") is MetricsObserver


def test_a_private_registry_is_refused_in_multiprocess_mode(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    with pytest.raises(ConfigError) as info:
        MetricsObserver(registry="private")
    assert info.value.location.key == "registry"
