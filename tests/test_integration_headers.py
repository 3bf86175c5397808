"""The headers the middleware reads: credentials, the public URL, and MCP's mirrored ``Mcp-Method``/``Mcp-Name``
checked against the body (properties over any method and name; the HTTP behaviour is in test_integration_challenges)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastapps_auth.integrations.asgi.body import HEADER_MISMATCH, UNREADABLE, check_mirrors, rpc_message
from fastapps_auth.integrations.asgi.headers import RequestHeaders, credentials, public_url, read_headers


def scope(*headers: tuple[str, str], **extra: Any) -> dict[str, Any]:
    return {
        "type": "http",
        "scheme": "http",
        "path": "/mcp",
        "server": ("127.0.0.1", 8000),
        "headers": [(k.lower().encode(), v.encode("latin-1")) for k, v in headers],
        **extra,
    }


@pytest.mark.parametrize(
    ("values", "dpop", "expected"),
    [
        (["Bearer abc"], False, ("bearer", "abc")),
        (["bearer   abc  "], False, ("bearer", "abc")),
        (["DPoP abc"], True, ("dpop", "abc")),
        (["DPoP abc"], False, None),  # without a dpop stage the scheme is no credential
        (["Basic abc"], True, None),
        (["Bearer a", "Bearer b"], False, None),  # two Authorization headers: which one would count?
        ([], False, None),
    ],
)
def test_credentials(values: list[str], dpop: bool, expected: tuple[str, str] | None) -> None:
    headers = read_headers(scope(*(("Authorization", v) for v in values)))
    assert credentials(headers, dpop=dpop) == expected


def test_the_public_url() -> None:
    direct = scope(("Host", "mcp.example.com:8443"), ("X-Forwarded-Host", "evil.example"))
    assert public_url(direct, read_headers(direct), behind_proxy=False) == "http://mcp.example.com:8443/mcp"
    proxied = scope(
        ("Host", "10.0.0.5"),
        ("X-Forwarded-Proto", "http, HTTPS"),
        ("X-Forwarded-Host", "evil.example, mcp.example.com"),
    )
    assert public_url(proxied, read_headers(proxied), behind_proxy=True) == "https://mcp.example.com/mcp"
    no_host = scope(path="/a b", root_path="/api")
    assert public_url(no_host, RequestHeaders(), behind_proxy=False) == "http://127.0.0.1:8000/api/a%20b"


def test_every_dpop_header_is_kept_in_order() -> None:
    headers = read_headers(scope(("DPoP", " one "), ("dpop", "two")))
    assert headers.dpop == ("one", "two")


def body(method: str, name: str | None = None) -> bytes:
    params: dict[str, Any] = {}
    if name is not None:
        params = {"uri": name} if method == "resources/read" else {"name": name, "arguments": {}}
    return json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()


def encoded(value: str) -> str:
    return "=?base64?" + base64.b64encode(value.encode()).decode() + "?="


NAMES = st.text(min_size=1, max_size=40)
NAMED = st.sampled_from(["tools/call", "prompts/get", "resources/read"])


@given(method=NAMED, name=NAMES, as_base64=st.booleans())
def test_headers_that_mirror_the_body_pass(method: str, name: str, as_base64: bool) -> None:
    value = encoded(name) if as_base64 or name != name.strip() or name.startswith("=?") else name
    target = rpc_message(body(method, name))
    assert check_mirrors(target, (method,), (value,)).refusal is None


@given(method=NAMED, name=NAMES, other=NAMES)
def test_a_name_that_differs_is_refused(method: str, name: str, other: str) -> None:
    target = rpc_message(body(method, name))
    refusal = check_mirrors(target, (method,), (encoded(other),)).refusal
    assert (refusal is None) == (other == name)


@given(
    sent=st.sampled_from(["tools/list", "tools/call", "initialize", "ping"]),
    real=st.sampled_from(["tools/list", "initialize"]),
)
def test_a_method_that_differs_is_refused(sent: str, real: str) -> None:
    refusal = check_mirrors(rpc_message(body(real)), (sent,), ()).refusal
    assert (refusal is None) == (sent == real)


@pytest.mark.parametrize(
    ("methods", "names", "data"),
    [
        (("tools/call",), (), body("tools/call", "a")),  # a 2026 client names the tool it calls
        (("tools/list",), ("a",), body("tools/list")),  # a name for a method that has none
        (("tools/call", "tools/call"), ("a",), body("tools/call", "a")),  # each header once
        (("tools/call",), ("a", "a"), body("tools/call", "a")),
        (("tools/call",), ("=?base64?not base64!?=",), body("tools/call", "a")),
        (("batch",), (), b"[]"),
        (("tools/list",), (), b'{"jsonrpc": "2.0", "id": 1, "result": {}}'),  # a response has no method
    ],
)
def test_what_does_not_mirror_the_body(methods: tuple[str, ...], names: tuple[str, ...], data: bytes) -> None:
    assert check_mirrors(rpc_message(data), methods, names).refusal == HEADER_MISMATCH


def test_without_the_headers_nothing_changes_and_an_unreadable_body_stays_unreadable() -> None:
    target = rpc_message(body("tools/call", "a"))
    assert check_mirrors(target, (), ()) is target
    assert check_mirrors(rpc_message(b"{"), ("tools/call",), ("a",)).refusal == UNREADABLE
