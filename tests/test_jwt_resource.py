"""The audience bound to the server (RFC 8707): ``canonical_resource``/``same_resource``, and a ``jwt`` stage
without an ``audience`` of its own that a host binds to its resource URL."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastapps_auth import ConfigError, ManualClock, VerifierChain
from fastapps_auth.endpoints import canonical_resource, same_resource
from fastapps_auth.stages.jwt import JWTVerifier
from tests.support.jwt_mint import claims, signing_key

ISS = "https://issuer.example/"
RESOURCE = "https://mcp.example.com/mcp"


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("https://mcp.example.com/mcp", "https://mcp.example.com/mcp/"),
        ("https://mcp.example.com/mcp", "HTTPS://MCP.Example.COM/mcp"),
        ("https://mcp.example.com/mcp", "https://mcp.example.com:443/mcp"),
        ("http://127.0.0.1/mcp", "http://127.0.0.1:80/mcp/"),
        ("http://[::1]:8000/mcp", "http://[::1]:8000/mcp/"),
        ("https://mcp.example.com", "https://mcp.example.com/"),
        ("https://mcp.example.com/mcp", "https://mcp.example.com/mcp#fragment"),
    ],
)
def test_the_same_resource_written_differently(a: str, b: str) -> None:
    assert same_resource(a, b) and same_resource(b, a)
    assert canonical_resource(a) == canonical_resource(b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("https://mcp.example.com/mcp", "https://mcp.example.com/MCP"),  # the path is case-sensitive
        ("https://mcp.example.com/mcp", "http://mcp.example.com/mcp"),
        ("https://mcp.example.com/mcp", "https://mcp.example.com:8443/mcp"),
        ("https://mcp.example.com/mcp", "https://mcp.example.com/mcp/tools"),
        ("https://mcp.example.com/mcp", "https://mcp.example.com.evil.example/mcp"),
        ("https://mcp.example.com/mcp", "https://mcp.example.com/mcp?tenant=a"),
        ("http://127.0.0.1:80/mcp", "http://127.0.0.1:8000/mcp"),
    ],
)
def test_different_resources(a: str, b: str) -> None:
    assert not same_resource(a, b) and not same_resource(b, a)


@pytest.mark.parametrize("value", ["fastapps-auth-dev", "api://mcp", "", "https://h:notaport/x", "https://[::1/x"])
def test_what_is_not_a_url_with_a_host_is_compared_as_written(value: str) -> None:
    assert canonical_resource(value) in (value, "api://mcp")
    assert same_resource(value, value)


@given(st.text(max_size=60))
def test_canonical_form_is_stable(text: str) -> None:
    once = canonical_resource(text)
    assert canonical_resource(once) == once


# -- the stage ---------------------------------------------------------------------------------------------


def stage(clock: ManualClock, **options: Any) -> JWTVerifier:
    return JWTVerifier(
        jwks={"keys": [signing_key().jwk()]}, algorithms=["RS256"], issuer_url=ISS, clock=clock, **options
    )


async def decide(st_: JWTVerifier, **claim: Any) -> Any:
    token = signing_key().token(claims(st_.clock.time(), **claim))
    return await VerifierChain(st_, clock=st_.clock).evaluate(token)


@pytest.mark.parametrize(
    "aud",
    [
        RESOURCE,
        RESOURCE + "/",
        "HTTPS://MCP.EXAMPLE.COM:443/mcp",
        ["https://other.example/api", "https://mcp.example.com/mcp/"],
    ],
)
async def test_a_bound_stage_accepts_tokens_for_its_resource(clock: ManualClock, aud: str | list[str]) -> None:
    st_ = stage(clock)
    st_.bind_resource(RESOURCE + "/")
    d = await decide(st_, aud=aud)
    assert d.allowed, d.reason
    assert same_resource(d.access_token.resource, RESOURCE)  # the token's own spelling of it


@pytest.mark.parametrize(
    ("aud", "reason"),
    [
        ("https://other.example/mcp", "wrong_audience"),
        ("https://mcp.example.com/MCP", "wrong_audience"),
        (["https://other.example/mcp", "api://mcp"], "wrong_audience"),
        ([], "wrong_audience"),
        (None, "missing_claim"),
        (5, "bad_claim"),
        ([RESOURCE, 5], "bad_claim"),
    ],
)
async def test_a_bound_stage_refuses_tokens_for_another_resource(clock: ManualClock, aud: Any, reason: str) -> None:
    st_ = stage(clock)
    st_.bind_resource(RESOURCE)
    d = await decide(st_, aud=aud)
    assert (d.allowed, d.reason, d.status) == (False, reason, 401)


async def test_an_explicit_audience_wins_over_the_binding(clock: ManualClock) -> None:
    st_ = stage(clock, audience="api://mcp")
    st_.bind_resource(RESOURCE)
    assert (await decide(st_, aud="api://mcp")).allowed
    assert (await decide(st_, aud=RESOURCE)).reason == "wrong_audience"


async def test_binding_forgets_tokens_cached_before_it(clock: ManualClock) -> None:
    st_ = stage(clock)
    token = signing_key().token(claims(clock.time(), aud="https://other.example/api"))
    chain = VerifierChain(st_, clock=clock)
    assert (await chain.evaluate(token)).allowed  # no audience checked yet
    st_.bind_resource(RESOURCE)
    assert (await chain.evaluate(token)).reason == "wrong_audience"


def test_binding_needs_a_url() -> None:
    with pytest.raises(ConfigError, match="resource URL"):
        stage(ManualClock()).bind_resource("")


async def test_neither_audience_nor_binding_warns_once_at_start(
    clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="fastapps_auth.jwt")
    st_ = stage(clock)
    assert not caplog.records  # not at construction: a host may still bind it
    await st_.start()
    await decide(st_, aud="anything")
    warnings = [r for r in caplog.records if "checks no audience" in r.getMessage()]
    assert len(warnings) == 1


async def test_without_start_the_first_token_warns(clock: ManualClock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="fastapps_auth.jwt")
    st_ = stage(clock)
    await decide(st_, aud="anything")
    await decide(st_, aud="anything", jti="2")
    assert len([r for r in caplog.records if "checks no audience" in r.getMessage()]) == 1


@pytest.mark.parametrize("options", [{"audience": "api://mcp"}, {}])
async def test_no_warning_when_the_audience_is_checked(
    clock: ManualClock, caplog: pytest.LogCaptureFixture, options: dict[str, Any]
) -> None:
    caplog.set_level(logging.WARNING, logger="fastapps_auth.jwt")
    st_ = stage(clock, **options)
    if not options:
        st_.bind_resource(RESOURCE)
    await st_.start()
    await decide(st_, aud="api://mcp")
    assert not [r for r in caplog.records if "checks no audience" in r.getMessage()]


async def test_starting_twice_still_warns_once(clock: ManualClock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="fastapps_auth.jwt")
    st_ = stage(clock)
    await st_.start()
    await st_.start()
    assert len([r for r in caplog.records if "checks no audience" in r.getMessage()]) == 1


async def test_a_chain_passes_the_binding_to_nested_chains_and_alternatives(clock: ManualClock) -> None:
    from fastapps_auth import AnyOf

    direct, nested, alternative = stage(clock), stage(clock), stage(clock)
    chain = VerifierChain(direct, clock=clock)
    outer = VerifierChain(AnyOf(VerifierChain(nested, clock=clock), alternative, clock=clock), clock=clock)
    chain.bind_resource(RESOURCE)
    outer.bind_resource(RESOURCE)
    for st_ in (direct, nested, alternative):
        assert (await decide(st_, aud="https://other.example/mcp")).reason == "wrong_audience"
        assert (await decide(st_, aud=RESOURCE)).allowed
