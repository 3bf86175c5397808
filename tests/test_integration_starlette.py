"""ChainAuthMiddleware on a plain Starlette app: Decision → HTTP, request context, body replay, CORS."""

from __future__ import annotations

import json
from typing import Any, ClassVar

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from fastapps_auth import (
    AccessToken,
    RateLimitInfo,
    Rejected,
    Stage,
    Verification,
    VerifierChain,
)
from fastapps_auth.component import ComponentOptions
from fastapps_auth.integrations.starlette import (
    STATE_KEY,
    ChainAuthMiddleware,
    RequestScopedVerifier,
    challenge,
    client_ip,
    cors_middleware,
    current_access_token,
    parse_networks,
    rpc_target,
)
from fastapps_auth.request import current_request
from fastapps_auth.stage import StageOptions
from fastapps_auth.stages.scopes import ScopesStage
from tests.support.decisions import Recorder

META = "https://api.example.com/.well-known/oauth-protected-resource/mcp"


class TableAuth(Stage[StageOptions]):
    """Authenticates by a fixed table: each token names the outcome it gets. Counts its calls."""

    plugin_name: ClassVar[str] = "table-auth"
    options_model: ClassVar[type[ComponentOptions]] = StageOptions
    authenticates: ClassVar[bool] = True

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.seen: list[Any] = []

    async def __call__(self, v: Verification) -> None:
        self.calls += 1
        self.seen.append(v.request)
        if v.token == "bad":
            raise Rejected("bad_signature", "the token signature is invalid")
        if v.token == "limited":
            v.rate_limit = RateLimitInfo(limit=10, remaining=0, reset=42.2, window=60, policy="10;w=60")
            raise Rejected("rate_limited", "too many requests", error="rate_limited", status=429, retry_after=41.5)
        if v.token == "down":
            raise ConnectionError("database refused the connection")
        scopes = ["read"] if v.token != "writer" else ["read", "write"]
        v.access_token = AccessToken(token="fp", client_id="c", scopes=scopes, subject="alice", claims={"aud": "x"})
        if v.token == "counted":
            v.rate_limit = RateLimitInfo(limit=10, remaining=7, reset=30, window=60)


async def whoami(request: Request) -> JSONResponse:
    info = current_request.get()
    at = current_access_token()
    body = await request.body()
    return JSONResponse(
        {
            "subject": at.subject if at else None,
            "user": getattr(request.user, "display_name", None) if "user" in request.scope else None,
            "tool": info.tool_name if info else None,
            "ip": info.client_ip if info else None,
            "echo": body.decode() if body else None,
            "has_decision": STATE_KEY in request.scope.get("state", {}),
        }
    )


def make_app(chain: VerifierChain, **options: Any) -> Starlette:
    routes = [
        Route("/mcp", whoami, methods=["GET", "POST"]),
        Route("/.well-known/oauth-protected-resource/mcp", whoami),
        Route("/public", whoami),
    ]
    extra = options.pop("extra", [])
    mw = [Middleware(ChainAuthMiddleware, chain=chain, resource_metadata_url=META, **options)]
    return Starlette(routes=routes, middleware=[*extra, *mw])


@pytest.fixture
def auth() -> TableAuth:
    return TableAuth()


def client(app: Any, peer: str = "127.0.0.1") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(peer, 1234))
    return httpx.AsyncClient(transport=transport, base_url="http://test")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_valid_token_reaches_the_app_with_context(auth: TableAuth) -> None:
    async with client(make_app(VerifierChain(auth))) as c:
        r = await c.get("/mcp", headers=bearer("good"))
    assert r.status_code == 200
    assert r.json()["subject"] == "alice"
    assert r.json()["user"] == "c"  # the SDK's AuthenticatedUser, set for code behind the middleware
    assert r.json()["has_decision"] is True


