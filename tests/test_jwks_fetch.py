"""The bounded JSON-over-HTTP client that key sets, introspection and token exchange share, against a real
HTTP server on 127.0.0.1: the endpoint policy before any request, GET and form POST, accepted statuses,
one-line errors that never hold a header or a form value, and nothing opened once closed."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import parse_qs

import pytest

from fastapps_auth.backends.http_json import FetchError, JSONClient
from tests.support.jwks_server import JWKSServer

SECRET = "client-secret-value"


async def test_get_returns_status_data_and_headers(srv: JWKSServer) -> None:
    srv.set_json("/meta", {"issuer": "x", "n": [1, 2]}, cache_control="max-age=60")
    http = JSONClient(timeout=2.0, max_bytes=4096)
    resp = await http.get(srv.url + "/meta")
    assert (resp.status, resp.data, resp.headers["cache-control"]) == (200, {"issuer": "x", "n": [1, 2]}, "max-age=60")
    assert http.requests == 1
    await http.aclose()


async def test_post_form_sends_the_form_and_headers(srv: JWKSServer) -> None:
    srv.set_json("/introspect", {"active": True})
    http = JSONClient(timeout=2.0, max_bytes=4096, keepalive=True)
    resp = await http.post_form(
        srv.url + "/introspect",
        {"token": "abc", "token_type_hint": "access_token"},
        headers={"Authorization": f"Basic {SECRET}"},
    )
    assert resp.data == {"active": True}
    assert parse_qs(srv.request_bodies[-1].decode()) == {"token": ["abc"], "token_type_hint": ["access_token"]}
    sent = srv.request_headers[-1]
    assert sent["authorization"] == f"Basic {SECRET}"
    assert sent["content-type"] == "application/x-www-form-urlencoded"
    await http.aclose()


async def test_an_accepted_error_status_returns_its_json(srv: JWKSServer) -> None:
    """An OAuth error answer (HTTP 400 with a JSON body) is returned when the caller accepts 400."""
    srv.set_json("/token", {"error": "invalid_grant"}, status=400)
    http = JSONClient(timeout=2.0, max_bytes=4096)
    resp = await http.post_form(srv.url + "/token", {"grant_type": "x"}, accept=(200, 400))
    assert (resp.status, resp.data) == (400, {"error": "invalid_grant"})
    with pytest.raises(FetchError, match="answered HTTP 400") as info:
        await http.post_form(srv.url + "/token", {"grant_type": "x"})
    assert info.value.status == 400
    await http.aclose()


@pytest.mark.parametrize(
    ("url", "loopback_http", "match"),
    [
        ("http://keys.example/jwks.json", True, "https"),
        ("http://127.attacker.example/jwks.json", True, "https"),
        ("ftp://127.0.0.1/jwks.json", True, "https"),
        ("http://127.0.0.1:9/jwks.json", False, "not on loopback"),
    ],
)
async def test_the_endpoint_policy_is_checked_before_any_request(url: str, loopback_http: bool, match: str) -> None:
    http = JSONClient(timeout=2.0, max_bytes=4096)
    with pytest.raises(FetchError, match=match):
        await http.get(url, loopback_http=loopback_http)
    assert http.requests == 0 and http._client is None
    await http.aclose()


@pytest.mark.parametrize(
    ("body", "status", "match"),
    [
        (b"not json", 200, "not valid JSON"),
        (b'{"x": NaN}', 200, "not valid JSON"),
        (b'{"x": 1}', 503, "answered HTTP 503"),
        (b"x" * 5000, 200, "larger than 4096 bytes"),
    ],
)
async def test_failures_are_one_line_and_hold_no_secret(srv: JWKSServer, body: bytes, status: int, match: str) -> None:
    srv.set_raw("/x", body, status=status)
    http = JSONClient(timeout=2.0, max_bytes=4096)
    with pytest.raises(FetchError, match=match) as info:
        await http.post_form(srv.url + "/x", {"client_secret": SECRET}, headers={"Authorization": SECRET})
    message = str(info.value)
    assert "\n" not in message and SECRET not in message and srv.url + "/x" in message
    await http.aclose()


async def test_unreachable_and_slow_servers(srv: JWKSServer) -> None:
    http = JSONClient(timeout=0.3, max_bytes=4096)
    with pytest.raises(FetchError, match=r"unreachable \(ConnectError\)"):
        await http.get("http://127.0.0.1:9/x")
    srv.hang = True
    with pytest.raises(FetchError, match=r"no answer within 0.3s"):
        await asyncio.wait_for(http.get(srv.url + "/x"), 10)
    await http.aclose()


async def test_redirects_are_not_followed(srv: JWKSServer) -> None:
    srv.routes["/x"] = (302, b"", {"Location": srv.url + "/y"})
    srv.set_json("/y", {"ok": True})
    http = JSONClient(timeout=2.0, max_bytes=4096)
    with pytest.raises(FetchError, match="answered HTTP 302"):
        await http.get(srv.url + "/x")
    assert srv.count("/y") == 0
    await http.aclose()


async def test_closed_client_opens_nothing(srv: JWKSServer) -> None:
    srv.set_raw("/x", json.dumps({"a": 1}).encode())
    http = JSONClient(timeout=2.0, max_bytes=4096)
    assert (await http.get(srv.url + "/x")).data == {"a": 1}
    await http.aclose()
    await http.aclose()
    assert http.closed
    with pytest.raises(FetchError, match="closed"):
        await http.get(srv.url + "/x")
    assert http._client is None and srv.count("/x") == 1


def test_invalid_bounds() -> None:
    with pytest.raises(ValueError):
        JSONClient(timeout=0, max_bytes=1)
    with pytest.raises(ValueError):
        JSONClient(timeout=1, max_bytes=0)
