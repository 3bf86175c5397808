"""The pytest plugin's fixtures, used the way a user's suite uses them."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from importlib.metadata import entry_points

import httpx
import pytest

from fastapps_auth import VerifierChain
from fastapps_auth.clock import ManualClock
from fastapps_auth.dev_issuer import RunningIssuer
from fastapps_auth.testing import Minter, issuer_chain


async def test_auth_chain_accepts_a_minted_token(auth_chain: VerifierChain, mint: Minter) -> None:
    decision = await auth_chain.evaluate(mint("alice", scopes=["read", "write"], claims={"tenant": "acme"}))
    assert decision.allowed, decision.reason
    at = decision.access_token
    assert at is not None
    assert at.subject == "alice" and at.scopes == ["read", "write"]
    assert at.claims is not None and at.claims["tenant"] == "acme"


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
async def test_both_algorithms_verify(auth_chain: VerifierChain, mint: Minter, alg: str) -> None:
    assert await auth_chain.verify_token(mint("bob", alg=alg)) is not None


async def test_expired_not_yet_valid_and_tampered_are_rejected(
    auth_chain: VerifierChain, mint: Minter, expired_token: str, not_yet_valid_token: str
) -> None:
    expired = await auth_chain.evaluate(expired_token)
    assert (expired.allowed, expired.status, expired.stage, expired.reason) == (False, 401, "jwt", "expired")
    early = await auth_chain.evaluate(not_yet_valid_token)
    assert not early.allowed and early.status == 401 and early.reason is not None and "not" in early.reason
    tampered = await auth_chain.evaluate(mint.tampered("carol"))
    assert not tampered.allowed and tampered.reason == "bad_signature"
    assert not (await auth_chain.evaluate(mint.expired("dave", ago=3600))).allowed
    assert not (await auth_chain.evaluate(mint.not_yet_valid("dave", starts_in=3600))).allowed


async def test_wrong_audience_is_rejected(auth_chain: VerifierChain, mint: Minter) -> None:
    decision = await auth_chain.evaluate(mint("erin", audience="someone-else"))
    assert not decision.allowed and decision.status == 401


async def test_rotation_old_tokens_verify_in_grace_new_tokens_verify_too(
    auth_chain: VerifierChain, mint: Minter, rotate_keys: Callable[..., list[str]]
) -> None:
    before = mint("frank")
    assert await auth_chain.verify_token(before) is not None
    rotate_keys(grace=3600)
    after = mint("frank", claims={"n": 2})
    assert await auth_chain.verify_token(after) is not None  # unknown kid: the chain refetches the JWKS
    assert await auth_chain.verify_token(before) is not None


@pytest.fixture
def dev_issuer_audience() -> str:
    """Overriding the audience fixture changes both the tokens and the chain (as a user's conftest would)."""
    return "https://mcp.example.test/mcp"


async def test_overridden_audience_flows_to_tokens_and_chain(
    dev_issuer: RunningIssuer, auth_chain: VerifierChain, mint: Minter
) -> None:
    assert dev_issuer.audience == "https://mcp.example.test/mcp"
    at = await auth_chain.verify_token(mint("gina"))
    assert at is not None and at.claims is not None and at.claims["aud"] == "https://mcp.example.test/mcp"


async def test_issuer_chain_with_an_injected_clock_and_more_stages(dev_issuer: RunningIssuer) -> None:
    from fastapps_auth.stages.scopes import ScopesStage

    clock = ManualClock(1_800_000_000)
    token = dev_issuer.mint("hank", scopes=["read"], issued_at=clock.time(), lifetime=600)
    async with issuer_chain(dev_issuer, ScopesStage(required=["read"]), clock=clock) as chain:
        assert (await chain.evaluate(token)).allowed
        no_scope = await chain.evaluate(dev_issuer.mint("hank", issued_at=clock.time(), lifetime=600))
        assert (no_scope.status, no_scope.stage) == (403, "scopes")
        clock.advance(600 + 31)  # past exp and the default 30 s leeway, without sleeping
        late = await chain.evaluate(token)
        assert (late.allowed, late.reason) == (False, "expired")


def test_dev_issuer_fixture_serves_discovery_and_a_token_endpoint(dev_issuer: RunningIssuer) -> None:
    meta = httpx.get(f"{dev_issuer.url}/.well-known/openid-configuration").json()
    assert meta["issuer"] == dev_issuer.url
    r = httpx.post(
        dev_issuer.token_endpoint,
        data={"grant_type": "client_credentials", "scope": "read"},
        auth=(dev_issuer.client.client_id, dev_issuer.client.secret),
    )
    assert r.status_code == 200 and r.json()["scope"] == "read"


def test_plugin_is_registered_and_loaded() -> None:
    eps = {ep.name: ep.value for ep in entry_points(group="pytest11")}
    assert eps.get("fastapps_auth") == "fastapps_auth.testing.plugin"


def test_importing_the_plugin_is_cheap() -> None:
    """pytest imports the plugin in every run: it must not pull in the issuer, keys or a web server."""
    code = (
        "import sys, fastapps_auth.testing.plugin as p; "
        "heavy = [m for m in ('fastapps_auth.dev_issuer', 'joserfc', 'fastapps_auth.stages.jwt') "
        "if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
