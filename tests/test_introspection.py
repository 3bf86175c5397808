"""The introspection stage against the real dev issuer on 127.0.0.1: what each answer becomes.

Active, inactive, revoked, expired, wrong audience, wrong issuer, scopes, refresh tokens, both
client authentication methods, discovery, and the configuration errors said at construction.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from fastapps_auth import ConfigError, VerifierChain, chain_from_config
from fastapps_auth.cli import app
from fastapps_auth.dev_issuer import RunningIssuer
from fastapps_auth.stages.introspection import IntrospectionStage
from tests.support.dev_oauth import Flow, register
from tests.support.introspection import evaluate, now_clock, opaque_issuer, requests, stage
from tests.support.jwks_server import JWKSServer


@pytest.fixture
def issuer() -> Iterator[RunningIssuer]:
    with opaque_issuer() as running:
        yield running


async def test_an_active_opaque_token_becomes_the_access_token_with_the_answers_claims(issuer: RunningIssuer) -> None:
    st = stage(issuer)
    token = issuer.mint_opaque("alice", scopes=["read", "write"], client_id="app-1")
    d = await evaluate(st, token)
    assert d.allowed, d.reason
    at = d.access_token
    assert at is not None
    assert (at.subject, at.client_id, at.scopes, at.resource) == ("alice", "app-1", ["read", "write"], issuer.audience)
    assert at.claims is not None and at.claims["iss"] == issuer.url and at.claims["active"] is True
    assert at.expires_at == at.claims["exp"]
    await st.aclose()


async def test_an_unknown_token_is_inactive_401(issuer: RunningIssuer) -> None:
    st = stage(issuer)
    d = await evaluate(st, "not-a-token-this-issuer-knows")
    assert (d.allowed, d.status, d.error, d.reason, d.stage) == (
        False,
        401,
        "invalid_token",
        "inactive",
        "introspection",
    )
    await st.aclose()


async def test_a_revoked_token_is_refused_once_its_cached_answer_is_gone(issuer: RunningIssuer) -> None:
    clock = now_clock()
    st = stage(issuer, clock=clock, cache_ttl=30)
    token = issuer.mint_opaque("alice")
    assert (await evaluate(st, token, clock)).allowed
    assert issuer.revoke(token)
    d = await evaluate(st, token, clock)
    assert d.allowed and d.trace[0].cache_hit, "within cache_ttl the cached answer stands (documented trade-off)"
    clock.advance(30)
    d = await evaluate(st, token, clock)
    assert (d.allowed, d.reason, d.trace[0].cache_hit) == (False, "inactive", False)
    await st.aclose()


async def test_an_answer_whose_exp_has_passed_on_this_servers_clock_is_expired(issuer: RunningIssuer) -> None:
    clock = now_clock()
    st = stage(issuer, clock=clock, cache_ttl=0)
    token = issuer.mint_opaque("alice", lifetime=120)  # the issuer (real clock) still says active
    clock.advance(121)
    d = await evaluate(st, token, clock)
    assert (d.allowed, d.status, d.reason) == (False, 401, "expired")
    await st.aclose()


async def test_a_positive_answer_is_cached_no_longer_than_the_tokens_exp(issuer: RunningIssuer) -> None:
    clock = now_clock()
    st = stage(issuer, clock=clock, cache_ttl=600)
    token = issuer.mint_opaque("alice", lifetime=100)
    assert (await evaluate(st, token, clock)).allowed
    clock.advance(99)
    assert (await evaluate(st, token, clock)).trace[0].cache_hit
    clock.advance(2)
    d = await evaluate(st, token, clock)
    assert d.trace[0].cache_hit is False and not d.allowed  # asked again: the issuer now says inactive
    await st.aclose()


async def test_a_token_for_another_audience_is_refused(issuer: RunningIssuer) -> None:
    st = stage(issuer, audience=["https://mcp.example.com/mcp", "other-api"])
    d = await evaluate(st, issuer.mint_opaque("alice"))
    assert (d.allowed, d.status, d.reason) == (False, 401, "wrong_audience")
    ok = await evaluate(st, issuer.mint_opaque("alice", audience=["x", "other-api"]))
    assert ok.allowed and ok.access_token is not None and ok.access_token.resource == "other-api"
    await st.aclose()


async def test_an_answer_from_another_issuer_is_refused(issuer: RunningIssuer) -> None:
    st = stage(issuer, issuer_url="https://issuer.example.com", introspection_url=issuer.introspection_endpoint)
    d = await evaluate(st, issuer.mint_opaque("alice"))
    assert (d.allowed, d.status, d.reason) == (False, 401, "wrong_issuer")
    await st.aclose()


async def test_required_scopes_missing_is_403_with_the_scope(issuer: RunningIssuer) -> None:
    st = stage(issuer, required_scopes=["read", "admin"])
    d = await evaluate(st, issuer.mint_opaque("alice", scopes=["read"]))
    assert (d.allowed, d.status, d.error) == (False, 403, "insufficient_scope")
    assert (await evaluate(st, issuer.mint_opaque("bob", scopes=["admin", "read"]))).allowed
    await st.aclose()


async def test_a_refresh_token_is_not_an_access_token() -> None:
    with opaque_issuer(auto_login="alice") as issuer:
        tokens = Flow(issuer, register(issuer)).tokens()
        st = stage(issuer, audience=None)
        assert (await evaluate(st, tokens["access_token"])).allowed
        d = await evaluate(st, tokens["refresh_token"])
        await st.aclose()
    assert (d.allowed, d.reason) == (False, "wrong_token_type")


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
async def test_both_client_authentication_methods_work_against_the_issuer(issuer: RunningIssuer, method: str) -> None:
    st = stage(issuer, auth_method=method)
    assert (await evaluate(st, issuer.mint_opaque("alice"))).allowed
    await st.aclose()


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
async def test_the_request_carries_the_credentials_the_method_names_and_the_hint(method: str) -> None:
    with JWKSServer() as srv:
        srv.set_json("/introspect", {"active": False})
        st = IntrospectionStage(
            introspection_url=srv.url + "/introspect", client_id="rs 1", client_secret="s:é", auth_method=method
        )
        await evaluate(st, "tok")
        await st.aclose()
        form = httpx.QueryParams(srv.request_bodies[0].decode())
        header = srv.request_headers[0].get("authorization")
    assert form["token"] == "tok" and form["token_type_hint"] == "access_token"
    if method == "client_secret_basic":
        assert header == httpx.BasicAuth("rs%201", "s%3A%C3%A9")._auth_header and "client_secret" not in form
    else:
        assert header is None and (form["client_id"], form["client_secret"]) == ("rs 1", "s:é")


async def test_a_wrong_client_secret_is_a_transient_failure_not_a_refusal_of_the_token(issuer: RunningIssuer) -> None:
    st = stage(issuer, client_secret="wrong")
    d = await evaluate(st, issuer.mint_opaque("alice"))
    assert (d.allowed, d.status, d.error) == (False, 503, "temporarily_unavailable")
    await st.aclose()


async def test_the_endpoint_is_discovered_once_from_the_issuers_metadata(issuer: RunningIssuer) -> None:
    st = stage(issuer)
    for _ in range(3):
        assert (await evaluate(st, issuer.mint_opaque("alice"))).allowed
    assert requests(st) == 1 + 3  # one metadata fetch, then one introspection per distinct token
    await st.aclose()


async def test_metadata_naming_another_issuer_is_not_trusted() -> None:
    with JWKSServer() as srv:
        srv.set_json(
            "/.well-known/openid-configuration",
            {"issuer": "https://evil.example", "introspection_endpoint": srv.url + "/introspect"},
        )
        srv.set_json("/introspect", {"active": True, "sub": "x"})
        st = IntrospectionStage(issuer_url=srv.url, client_id="c", client_secret="s")
        d = await evaluate(st, "tok")
        await st.aclose()
        assert srv.count("/introspect") == 0
    assert (d.allowed, d.status) == (False, 503)


async def test_probe_reaches_the_endpoint_with_the_clients_credentials(issuer: RunningIssuer) -> None:
    good = stage(issuer)
    await good.probe()
    bad = stage(issuer, client_secret="wrong")
    with pytest.raises(Exception, match="401"):
        await bad.probe()
    await good.aclose()
    await bad.aclose()


async def test_a_closed_stage_refuses_with_503(issuer: RunningIssuer) -> None:
    st = stage(issuer)
    chain = VerifierChain(st)
    await chain.aclose()
    d = await VerifierChain(st).evaluate(issuer.mint_opaque("alice"))
    assert (d.allowed, d.status, d.reason) == (False, 503, "closed")


async def test_no_audience_and_no_binding_warns_once_at_start(
    issuer: RunningIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    st = stage(issuer, audience=None)
    with caplog.at_level(logging.WARNING, logger="fastapps_auth.introspection"):
        await st.start()
        await evaluate(st, issuer.mint_opaque("alice"))
    assert sum("checks no audience" in r.getMessage() for r in caplog.records) == 1
    await st.aclose()


def test_config_from_toml_reads_the_secret_from_the_environment(issuer: RunningIssuer) -> None:
    chain = chain_from_config(
        {
            "stages": [
                {
                    "use": "introspection",
                    "issuer_url": issuer.url,
                    "client_id": issuer.client.client_id,
                    "client_secret": "${RS_SECRET}",
                }
            ]
        },
        env={"RS_SECRET": issuer.client.secret},
    )
    st = chain.stages[0]
    assert isinstance(st, IntrospectionStage)
    assert st.options.client_secret.get_secret_value() == issuer.client.secret
    assert issuer.client.secret not in repr(st.options)


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"on_error": "allow"}, "on_error"),
        ({"mode": "check", "on_error": "allow"}, "on_error"),
        ({"introspection_url": None, "issuer_url": None}, "issuer_url"),
        ({"introspection_url": "http://auth.example.com/introspect"}, "introspection_url"),
        ({"cache": "memcached://x"}, "cache"),
        ({"cache": "redis://cache.example.com:6379"}, "cache"),
        ({"audience": []}, "audience"),
        ({"client_secret": ""}, "client_secret"),
        ({"auth_method": "private_key_jwt"}, "auth_method"),
        ({"enforce": False}, "enforce"),
    ],
)
def test_configuration_errors_name_the_key(options: dict[str, Any], key: str) -> None:
    base: dict[str, Any] = {"introspection_url": "https://auth.example.com/introspect", "client_id": "c"}
    base["client_secret"] = "s"
    with pytest.raises(ConfigError) as info:
        IntrospectionStage(**{**base, **options})
    assert info.value.location.key == key


def test_check_connect_probes_the_endpoint_and_names_a_failure(issuer: RunningIssuer, tmp_path: Path) -> None:
    def config(secret: str) -> Path:
        path = tmp_path / "auth.toml"
        path.write_text(
            '[[stages]]\nuse = "introspection"\n'
            f'issuer_url = "{issuer.url}"\nclient_id = "{issuer.client.client_id}"\nclient_secret = "{secret}"\n'
        )
        return path

    runner = CliRunner()
    ok = runner.invoke(app, ["check", "--connect", str(config(issuer.client.secret))])
    assert ok.exit_code == 0, ok.output
    bad = runner.invoke(app, ["check", "--connect", str(config("wrong-secret"))])
    assert bad.exit_code == 2
    assert "introspection" in bad.output and "401" in bad.output
    assert "wrong-secret" not in bad.output
