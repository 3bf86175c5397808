"""Cost of the HTTP integration per request, against the MCP SDK's own bearer stack, in one run.

Each row calls an ASGI app directly (no sockets), so what is measured is the middleware itself:
Decision → response mapping, request context, the JSON-RPC body read and replay, and the decision
reuse that keeps the chain at one run per request when the SDK's ``BearerAuthBackend`` sits behind
it. First with a trivial verifier (the SDK's stack with a ``TokenVerifier`` that returns a fixed
token; ours with a chain of one stage that does the same), so the two stacks' own work is all there
is; then with a cached-token ``jwt`` chain. Also: the ``roles`` stage's precomputed hierarchy
against expanding it per request.

    python -m benchmarks.bench_integrations [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

from joserfc import jwt
from joserfc.jwk import RSAKey
from mcp.server.auth.middleware.bearer_auth import BearerAuthBackend, RequireAuthMiddleware
from starlette.middleware.authentication import AuthenticationMiddleware

from benchmarks.common import fmt_rate, table, write_page, write_results
from fastapps_auth import AccessToken, ManualClock, Stage, StageOptions, Verification, VerifierChain
from fastapps_auth.integrations.asgi import ChainAuthMiddleware, RequestScopedVerifier
from fastapps_auth.stages.jwt import JWTVerifier
from fastapps_auth.stages.roles import RolesStage

ISSUER = "https://issuer.example.com/"
AUD = "https://api.example.com/mcp"
TARGET = 1.0
BODY = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "search", "arguments": {}}})


TRIVIAL = AccessToken(token="fp", client_id="c", scopes=["read"], subject="alice", claims={})


class TrivialVerifier:
    """An MCP ``TokenVerifier`` that accepts every token (the SDK's stack at its cheapest)."""

    async def verify_token(self, token: str) -> AccessToken | None:
        return TRIVIAL


class TrivialStage(Stage[StageOptions]):
    """The same as an authenticating stage: our stack at its cheapest."""

    plugin_name = "trivial"
    authenticates = True

    async def __call__(self, v: Verification) -> None:
        v.access_token = TRIVIAL


def make_chain() -> tuple[VerifierChain, str]:
    key = RSAKey.generate_key(2048, parameters={"kid": "k", "alg": "RS256", "use": "sig"})
    now = int(time.time())
    token = jwt.encode(
        {"alg": "RS256", "kid": "k"},
        {"sub": "alice", "iss": ISSUER, "aud": AUD, "iat": now, "exp": now + 3600, "scope": "read"},
        key,
    )
    stage = JWTVerifier(
        issuer_url=ISSUER, audience=AUD, jwks={"keys": [key.as_dict(private=False)]}, algorithms=["RS256"]
    )
    return VerifierChain(stage), token


async def endpoint(scope: Any, receive: Any, send: Any) -> None:
    if scope.get("method") == "POST":
        while (await receive()).get("more_body"):
            pass
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})


def sdk_stack(verifier: Any) -> Any:
    """What the MCP SDK wires by itself: AuthenticationMiddleware(BearerAuthBackend) + RequireAuthMiddleware."""
    return AuthenticationMiddleware(RequireAuthMiddleware(endpoint, ["read"]), backend=BearerAuthBackend(verifier))


def caller(app: Any, token: str, *, post: bool) -> Any:
    headers = [(b"authorization", f"Bearer {token}".encode()), (b"host", b"api.example.com")]
    if post:
        headers.append((b"content-type", b"application/json"))
    body = BODY.encode()

    async def call() -> None:
        scope = {
            "type": "http",
            "method": "POST" if post else "GET",
            "path": "/mcp",
            "raw_path": b"/mcp",
            "query_string": b"",
            "headers": headers,
            "client": ("127.0.0.1", 5000),
            "server": ("127.0.0.1", 8000),
            "scheme": "http",
            "root_path": "",
        }
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body if post else b"", "more_body": False}
            return {"type": "http.disconnect"}

        status = 0

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]

        await app(scope, receive, send)
        assert status == 200, status

    return call


async def interleaved(calls: dict[str, Any], number: int, rounds: int) -> dict[str, list[float]]:
    """Calls/s of each alternative per round, measured round-robin so load drift on a shared machine hits all alike."""
    samples: dict[str, list[float]] = {label: [] for label in calls}
    for fn in calls.values():
        await fn()  # warm-up
    for _ in range(rounds):
        for label, fn in calls.items():
            t0 = time.perf_counter()
            for _ in range(number):
                await fn()
            samples[label].append(number / (time.perf_counter() - t0))
    return samples


def ratio(samples: dict[str, list[float]], ours: str, theirs: str) -> float:
    """Median of the per-round ratios: each round measures the two back to back, so drift cancels."""
    return statistics.median(a / b for a, b in zip(samples[ours], samples[theirs], strict=True))


class NaiveRoles:
    """The hand-written alternative: walk the hierarchy on every request."""

    def __init__(self, hierarchy: dict[str, list[str]], scopes: dict[str, list[str]]) -> None:
        self.hierarchy, self.scopes = hierarchy, scopes

    def expand(self, roles: list[str]) -> list[str]:
        out: list[str] = []
        stack, seen = list(roles), set()
        while stack:
            r = stack.pop()
            if r in seen:
                continue
            seen.add(r)
            out.extend(s for s in self.scopes.get(r, ()) if s not in out)
            stack.extend(self.hierarchy.get(r, ()))
        return out


