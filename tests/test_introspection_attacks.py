"""Attacks on the introspection stage: a misbehaving authorization server, odd-but-legal answers and tokens,
composition with a jwt stage, and a shared cache written by someone else. None may be accepted.

Each test started as a failing one (or pins a defence that held); see docs/security.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hst

from fastapps_auth import ConfigError, VerifierChain
from fastapps_auth.stages.introspection import IntrospectionStage
from tests.support.introspection import GOOD, SECRET, evaluate
from tests.support.introspection import stage_at as stage
from tests.support.jwks_server import JWKSServer


@pytest.fixture
def srv() -> Iterator[JWKSServer]:
    with JWKSServer() as server:
        yield server


async def until(predicate: Any) -> bool:
    """Poll ``predicate`` for up to 5 s without blocking the event loop (a bounded wait, not a timed assertion)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(5):
            while not predicate():  # noqa: ASYNC110 - the server's threads count, polled
                await asyncio.sleep(0.01)
    return bool(predicate())


# -- what the answer says --------------------------------------------------------------------------


BROKEN: list[tuple[str, bytes]] = [
    ("duplicate active, inactive first", b'{"active":false,"active":true,"sub":"alice","aud":"api"}'),
    ("duplicate sub", b'{"active":true,"sub":"alice","sub":"admin","aud":"api"}'),
    ("duplicate member in cnf", b'{"active":true,"sub":"a","aud":"api","cnf":{"jkt":"x","jkt":"y"}}'),
    ("lone surrogate in sub", b'{"active":true,"sub":"al\\ud800ice","aud":"api"}'),
    ("lone surrogate in a name", b'{"active":true,"sub":"alice","aud":"api","\\udfff":1}'),
    ("lone surrogate in aud list", b'{"active":true,"sub":"alice","aud":["api","\\ud800"]}'),
    ("active null", b'{"active":null,"sub":"alice","aud":"api"}'),
    ("aud nested list", b'{"active":true,"sub":"alice","aud":[["api"]]}'),
    ("aud an object", b'{"active":true,"sub":"alice","aud":{"api":true}}'),
    ("exp a huge integer", b'{"active":true,"sub":"alice","aud":"api","exp":' + b"9" * 40 + b"}"),
    ("nbf a string", b'{"active":true,"sub":"alice","aud":"api","nbf":"now"}'),
    ("cnf a string", b'{"active":true,"sub":"alice","aud":"api","cnf":"jkt"}'),
    ("cnf.jkt a number", b'{"active":true,"sub":"alice","aud":"api","cnf":{"jkt":5}}'),
    ("auth_time a boolean", b'{"active":true,"sub":"alice","aud":"api","auth_time":true}'),
    ("iat NaN-like string", b'{"active":true,"sub":"alice","aud":"api","iat":"NaN"}'),
    ("sub empty", b'{"active":true,"sub":"","client_id":"app","aud":"api"}'),
]


@pytest.mark.parametrize("aud", [{"api": True}, [["api"]], 5, ["api", None]], ids=str)
async def test_a_malformed_aud_is_503_even_when_no_audience_is_checked(srv: JWKSServer, aud: Any) -> None:
    srv.set_json("/introspect", {**GOOD, "aud": aud})
    st = stage(srv.url + "/introspect", audience=None)
    assert (await evaluate(st, "tok")).status == 503
    await st.aclose()


async def test_an_empty_aud_list_is_for_no_one(srv: JWKSServer) -> None:
    srv.set_json("/introspect", {**GOOD, "aud": []})
    st = stage(srv.url + "/introspect")
    assert (await evaluate(st, "tok")).reason == "wrong_audience"
    await st.aclose()


@pytest.mark.parametrize("on_error", ["allow", "local"])
def test_the_stage_cannot_fail_open(on_error: str) -> None:
    for mode in ("authenticate", "check"):
        with pytest.raises(ConfigError) as err:
            stage("https://as.example/introspect", on_error=on_error, mode=mode)
        assert err.value.location.key == "on_error"


@pytest.mark.parametrize("body", [b for _, b in BROKEN], ids=[n for n, _ in BROKEN])
async def test_an_ambiguous_or_unencodable_answer_is_503_never_a_decision(srv: JWKSServer, body: bytes) -> None:
    srv.set_raw("/introspect", body)
    st = stage(srv.url + "/introspect")
    d = await evaluate(st, "tok")
    assert (d.allowed, d.status) == (False, 503), d.reason
    await st.aclose()


