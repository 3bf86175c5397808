"""Bodies the middleware cannot read are refused, after authentication, and every refusal is observed.

A live MCP SDK server (mcp 1.30's FastMCP, streamable HTTP) on 127.0.0.1 behind the middleware, the
real ``jwt`` stage, httpx as the client. Each body here reached the app before and made the SDK's
``json.loads`` fail with a 500 and a traceback.
"""

from __future__ import annotations

import gzip
import json
import logging
import zlib
from typing import Any

import httpx
import pytest
from mcp.server.fastmcp import FastMCP as SDKFastMCP

from fastapps_auth import VerifierChain
from fastapps_auth.integrations.asgi.body import MAX_INT_DIGITS, MAX_JSON_DEPTH, parse_json, rpc_message
from fastapps_auth.integrations.mcp import protect
from fastapps_auth.stages.scopes import ScopesStage
from tests.hosts.support import MCP_HEADERS, AsyncServer, Issuer, jwt_stage, rpc
from tests.support.decisions import Recorder


def call_with(arguments: str) -> bytes:
    """A tools/call of ``echo`` whose arguments are the raw JSON text ``arguments``."""
    return b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":' + arguments.encode()


ECHO = call_with('{"text":"hi"}') + b"}}"
UNREADABLE: dict[str, tuple[bytes, dict[str, str]]] = {
    "invalid UTF-8": (call_with('{"text":"') + b"\xff\xfe" + b'"}}}', {}),
    "nesting": (call_with('{"a":' + "[" * 3000 + "]" * 3000 + "}") + b"}}", {}),
    "integer of 4,400 digits": (call_with('{"a":' + "7" * 4400 + "}") + b"}}", {}),
    "NaN": (call_with('{"a":NaN}') + b"}}", {}),
    "gzip": (gzip.compress(ECHO), {"Content-Encoding": "gzip"}),
    "deflate": (zlib.compress(ECHO), {"Content-Encoding": "deflate"}),
}


@pytest.fixture
def issuer() -> Issuer:
    return Issuer()


def make(issuer: Issuer, **options: Any) -> tuple[Any, VerifierChain, Recorder, list[str]]:
    ran: list[str] = []
    recorder = Recorder()
    chain = VerifierChain(jwt_stage(issuer), ScopesStage(tools={"admin": ["admin"]}), observers=[recorder])
    server = SDKFastMCP("bodies", stateless_http=True, json_response=True)

    @server.tool()
    def echo(text: str = "", a: Any = None) -> str:
        ran.append("echo")
        return text

    app = protect(server.streamable_http_app(), chain, server=server, **options)
    return app, chain, recorder, ran


async def post(url: str, token: str | None, body: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(timeout=30) as http:
        return await http.post(f"{url}/mcp", content=body, headers={**MCP_HEADERS, **auth, **(headers or {})})


@pytest.mark.parametrize("kind", list(UNREADABLE))
async def test_a_body_we_cannot_read_is_400_parse_error_and_never_reaches_the_app(
    issuer: Issuer, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    body, headers = UNREADABLE[kind]
    app, chain, recorder, ran = make(issuer)
    caplog.set_level(logging.ERROR)
    async with AsyncServer(app) as srv:
        refused = await post(srv.url, issuer.mint("alice"), body, headers)
        forged = await post(srv.url, issuer.mint("alice", iss="https://evil.example/"), body, headers)
        fine = await post(srv.url, issuer.mint("alice"), ECHO)
    await chain.aclose()
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == -32700 and refused.json()["id"] is None
    assert forged.status_code == 401  # after authentication: a bad token is told so, not how its body parsed
    assert fine.status_code == 200 and ran == ["echo"]  # the refused body never ran the tool
    reason = "unsupported_content_encoding" if "Content-Encoding" in headers else "unreadable_body"
    assert recorder.refusals()[0] == (400, "http", reason)  # counted: the observers saw it, with who sent it
    assert recorder.decisions[0].principal is not None and recorder.decisions[0].principal.subject == "alice"
    assert not [r for r in caplog.records if r.exc_info]  # no traceback: the host never saw the body


async def test_too_large_and_batched_calls_are_observed_like_every_other_answer(issuer: Issuer) -> None:
    app, chain, recorder, ran = make(issuer, max_body_bytes=4096)
    token = issuer.mint("alice")
    call = rpc("tools/call", {"name": "echo", "arguments": {"text": "x"}})
    async with AsyncServer(app) as srv:
        large = await post(srv.url, token, call_with(json.dumps({"text": "x" * 5000})) + b"}}")
        batch = await post(srv.url, token, json.dumps([call, call]).encode())
        anonymous = await post(srv.url, None, ECHO)
    await chain.aclose()
    assert large.status_code == 413 and large.json()["error"]["code"] == -32600
    assert batch.status_code == 400 and batch.json()["error"]["code"] == -32600
    assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"] == "Bearer"
    assert recorder.refusals() == [
        (413, "http", "body_too_large"),
        (400, "http", "batched_tool_call"),
        (401, None, "missing_token"),
    ]
    assert ran == []


async def test_anonymous_requests_with_an_unreadable_body_are_refused_and_observed(issuer: Issuer) -> None:
    app, chain, recorder, ran = make(issuer, anonymous="allow")
    async with AsyncServer(app) as srv:
        refused = await post(srv.url, None, UNREADABLE["integer of 4,400 digits"][0])
    await chain.aclose()
    assert refused.status_code == 400 and refused.json()["error"]["code"] == -32700
    assert recorder.refusals() == [(400, "http", "unreadable_body")]
    assert ran == []


# -- the limits, exactly ------------------------------------------------------------------------------


def test_nesting_and_integer_limits_are_exact() -> None:
    assert parse_json("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH) is not None
    with pytest.raises(ValueError):
        parse_json("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1))
    assert parse_json("-" + "9" * MAX_INT_DIGITS) == -int("9" * MAX_INT_DIGITS)
    with pytest.raises(ValueError):
        parse_json("9" * (MAX_INT_DIGITS + 1))
    # under the lowest int-str limit CPython can be set to, so no host parsing the same body fails on it
    assert MAX_INT_DIGITS < 640


@pytest.mark.parametrize(
    "body",
    [b"\xef\xbb\xbf{}", b'{"a":Infinity}', b'{"a":-Infinity}', '{"a":"x"}'.encode("utf-16"), b"", b"{"],
)
def test_other_bodies_that_are_not_strict_json_are_unreadable(body: bytes) -> None:
    assert rpc_message(body).refusal == "unreadable_body"


def test_a_wide_but_shallow_body_is_readable() -> None:
    wide = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "t", "arguments": {"rows": [[i] for i in range(MAX_JSON_DEPTH * 4)]}},
        }
    )
    target = rpc_message(wide.encode())
    assert (target.method, target.tool, target.refusal) == ("tools/call", "t", None)