async def test_no_credentials_is_a_bare_challenge(auth: TableAuth) -> None:
    async with client(make_app(VerifierChain(auth))) as c:
        for headers in ({}, {"Authorization": "Basic dXNlcjpwdw=="}):
            r = await c.get("/mcp", headers=headers)
            assert r.status_code == 401
            assert r.headers["www-authenticate"] == f'Bearer resource_metadata="{META}"'
            assert "error" not in r.json()
    assert auth.calls == 0


async def test_bad_token_is_invalid_token_with_description(auth: TableAuth) -> None:
    async with client(make_app(VerifierChain(auth))) as c:
        r = await c.get("/mcp", headers=bearer("bad"))
    assert r.status_code == 401
    www = r.headers["www-authenticate"]
    assert www.startswith('Bearer error="invalid_token"')
    assert 'error_description="the token signature is invalid"' in www
    assert f'resource_metadata="{META}"' in www
    assert r.json()["error"] == "invalid_token"


async def test_missing_scope_is_403_insufficient_scope(auth: TableAuth) -> None:
    async with client(make_app(VerifierChain(auth, ScopesStage(required=["write", "admin"])))) as c:
        r = await c.get("/mcp", headers=bearer("good"))
    assert r.status_code == 403
    www = r.headers["www-authenticate"]
    assert 'error="insufficient_scope"' in www and 'scope="write admin"' in www
    assert r.json()["scope"] == "write admin"


async def test_middleware_required_scopes(auth: TableAuth) -> None:
    record = Recorder()
    chain = VerifierChain(auth, observers=[record])
    inner = Starlette(routes=[Route("/mcp", whoami)])
    with pytest.warns(DeprecationWarning, match="scopes` stage in the chain"):
        app = ChainAuthMiddleware(inner, chain, required_scopes=["write"])
    assert [s.name for s in app.chain.stages] == ["table-auth", "required-scopes"]  # built once, the one chain
    async with client(app) as c:
        denied = await c.get("/mcp", headers=bearer("good"))
        allowed = await c.get("/mcp", headers=bearer("writer"))
    assert denied.status_code == 403 and 'scope="write"' in denied.headers["www-authenticate"]
    assert allowed.status_code == 200
    # the observers record the refusal the client got, once, from the chain's last stage
    assert [(d.allowed, d.status, d.stage) for d in record.decisions] == [
        (False, 403, "required-scopes"),
        (True, 200, None),
    ]
    assert auth.calls == 2


async def test_rate_limited_is_429_with_retry_after_and_ratelimit_headers(auth: TableAuth) -> None:
    async with client(make_app(VerifierChain(auth))) as c:
        r = await c.get("/mcp", headers=bearer("limited"))
    assert r.status_code == 429
    assert r.headers["retry-after"] == "42"  # ceil(41.5)
    assert r.headers["ratelimit-limit"] == "10"
    assert r.headers["ratelimit-remaining"] == "0"
    assert r.headers["ratelimit-reset"] == "43"
    assert r.headers["ratelimit-policy"] == "10;w=60"
    assert "www-authenticate" not in r.headers


async def test_allowed_responses_carry_ratelimit_headers(auth: TableAuth) -> None:
    async with client(make_app(VerifierChain(auth))) as c:
        r = await c.get("/mcp", headers=bearer("counted"))
    assert r.status_code == 200 and r.headers["ratelimit-remaining"] == "7"


async def test_transient_failure_is_503_with_retry_after(auth: TableAuth) -> None:
    auth.retry_after = 7.0
    async with client(make_app(VerifierChain(auth))) as c:
        r = await c.get("/mcp", headers=bearer("down"))
    assert r.status_code == 503
    assert r.headers["retry-after"] == "7"
    assert r.json()["error"] == "temporarily_unavailable"
    assert "refused" not in r.text  # the exception message stays server-side


async def test_exempt_and_unprotected_paths_and_preflight_pass(auth: TableAuth) -> None:
    async with client(make_app(VerifierChain(auth), paths=["/mcp"])) as c:
        assert (await c.get("/.well-known/oauth-protected-resource/mcp")).status_code == 200
        assert (await c.get("/public")).status_code == 200
        preflight = {"Origin": "https://chatgpt.com", "Access-Control-Request-Method": "POST"}
        assert (await c.options("/mcp", headers=preflight)).status_code != 401
        assert (await c.options("/mcp")).status_code == 401  # not a preflight: a request like any other
        assert (await c.get("/mcp")).status_code == 401
    assert auth.calls == 0