def test_an_escaped_surrogate_pair_is_one_character_and_fine() -> None:
    assert json.loads('"\\ud83d\\ude00"') == "\U0001f600"


async def test_a_well_formed_answer_with_an_escaped_pair_is_accepted(srv: JWKSServer) -> None:
    srv.set_raw("/introspect", b'{"active":true,"sub":"al\\ud83d\\ude00","aud":"api"}')
    st = stage(srv.url + "/introspect")
    d = await evaluate(st, "tok")
    assert d.allowed and d.access_token is not None and d.access_token.subject == "al\U0001f600"
    await st.aclose()


@pytest.mark.parametrize(
    "answer",
    [
        {"token_type": "refresh"},
        {"token_type": "Refresh_Token"},
        {"token_type": "urn:ietf:params:oauth:token-type:refresh_token"},
        {"token_type": "id_token"},
        {"token_type": "urn:ietf:params:oauth:token-type:id_token"},
        {"typ": "Refresh"},  # Keycloak
        {"typ": "Offline"},  # Keycloak's offline refresh token
        {"typ": "ID"},  # Keycloak's ID token
    ],
    ids=str,
)
async def test_a_token_that_is_not_an_access_token_is_refused(srv: JWKSServer, answer: dict[str, Any]) -> None:
    srv.set_json("/introspect", {**GOOD, **answer})
    st = stage(srv.url + "/introspect")
    d = await evaluate(st, "tok")
    assert (d.allowed, d.status, d.reason) == (False, 401, "wrong_token_type")
    await st.aclose()


@pytest.mark.parametrize("token_type", ["Bearer", "bearer", "DPoP", "N_A", "access_token"])
async def test_access_token_types_are_accepted(srv: JWKSServer, token_type: str) -> None:
    srv.set_json("/introspect", {**GOOD, "token_type": token_type, "typ": "Bearer"})
    st = stage(srv.url + "/introspect")
    assert (await evaluate(st, "tok")).allowed
    await st.aclose()


@pytest.mark.parametrize("sep", ["\u00a0", "\u2028", "\t", "\n", "\x1f", "\u3000"])
async def test_scope_is_split_on_spaces_only(srv: JWKSServer, sep: str) -> None:
    """RFC 7662 §2.2: space-separated. "read<NBSP>admin" is one (odd) scope, not a grant of admin."""
    srv.set_json("/introspect", {**GOOD, "scope": f"read{sep}admin"})
    st = stage(srv.url + "/introspect", required_scopes=["admin"])
    d = await evaluate(st, "tok")
    assert (d.allowed, d.status, d.reason) == (False, 403, "insufficient_scope")
    await st.aclose()


async def test_scope_with_several_spaces_is_still_split(srv: JWKSServer) -> None:
    srv.set_json("/introspect", {**GOOD, "scope": "  read   admin "})
    st = stage(srv.url + "/introspect", required_scopes=["admin"])
    d = await evaluate(st, "tok")
    assert d.allowed and d.access_token is not None and d.access_token.scopes == ["read", "admin"]
    await st.aclose()


async def test_an_iss_differing_by_a_slash_or_case_is_another_issuer(srv: JWKSServer) -> None:
    for iss in ("https://as.example/", "https://AS.example", "https://as.example/x"):
        srv.set_json("/introspect", {**GOOD, "iss": iss})
        st = stage(srv.url + "/introspect", issuer_url="https://as.example")
        assert (await evaluate(st, "tok")).reason == "wrong_issuer", iss
        await st.aclose()


# -- what the token looks like ---------------------------------------------------------------------


@pytest.mark.parametrize("token", ["\ud800abc", "a\x00b", "a b", "caf\u00e9", "a\nb", "=abc", "a=b"])
async def test_a_token_that_is_not_a_bearer_token_is_refused_without_a_request(srv: JWKSServer, token: str) -> None:
    srv.set_json("/introspect", GOOD)
    st = stage(srv.url + "/introspect")
    d = await evaluate(st, token)
    assert (d.allowed, d.status, d.reason) == (False, 401, "malformed")
    assert srv.count("/introspect") == 0
    assert await VerifierChain(st).verify_token(token) is None
    await st.aclose()


