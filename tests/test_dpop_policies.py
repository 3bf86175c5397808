"""The dpop stage's options and edges: server nonces, shadow mode, the replay cache's bound, a missing
request context, configuration errors, RFC 9449's own example, and inputs no request should crash on.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastapps_auth import ConfigError, ManualClock, RequestInfo, VerifierChain
from fastapps_auth.backends.dpop.htu import canonical_uri, same_uri
from fastapps_auth.backends.dpop.replay import MemoryReplayStore
from fastapps_auth.stages.dpop import DPoPStage
from tests.support.dpop import Introspected, Setup, request

RFC_TOKEN = "Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU"
RFC_JKT = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"
#: RFC 9449 §7.1's example request's DPoP header (figure "DPoP Protected Resource Request").
RFC_PROOF = (
    "eyJ0eXAiOiJkcG9wK2p3dCIsImFsZyI6IkVTMjU2IiwiandrIjp7Imt0eSI6IkVDIiwieCI6Imw4dEZyaHgtMzR0VjNoUklDUkRZOXpDa0Rs"
    "cEJoRjQyVVFVZldWQVdCRnMiLCJ5IjoiOVZFNGpmX09rX282NHpiVFRsY3VOSmFqSG10NnY5VERWclUwQ2R2R1JEQSIsImNydiI6IlAtMjU2"
    "In19.eyJqdGkiOiJlMWozVl9iS2ljOC1MQUVCIiwiaHRtIjoiR0VUIiwiaHR1IjoiaHR0cHM6Ly9yZXNvdXJjZS5leGFtcGxlLm9yZy9wcm90"
    "ZWN0ZWRyZXNvdXJjZSIsImlhdCI6MTU2MjI2MjYxOCwiYXRoIjoiZlVIeU8ycjJaM0RaNTNFc05yV0JiMHhXWG9hTnk1OUlpS0NBcWtzbVFFb"
    "yJ9.2oW9RP35yRqzhrtNP86L-Ey71EOptxRimPPToA1plemAgR6pxHF8y6-yqyVnmcw6Fy1dqd-jfxSYoMxhAJpLjA"
)


async def test_rfc_9449s_own_example_request_passes_and_the_reverse_fails() -> None:
    clock = ManualClock(1562262618.0)
    chain = VerifierChain(Introspected({"jkt": RFC_JKT}), DPoPStage(clock=clock, algorithms=["ES256"]), clock=clock)
    info = RequestInfo(
        method="GET", url="https://resource.example.org/protectedresource", auth_scheme="dpop", dpop_proofs=(RFC_PROOF,)
    )
    assert (await chain.evaluate(RFC_TOKEN, request=info)).allowed
    assert (await chain.evaluate(RFC_TOKEN, request=info)).reason == "dpop_proof_replayed"
    other = VerifierChain(Introspected({"jkt": "x" * 43}), DPoPStage(clock=clock), clock=clock)
    assert (await other.evaluate(RFC_TOKEN, request=info)).reason == "dpop_key_mismatch"


# -- server nonces ------------------------------------------------------------------------------------


async def test_nonces_ask_for_one_then_accept_it_then_let_it_age_out(clock: ManualClock) -> None:
    s = Setup(clock, nonce=True, nonce_lifetime=60)
    token = s.token()
    d = await s.chain.evaluate(token, request=request(s.proof(token)))
    assert (d.reason, d.error, d.status) == ("dpop_nonce_required", "use_dpop_nonce", 401)
    nonce = s.dpop.nonce()
    assert nonce is not None
    assert (await s.chain.evaluate(token, request=request(s.proof(token, nonce=nonce)))).allowed
    clock.advance(60)  # the next slot: the previous nonce still passes
    assert (await s.chain.evaluate(token, request=request(s.proof(token, nonce=nonce)))).allowed
    assert s.dpop.nonce() != nonce
    clock.advance(60)
    d = await s.chain.evaluate(token, request=request(s.proof(token, nonce=nonce)))
    assert (d.reason, d.error) == ("dpop_nonce_invalid", "use_dpop_nonce")


async def test_a_forged_or_foreign_nonce_is_refused_and_a_shared_secret_is_shared(clock: ManualClock) -> None:
    secret = "s" * 32
    a = Setup(clock, nonce=True, nonce_secret=secret)
    b = Setup(clock, nonce=True, nonce_secret=secret)
    c = Setup(clock, nonce=True)  # its own random secret
    token = a.token()
    nonce = a.dpop.nonce()
    assert nonce is not None and b.dpop.nonce() == nonce and c.dpop.nonce() != nonce
    assert (await b.chain.evaluate(token, request=request(b.proof(token, nonce=nonce)))).allowed
    d = await c.chain.evaluate(token, request=request(c.proof(token, nonce=nonce)))
    assert d.reason == "dpop_nonce_invalid"
    forged = nonce[:-2] + ("AA" if not nonce.endswith("AA") else "BB")
    assert (await a.chain.evaluate(token, request=request(a.proof(token, nonce=forged)))).reason == "dpop_nonce_invalid"


def test_nonce_is_none_when_nonces_are_off(clock: ManualClock) -> None:
    assert DPoPStage(clock=clock).nonce() is None


# -- policies -----------------------------------------------------------------------------------------


async def test_shadow_mode_records_what_would_be_refused(clock: ManualClock) -> None:
    s = Setup(clock, enforce=False)
    token = s.token()
    d = await s.chain.evaluate(token, request=request(scheme="bearer"))
    assert d.allowed and d.shadowed == (("dpop", "dpop_bound_as_bearer"),)


@pytest.mark.parametrize("info", [None, RequestInfo(method="POST"), RequestInfo(url="https://mcp.example/mcp")])
@pytest.mark.parametrize("on_error", ["deny", "allow"])
async def test_without_the_request_a_bound_token_is_refused_with_503_never_failed_open(
    clock: ManualClock, caplog: pytest.LogCaptureFixture, info: RequestInfo | None, on_error: str
) -> None:
    s = Setup(clock, on_error=on_error)
    token = s.token()
    proof = s.proof(token)
    if info is not None:
        info = RequestInfo(method=info.method, url=info.url, auth_scheme="dpop", dpop_proofs=(proof,))
        d = await s.chain.evaluate(token, request=info)
        assert (d.reason, d.status, d.failed_open) == ("dpop_no_request", 503, ())
        assert "RequestInfo" in caplog.text
    else:
        assert (await s.chain.evaluate(token)).reason == "dpop_proof_missing"
    assert await s.chain.verify_token(token) is None


@pytest.mark.parametrize(("on_error", "allowed"), [("deny", False), ("allow", True)])
async def test_a_full_replay_cache_evicts_nothing_and_follows_on_error(
    clock: ManualClock, on_error: str, allowed: bool
) -> None:
    s = Setup(clock, on_error=on_error, replay_max_entries=2)
    token = s.token()
    for _ in range(2):
        assert (await s.chain.evaluate(token, request=request(s.proof(token)))).allowed
    first = s.proof(token)
    d = await s.chain.evaluate(token, request=request(first))
    assert d.allowed is allowed
    if allowed:
        assert d.failed_open == ("dpop",)
    else:
        assert (d.status, d.error) == (503, "temporarily_unavailable")
    assert s.dpop.stats()["replay_full"] == 1
    clock.advance(331)  # every entry expired: room again
    assert (await s.chain.evaluate(token, request=request(s.proof(token)))).allowed


async def test_the_memory_store_forgets_an_entry_at_its_ttl(clock: ManualClock) -> None:
    store = MemoryReplayStore(clock=clock)
    assert await store.first_use(b"k", 10.0)
    assert not await store.first_use(b"k", 10.0)
    clock.advance(10)
    assert await store.first_use(b"k", 10.0)


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"algorithms": ["HS256"]}, "algorithms"),
        ({"algorithms": ["none"]}, "algorithms"),
        ({"algorithms": []}, "algorithms"),
        ({"replay_cache": "redis://cache.example:6379/0"}, "replay_cache"),
        ({"replay_cache": "memcached://127.0.0.1"}, "replay_cache"),
        ({"replay_cache": "redis://127.0.0.1:notaport/0"}, "replay_cache"),
        ({"nonce": True, "nonce_secret": "short"}, "nonce_secret"),
        ({"nonce_secret": "s" * 32}, "nonce_secret"),
        ({"mode": "strict"}, "mode"),
        ({"max_age": 0}, "max_age"),
    ],
)
def test_configuration_errors_name_the_key(options: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        DPoPStage(**options)
    assert info.value.location.key == key
    assert "s" * 32 not in str(info.value)


def test_a_non_loopback_plain_redis_needs_insecure_backend() -> None:
    DPoPStage(replay_cache="redis://cache.example:6379/0", insecure_backend=True)
    DPoPStage(replay_cache="rediss://cache.example:6379/0")


def test_the_stage_is_registered_and_advertises_its_algorithms() -> None:
    from fastapps_auth import registry

    assert registry.load("dpop") is DPoPStage
    assert DPoPStage(algorithms=["ES256", "EdDSA"]).algorithms == ("ES256", "EdDSA")
    assert DPoPStage().algorithms == ("ES256", "ES384", "RS256", "PS256", "EdDSA")


# -- nothing crashes the chain ------------------------------------------------------------------------


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.text(max_size=300) | st.binary(max_size=200).map(lambda b: b.hex()), max_size=3))
async def test_any_dpop_headers_get_a_decision_never_an_exception(clock: ManualClock, proofs: list[str]) -> None:
    s = Setup(clock)
    token = s.token()
    d = await s.chain.evaluate(token, request=request(*proofs))
    assert not d.allowed and d.status in (400, 401)


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
async def test_changing_any_character_of_a_valid_proof_makes_it_fail(clock: ManualClock, data: st.DataObject) -> None:
    s = Setup(clock)
    token = s.token()
    proof = s.proof(token)
    i = data.draw(st.integers(0, len(proof) - 1))
    char = data.draw(st.sampled_from("AQgwBRhx-_0.").filter(lambda c: c != proof[i]))
    mutated = proof[:i] + char + proof[i + 1 :]
    d = await s.chain.evaluate(token, request=request(mutated))
    assert not d.allowed and d.error == "invalid_dpop_proof"


@pytest.mark.parametrize(
    ("uri", "canonical"),
    [
        ("HTTPS://Example.COM:443", "https://example.com/"),
        ("http://example.com:80/a/./b/../c/", "http://example.com/a/c/"),
        ("http://[::1]:8080/mcp", "http://[::1]:8080/mcp"),
        ("https://example.com/%7euser/%2f", "https://example.com/~user/%2F"),
        ("https://example.com/mcp?x=1#y", "https://example.com/mcp"),
        ("https://user:pw@example.com/mcp", None),
        ("https://example.com:99999/mcp", None),
        ("ftp://example.com/mcp", None),
        ("/mcp", None),
        ("https://example.com/a b", None),
    ],
)
def test_canonical_uri(uri: str, canonical: str | None) -> None:
    assert canonical_uri(uri) == canonical


@given(st.from_regex(r"https?://[a-zA-Z0-9.-]{1,20}(:[0-9]{1,4})?(/[a-zA-Z0-9._~%-]{0,8}){0,4}", fullmatch=True))
def test_canonical_uri_is_idempotent_and_matches_itself(uri: str) -> None:
    canonical = canonical_uri(uri)
    if canonical is not None:
        assert canonical_uri(canonical) == canonical
        assert same_uri(uri, canonical) and same_uri(canonical, uri)


async def test_a_proof_that_is_not_a_string_is_refused_not_a_crash(clock: ManualClock) -> None:
    s = Setup(clock)
    token = s.token()
    d = await s.chain.evaluate(token, request=request(b"bytes-from-a-sloppy-host"))  # type: ignore[arg-type]
    assert (d.reason, d.status) == ("dpop_proof_malformed", 401)