async def test_anonymous_allowed_still_refuses_bad_tokens(auth: TableAuth) -> None:
    async with client(make_app(VerifierChain(auth), anonymous="allow")) as c:
        anon = await c.get("/mcp")
        bad = await c.get("/mcp", headers=bearer("bad"))
    assert anon.status_code == 200 and anon.json()["subject"] is None
    assert bad.status_code == 401


async def test_tools_call_body_is_parsed_and_replayed(auth: TableAuth) -> None:
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "delete_file", "arguments": {}}}
    raw = json.dumps(call)
    async with client(make_app(VerifierChain(auth))) as c:
        r = await c.post("/mcp", content=raw, headers={**bearer("good"), "content-type": "application/json"})
    assert r.status_code == 200
    assert r.json()["tool"] == "delete_file"
    assert r.json()["echo"] == raw  # the downstream app read the same body
    assert auth.seen[-1].mcp_method == "tools/call"


async def test_per_tool_scope_is_403_at_the_middleware(auth: TableAuth) -> None:
    chain = VerifierChain(auth, ScopesStage(tools={"delete_file": ["files:delete"]}))
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "delete_file"}}
    listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
    async with client(make_app(chain)) as c:
        denied = await c.post("/mcp", json=call, headers=bearer("good"))
        listed = await c.post("/mcp", json=listing, headers=bearer("good"))
    assert denied.status_code == 403 and 'scope="files:delete"' in denied.headers["www-authenticate"]
    assert listed.status_code == 200


async def test_oversized_json_body_is_413_and_batched_tool_calls_are_400(auth: TableAuth) -> None:
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "x"}}
    record = Recorder()
    async with client(make_app(VerifierChain(auth, observers=[record]), max_body_bytes=180)) as c:
        big = await c.post("/mcp", json={"pad": "x" * 200}, headers=bearer("good"))
        batch = await c.post("/mcp", json=[call, call], headers=bearer("good"))
        forged = await c.post("/mcp", json={"pad": "x" * 200}, headers=bearer("bad"))
    assert big.status_code == 413
    assert batch.status_code == 400 and batch.json()["error"]["code"] == -32600
    assert forged.status_code == 401  # refused after the token is checked: a bad token is a 401 first
    # every answer is one decision the observers see, with who sent it
    assert [(d.status, d.stage, d.reason) for d in record.decisions] == [
        (413, "http", "body_too_large"),
        (400, "http", "batched_tool_call"),
        (401, "table-auth", "bad_signature"),
    ]
    assert [d.principal.subject if d.principal else None for d in record.decisions] == ["alice", "alice", None]


async def test_forwarded_for_only_from_trusted_proxies(auth: TableAuth) -> None:
    xff = {"X-Forwarded-For": "203.0.113.9, 10.0.0.5"}
    app = make_app(VerifierChain(auth), trusted_proxies=["10.0.0.0/8"])
    async with client(app, peer="10.0.0.1") as c:
        r = await c.get("/mcp", headers={**bearer("good"), **xff})
    assert r.json()["ip"] == "203.0.113.9"
    async with client(app, peer="198.51.100.7") as c:
        r = await c.get("/mcp", headers={**bearer("good"), **xff})
    assert r.json()["ip"] == "198.51.100.7"


def test_client_ip_stops_at_malformed_hops() -> None:
    trusted = parse_networks(["10.0.0.0/8"])
    scope = {"client": ("10.0.0.1", 1), "headers": [(b"x-forwarded-for", b"1.2.3.4, garbage, 10.0.0.9")]}
    assert client_ip(scope, trusted) == "10.0.0.9"