@pytest.mark.parametrize(
    "token", ["abc", "A-._~+/9", "gho_16C7e42F292c6912E7710c838347Ae178B4a", "YWJj==", "v2.local.x"]
)
async def test_rfc_6750_tokens_are_introspected(srv: JWKSServer, token: str) -> None:
    srv.set_json("/introspect", GOOD)
    st = stage(srv.url + "/introspect")
    assert (await evaluate(st, token)).allowed
    await st.aclose()


B64TOKEN_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/"


@settings(max_examples=150, deadline=None)
@given(hst.text(max_size=40) | hst.text(alphabet=B64TOKEN_CHARS + "= ", min_size=1, max_size=40))
def test_any_string_is_answered_and_only_bearer_tokens_are_sent(token: str) -> None:
    async def decide() -> tuple[int, str | None, object]:
        st = stage("http://127.0.0.1:9/introspect", timeout=1.0)  # the discard port: nothing answers
        chain = VerifierChain(st)
        d = await chain.evaluate(token)
        at = await chain.verify_token(token)
        await chain.aclose()
        return d.status, d.reason, at

    status, reason, at = asyncio.run(decide())
    assert at is None
    bearer = re.fullmatch(r"[A-Za-z0-9\-._~+/]+=*", token) is not None
    if not token:
        assert reason == "missing_token"
    elif bearer:
        assert status == 503, "sent (and the endpoint is down)"
    else:
        assert (status, reason) == (401, "malformed"), "refused without a request"


# -- HTTP ---------------------------------------------------------------------------------------------


async def test_a_redirect_is_not_followed_and_the_credentials_stay_home(srv: JWKSServer) -> None:
    with JWKSServer() as other:
        other.set_json("/steal", GOOD)
        for status in (301, 302, 303, 307, 308):
            srv.routes["/introspect"] = (status, b"{}", {"Location": other.url + "/steal"})
            st = stage(srv.url + "/introspect")
            assert (await evaluate(st, "tok")).status == 503
            await st.aclose()
        assert other.total == 0


async def test_an_endless_dripping_body_is_cut_by_the_one_time_limit(srv: JWKSServer) -> None:
    srv.set_json("/introspect", {**GOOD, "pad": "x" * 5000})
    srv.drip = 0.01
    st = stage(srv.url + "/introspect", timeout=0.5)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    d = await evaluate(st, "tok")
    assert d.status == 503 and loop.time() - t0 < 2.0
    await st.aclose()


async def test_a_gzip_bomb_costs_no_more_than_the_size_bound(srv: JWKSServer, caplog: pytest.LogCaptureFixture) -> None:
    bomb = gzip.compress(b'{"active":true,"pad":"' + b"x" * (50 << 20) + b'"}')
    srv.routes["/introspect"] = (200, bomb, {"Content-Encoding": "gzip"})
    st = stage(srv.url + "/introspect")
    d = await evaluate(st, "tok")
    assert d.status == 503
    assert any("larger than 65536 bytes" in r.getMessage() for r in caplog.records)
    await st.aclose()