async def main(smoke: bool) -> None:
    n, rounds = (100, 2) if smoke else (1000, 21)
    chain, token = make_chain()
    trivial = VerifierChain(TrivialStage())
    reuse = RequestScopedVerifier(chain)
    apps = {
        "bare endpoint (no auth)": (endpoint, False),
        "MCP SDK bearer stack, a bare trivial verifier (no chain)": (sdk_stack(TrivialVerifier()), False),
        "MCP SDK bearer stack, chain of one trivial stage as verifier": (sdk_stack(trivial), False),
        "ChainAuthMiddleware, chain of one trivial stage": (ChainAuthMiddleware(endpoint, trivial), False),
        "MCP SDK bearer stack, jwt chain as verifier": (sdk_stack(chain), False),
        "ChainAuthMiddleware, jwt chain": (ChainAuthMiddleware(endpoint, chain), False),
        "ChainAuthMiddleware, POST tools/call (body read + replay)": (ChainAuthMiddleware(endpoint, chain), True),
        "ChainAuthMiddleware + SDK stack, decision reused": (ChainAuthMiddleware(sdk_stack(reuse), chain), False),
        "ChainAuthMiddleware + SDK stack, chain run twice": (ChainAuthMiddleware(sdk_stack(chain), chain), False),
    }
    samples = await interleaved(
        {label: caller(app, token, post=post) for label, (app, post) in apps.items()}, n, rounds
    )
    rates = {label: statistics.median(s) for label, s in samples.items()}
    bare = rates["bare endpoint (no auth)"]
    rows = [[label, fmt_rate(r), f"{r / bare:.2f}x"] for label, r in rates.items()]
    reuse_ratio = ratio(
        samples, "ChainAuthMiddleware + SDK stack, decision reused", "ChainAuthMiddleware + SDK stack, chain run twice"
    )
    vs_sdk = ratio(samples, "ChainAuthMiddleware, jwt chain", "MCP SDK bearer stack, jwt chain as verifier")
    ours_trivial = "ChainAuthMiddleware, chain of one trivial stage"
    vs_trivial = ratio(samples, ours_trivial, "MCP SDK bearer stack, chain of one trivial stage as verifier")
    vs_bare_verifier = ratio(samples, ours_trivial, "MCP SDK bearer stack, a bare trivial verifier (no chain)")

    hierarchy = {f"r{i}": [f"r{i + 1}"] for i in range(10)}
    role_scopes = {f"r{i}": [f"s{i}:read", f"s{i}:write"] for i in range(11)}
    stage = RolesStage(hierarchy=hierarchy, scopes=role_scopes)
    naive = NaiveRoles(hierarchy, role_scopes)
    base = AccessToken(token="fp", client_id="c", scopes=["openid"], subject="alice", claims={"roles": ["r0", "r5"]})
    clock = ManualClock()

    async def staged() -> None:
        v = Verification("t", now=0.0, clock=clock)
        v.access_token = base
        await stage(v)

    async def hand() -> None:
        claims = base.claims or {}
        scopes = list(base.scopes) + naive.expand(list(claims["roles"]))
        base.model_copy(update={"scopes": scopes})

    roles = await interleaved({"stage": staged, "naive": hand}, n * 5, rounds)
    roles_stage, roles_naive = statistics.median(roles["stage"]), statistics.median(roles["naive"])
    roles_ratio = ratio(roles, "stage", "naive")

    body = "\n\n".join(
        [
            "Requests per second through each ASGI stack, called in-process (no sockets), one event loop, with "
            "the verifier each row names; each row's median over the rounds. Ratio: against the bare endpoint; the "
            "comparisons below are medians of per-round ratios (the stacks measured back to back).",
            table(["stack", "requests/s", "vs bare"], rows),
            f"- Decision reuse behind the SDK's bearer backend: **{reuse_ratio:.2f}x** the throughput of running "
            "the chain twice (and observers see one decision per request, not two).",
            "- `ChainAuthMiddleware` against the SDK's own bearer stack (`AuthenticationMiddleware(BearerAuthBackend)` "
            "+ `RequireAuthMiddleware`), both with the same trivial verifier (a chain of one stage that returns a "
            f"fixed token): **{vs_trivial:.2f}x** (target >= {TARGET:g}x: "
            f"{'met' if vs_trivial >= TARGET else 'NOT met'}). With the same cached-token `jwt` chain: "
            f"**{vs_sdk:.2f}x**.",
            f"- Against the SDK's stack with a bare `TokenVerifier` that returns the token (no chain at all): "
            f"**{vs_bare_verifier:.2f}x**. The difference is the chain's own bookkeeping, which a bare verifier does "
            "not do: the per-stage trace, the `Decision` for the observers, the token's fingerprint, the request "
            "context.",
            table(
                ["roles expansion (11-level hierarchy, 2 roles)", "calls/s"],
                [
                    ["`roles` stage (closure precomputed)", fmt_rate(roles_stage)],
                    ["walk per request", fmt_rate(roles_naive)],
                ],
            ),
            f"- Precomputed hierarchy: **{roles_ratio:.2f}x** the per-request walk.",
        ]
    )
    print(body)
    await chain.aclose()
    await trivial.aclose()
    if not smoke:
        write_page(
            "integrations", "Integrations: cost per request", body, packages=("mcp", "starlette", "fastapps-auth")
        )
        write_results(
            "integrations",
            [
                {"label": "decision reuse vs chain twice", "ratio": reuse_ratio, "target": None},
                {
                    "label": "ChainAuthMiddleware vs SDK bearer stack, same trivial verifier",
                    "ratio": vs_trivial,
                    "target": TARGET,
                },
                {"label": "ChainAuthMiddleware vs SDK bearer stack, jwt chain", "ratio": vs_sdk, "target": None},
                {"label": "roles precomputed vs per-request walk", "ratio": roles_ratio, "target": None},
            ],
            title="Integrations",
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true", help="a few seconds; no page written")
    asyncio.run(main(parser.parse_args().smoke))