async def test_chain_runs_once_when_a_verifier_behind_the_middleware_asks_again(auth: TableAuth) -> None:
    chain = VerifierChain(auth)
    verifier = RequestScopedVerifier(chain)
    seen: list[str | None] = []

    async def endpoint(request: Request) -> JSONResponse:
        at = await verifier.verify_token("good")
        other = await verifier.verify_token("writer")  # a different token is verified afresh
        seen.extend([at.subject if at else None, other.subject if other else None])
        return JSONResponse({})

    app = Starlette(routes=[Route("/mcp", endpoint)], middleware=[Middleware(ChainAuthMiddleware, chain=chain)])
    async with client(app) as c:
        assert (await c.get("/mcp", headers=bearer("good"))).status_code == 200
    assert seen == ["alice", "alice"]
    assert auth.calls == 2  # the middleware's run, plus one for the other token


async def test_verifier_binds_resource_from_audience(auth: TableAuth) -> None:
    at = AccessToken(token="fp", client_id="c", scopes=[], claims={"aud": ["other", "https://api.example.com/mcp"]})
    v = RequestScopedVerifier(VerifierChain(auth), resource_url="https://api.example.com/mcp/")
    assert v.bind_resource(at).resource == "https://api.example.com/mcp"
    assert v.bind_resource(at.model_copy(update={"claims": {"aud": "elsewhere"}})).resource is None
    # another accepted audience already set as the resource gives way to the one naming this server
    assert v.bind_resource(at.model_copy(update={"resource": "other"})).resource == "https://api.example.com/mcp"
    # compared as the SDK compares it: host case and default port do not matter
    odd = at.model_copy(update={"claims": {"aud": ["other", "https://API.example.com:443/mcp"]}})
    assert v.bind_resource(odd).resource == "https://API.example.com:443/mcp"


async def test_cors_is_explicit(auth: TableAuth) -> None:
    app = make_app(VerifierChain(auth), extra=[cors_middleware(["https://chatgpt.com"])])
    async with client(app) as c:
        pre = await c.options(
            "/mcp",
            headers={
                "Origin": "https://chatgpt.com",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, dpop, mcp-method, mcp-name",
            },
        )
        evil = await c.get("/mcp", headers={**bearer("bad"), "Origin": "https://evil.example"})
        refused = await c.get("/mcp", headers={**bearer("bad"), "Origin": "https://chatgpt.com"})
    assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == "https://chatgpt.com"
    # a browser client reads the challenge and a DPoP nonce, and sends DPoP proofs and the mirrored headers
    assert "DPoP-Nonce" in refused.headers["access-control-expose-headers"]
    assert "access-control-allow-origin" not in evil.headers
    with pytest.raises(ValueError, match="explicitly"):
        cors_middleware(["*"])


def test_rpc_target_shapes() -> None:
    assert rpc_target(b'{"method":"tools/call","params":{"name":"t"}}') == ("tools/call", "t", True)
    assert rpc_target(b'{"method":"tools/list"}') == ("tools/list", None, True)
    assert rpc_target(b'[{"method":"ping"}]') == ("batch", None, True)
    # a body that cannot be read is refused, never taken for a request that calls no tool
    assert rpc_target(b"not json") == (None, None, False)
    assert rpc_target(b"[" * 100_000) == (None, None, False)


@settings(max_examples=200)
@given(description=st.text(max_size=80), scope=st.text(max_size=40))
def test_challenge_never_breaks_out_of_its_quotes(description: str, scope: str) -> None:
    www = challenge("invalid_token", description, scope=scope or None)
    assert www.count('"') % 2 == 0
    assert not any(c in www for c in "\r\n\x00")
    # every parameter value is a quoted-string without inner quotes
    for part in www.removeprefix("Bearer ").split('", '):
        assert part.count('"') <= 2


@settings(max_examples=100)
@given(body=st.binary(max_size=300))
def test_rpc_target_never_raises(body: bytes) -> None:
    method, tool, ok = rpc_target(body)
    assert ok in (True, False)
    assert method is None or isinstance(method, str)
    assert tool is None or method == "tools/call"