async def test_an_endless_chunked_body_is_cut_at_the_size_bound() -> None:
    """No Content-Length, chunks as fast as the socket takes them: the client stops reading at the bound."""
    sent = 0

    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        writer.write(b'10\r\n{"active":true,"\r\n')
        chunk = b"2000\r\n" + b"x" * 0x2000 + b"\r\n"
        with contextlib.suppress(ConnectionError):
            for _ in range(10_000):  # 80 MiB at most, should the client never hang up
                writer.write(chunk)
                await writer.drain()
                sent += 1
        writer.close()

    server = await asyncio.start_server(endless, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    st = stage(f"http://127.0.0.1:{port}/introspect", timeout=5.0)
    d = await evaluate(st, "tok")
    assert d.status == 503
    await st.aclose()
    server.close()
    await server.wait_closed()
    assert sent < 1000, "the client hung up soon after its bound, not at the server's cap"


async def test_closing_the_stage_ends_a_lookup_in_flight_at_once(srv: JWKSServer) -> None:
    srv.hang = True
    st = stage(srv.url + "/introspect", timeout=30.0)
    chain = VerifierChain(st)
    pending = asyncio.ensure_future(chain.evaluate("tok"))
    assert await until(lambda: srv.count("/introspect") == 1)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await chain.aclose()
    d = await asyncio.wait_for(pending, 5)
    assert d.status == 503 and loop.time() - t0 < 5


async def test_a_200_with_html_is_503(srv: JWKSServer) -> None:
    srv.set_raw("/introspect", b"<!doctype html><title>Sign in</title>")
    st = stage(srv.url + "/introspect")
    assert (await evaluate(st, "tok")).status == 503
    await st.aclose()


async def test_introspection_requests_in_flight_are_bounded(srv: JWKSServer) -> None:
    """300 distinct tokens at once open at most ``max_connections`` connections to the server."""
    srv.hang = True
    st = stage(srv.url + "/introspect", max_connections=4, timeout=2.0)
    chain = VerifierChain(st)
    tasks = [asyncio.ensure_future(chain.evaluate(f"tok-{i}")) for i in range(300)]
    assert await until(lambda: srv.count("/introspect") >= 4)
    await asyncio.sleep(0.3)  # room for more to arrive, were they not bounded
    assert srv.count("/introspect") == 4
    decisions = await asyncio.gather(*tasks)
    assert {d.status for d in decisions} == {503}
    await chain.aclose()


def test_max_connections_must_be_positive() -> None:
    with pytest.raises(ConfigError):
        stage("https://as.example/introspect", max_connections=0)


# -- the endpoint URL ----------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["https://rs:pw@as.example/introspect", "https://rs@as.example/introspect"])
def test_a_configured_endpoint_with_userinfo_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError) as err:
        IntrospectionStage(introspection_url=url, client_id="rs", client_secret=SECRET)
    assert "pw" not in str(err.value)


async def test_a_discovered_endpoint_with_userinfo_is_refused(srv: JWKSServer) -> None:
    issuer = srv.url
    srv.set_json(
        "/.well-known/openid-configuration",
        {"issuer": issuer, "introspection_endpoint": f"http://rs:leak@127.0.0.1:{srv.port}/introspect"},
    )
    srv.set_json("/introspect", GOOD)
    st = IntrospectionStage(issuer_url=issuer, client_id="rs", client_secret=SECRET, audience="api")
    d = await evaluate(st, "tok")
    assert d.status == 503 and "leak" not in (d.description or "")
    assert srv.count("/introspect") == 0
    await st.aclose()


async def test_a_discovered_endpoint_issuer_that_differs_by_a_slash_is_refused(srv: JWKSServer) -> None:
    srv.set_json(
        "/.well-known/openid-configuration", {"issuer": srv.url + "/", "introspection_endpoint": srv.url + "/i"}
    )
    srv.set_json("/i", GOOD)
    st = IntrospectionStage(issuer_url=srv.url, client_id="rs", client_secret=SECRET, audience="api")
    assert (await evaluate(st, "tok")).status == 503
    assert srv.count("/i") == 0
    await st.aclose()


# -- secrets and tokens never shown -------------------------------------------------------------------


@pytest.mark.parametrize("auth_method", ["client_secret_basic", "client_secret_post"])
async def test_neither_the_secret_nor_the_token_appears_anywhere(
    srv: JWKSServer, caplog: pytest.LogCaptureFixture, auth_method: str
) -> None:
    token = "tok-SENSITIVE-9f8e7d"
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    for status, body in ((401, b'{"error":"invalid_client"}'), (200, b"garbage"), (200, json.dumps(GOOD).encode())):
        srv.set_raw("/introspect", body, status=status)
        st = stage(srv.url + "/introspect", auth_method=auth_method, cache_ttl=0)
        d = await evaluate(st, token)
        seen += [repr(d), str(d), d.description or "", repr(st), repr(st.options), str(st.options.model_dump())]
        seen += [json.dumps(t.as_dict()) for t in d.trace]
        if d.access_token is not None:
            seen += [repr(d.access_token), str(d.access_token)]
        await st.aclose()
    seen += [r.getMessage() for r in caplog.records] + [str(r.exc_info) for r in caplog.records]
    text = "\n".join(seen)
    assert SECRET not in text and token not in text


# -- lifecycle ---------------------------------------------------------------------------------------


async def test_a_closed_stage_is_503_and_verify_token_is_none(srv: JWKSServer) -> None:
    srv.set_json("/introspect", GOOD)
    st = stage(srv.url + "/introspect")
    chain = VerifierChain(st)
    assert (await chain.evaluate("tok")).allowed
    await chain.aclose()
    assert (await chain.evaluate("tok")).status == 503
    assert await chain.verify_token("tok") is None
