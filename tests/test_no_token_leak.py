"""No token, and no 20-character prefix of one, appears in any output: logs, audit events, metrics, CLI.

Every built-in stage runs at DEBUG with every audit renderer, a metrics observer and a
failing observer, over allowed, rejected and transiently failing (deny and allow)
verifications; everything written is captured and searched for each token.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any, ClassVar

import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from fastapps_auth import Observer, RequestInfo, Stage, StageOptions, Verification, VerifierChain, request_context
from fastapps_auth.cli import app
from fastapps_auth.stages.audit import AuditObserver
from fastapps_auth.stages.metrics import MetricsObserver, render_metrics
from fastapps_auth.stages.rate_limit import RateLimitStage
from fastapps_auth.stages.roles import RolesStage
from fastapps_auth.stages.scopes import ScopesStage
from fastapps_auth.stages.tenant import TenantStage
from fastapps_auth.stages.user_status import UserStatusStage
from fastapps_auth.testing.issuer import Minter, jwt_stage, tamper

PREFIX = 20
B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def leaks(text: str, tokens: Iterable[str]) -> list[str]:
    """The tokens of which ``text`` contains the whole or a 20-character prefix (fingerprints only)."""
    return [t[:12] + "..." for t in tokens if t and (t in text or t[:PREFIX] in text)]


def captured_text(caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> str:
    """Every log record (message, arguments, traceback) and everything printed."""
    parts = []
    for record in caplog.records:
        parts.append(record.getMessage())
        parts.append(repr(record.args))
        if record.exc_info:
            parts.append(logging.Formatter().formatException(record.exc_info))
        if record.exc_text:
            parts.append(record.exc_text)
    out = capsys.readouterr()
    parts += [caplog.text, out.out, out.err]
    return "\n".join(parts)


class Leaky(Stage[StageOptions]):
    """A stage whose backend error message quotes the whole token (as a careless driver might)."""

    plugin_name: ClassVar[str] = "leaky"

    async def __call__(self, v: Verification) -> None:
        raise ConnectionError(f"backend refused {v.token}")


class Exploding(Observer[Any]):
    plugin_name: ClassVar[str] = "exploding"

    def __call__(self, decision: Any) -> None:
        raise RuntimeError("observer failed")


def users_db(path: Path) -> str:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE users (id TEXT PRIMARY KEY, active BOOLEAN, banned BOOLEAN)")
        db.executemany(
            "INSERT INTO users VALUES (?, ?, ?)",
            [("alice", True, False), ("bob", False, False), ("carol", True, True), ("dave", True, False)],
        )
    return f"sqlite:///{path}"


def observers() -> list[Observer[Any]]:
    return [
        Exploding(),
        AuditObserver(claims=["sub", "tenant_id", "roles"]),
        AuditObserver(renderer="logfmt", logger="leak.logfmt"),
        AuditObserver(renderer="console", logger="leak.console"),
        AuditObserver(renderer="structlog", logger="leak.structlog"),
        MetricsObserver(registry="private"),
    ]


@pytest.fixture
async def chains(dev_issuer: Any, tmp_path: Path) -> AsyncIterator[list[VerifierChain]]:
    dsn = users_db(tmp_path / "users.db")
    built = [
        VerifierChain(
            jwt_stage(dev_issuer),
            UserStatusStage(dsn=dsn),
            TenantStage(allowed=["acme"]),
            RolesStage(scopes={"admin": ["admin"]}),
            RateLimitStage(limit=2, window=60),
            ScopesStage(required=["read"], tools={"delete": ["admin"]}),
            observers=observers(),
        ),
        # transient failures: a user store that cannot be opened, a backend that fails, deny and allow
        VerifierChain(
            jwt_stage(dev_issuer),
            UserStatusStage(dsn=f"sqlite:///{tmp_path}/missing/dir/users.db"),
            observers=observers(),
        ),
        VerifierChain(
            jwt_stage(dev_issuer),
            UserStatusStage(dsn=f"sqlite:///{tmp_path}/missing/dir/users.db", on_error="allow"),
            Leaky(on_error="allow"),
            observers=observers(),
        ),
        VerifierChain(jwt_stage(dev_issuer), Leaky(), observers=observers()),
    ]
    yield built
    for chain in built:
        await chain.aclose()


def minted(mint: Minter) -> list[str]:
    acme = {"tenant_id": "acme"}
    return [
        mint("alice", scopes=["read"], claims=acme),  # allowed
        mint("alice", scopes=["read"], claims={**acme, "roles": ["admin"]}),
        mint("bob", scopes=["read"], claims=acme),  # inactive
        mint("carol", scopes=["read"], claims=acme),  # banned
        mint("nobody", scopes=["read"], claims=acme),  # unknown user
        mint("dave", scopes=["write"], claims=acme),  # insufficient scope
        mint("dave", scopes=["read"], claims={"tenant_id": "other"}),  # wrong tenant
        mint("dave", scopes=["read"]),  # no tenant
        mint.expired("alice", scopes=["read"], claims=acme),
        mint.not_yet_valid("alice", scopes=["read"], claims=acme),
        mint.tampered("alice", scopes=["read"], claims=acme),
        mint("alice", scopes=["read"], claims=acme, audience="someone-else"),
        tamper(mint("alice", alg="ES256")),
        "not.a.jwt-but-long-enough-to-matter-0123456789",
        "x" * 5000,
    ]


async def test_no_token_or_prefix_in_any_output(
    chains: list[VerifierChain],
    mint: Minter,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    structlog.reset_defaults()  # the default structlog logger prints to stdout, which capsys captures
    tokens = minted(mint)
    outcomes: set[tuple[bool, str | None]] = set()
    dumped: list[str] = []
    request = RequestInfo(
        method="POST", path="/mcp", client_ip="127.0.0.1", mcp_method="tools/call", tool_name="delete"
    )
    for chain in chains:
        for token in tokens:
            for _ in range(2):  # the second pass hits caches (and the rate limit)
                d = await chain.evaluate(token)
                outcomes.add((d.allowed, d.reason))
                dumped.append(json.dumps(d.as_dict()))
                dumped.append(repr(d))  # a decision in a log line or a traceback's locals
            with request_context(request):
                d = await chain.evaluate(token)
            outcomes.add((d.allowed, d.reason))
            dumped.append(json.dumps(d.as_dict()))
        for observer in chain.observers:
            if isinstance(observer, MetricsObserver):
                dumped.append(render_metrics(chain).decode())
    # the scenarios really happened: allowed, each kind of rejection, fail-open and fail-closed
    reasons = {r for _, r in outcomes}
    assert (True, None) in outcomes
    for reason in ("user_banned", "rate_limited", "expired", "bad_signature", "unavailable"):
        assert reason in reasons, (reason, reasons)
    traced = {(t["stage"], t["outcome"]) for line in dumped if line.startswith("{") for t in json.loads(line)["trace"]}
    assert {("user-status", "error-denied"), ("user-status", "error-allowed"), ("leaky", "error-allowed")} <= traced
    assert any(r.levelno >= logging.WARNING and "failing open" in r.getMessage() for r in caplog.records)
    text = captured_text(caplog, capsys) + "\n".join(dumped)
    assert sum(1 for r in caplog.records if r.name == "fastapps_auth.audit") > len(tokens)
    assert leaks(text, tokens) == []


def test_cli_verify_prints_no_token(tmp_path: Path, dev_issuer: Any, mint: Minter) -> None:
    config = tmp_path / "auth.toml"
    config.write_text(
        f"""
[[stages]]
use = "jwt"
issuer_url = "{dev_issuer.url}"
audience = "{dev_issuer.audience}"
require_typ = "at+jwt"

[[stages]]
use = "audit"
"""
    )
    tokens = [mint("alice"), mint.expired("bob"), mint.tampered("carol"), "garbage-token-0123456789abcdefghijklmn"]
    runner = CliRunner()
    table = runner.invoke(app, ["verify", "--config", str(config), *tokens])
    as_json = runner.invoke(app, ["verify", "--config", str(config), "--json"], input="\n".join(tokens))
    assert table.exit_code == as_json.exit_code == 1, table.output
    assert len(as_json.stdout.splitlines()) == len(tokens)
    assert leaks(table.output + as_json.output, tokens) == []


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    parts=st.lists(st.text(alphabet=B64URL, min_size=8, max_size=200), min_size=1, max_size=4),
    junk=st.text(min_size=0, max_size=8),
)
def test_arbitrary_tokens_never_reach_the_audit_log(
    parts: list[str], junk: str, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    import asyncio

    token = ".".join(parts) + junk
    if len(token.strip()) < 24:
        token = token + "Zq" * 12

    async def run() -> None:
        chain = VerifierChain(
            Leaky(on_error="allow"),
            observers=[AuditObserver(), AuditObserver(renderer="logfmt", logger="leak.logfmt")],
        )
        await chain.evaluate(token)
        await chain.aclose()

    caplog.clear()
    caplog.set_level(logging.DEBUG)
    asyncio.run(run())
    assert leaks(captured_text(caplog, capsys), [token]) == []


async def test_http_requests_log_request_info_but_no_token(
    chains: list[VerifierChain],
    mint: Minter,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Through the ASGI middleware: responses, headers and audit events carry no token; the tool name is logged."""
    import httpx
    from starlette.responses import JSONResponse

    from fastapps_auth.integrations.starlette import ChainAuthMiddleware

    async def endpoint(scope: Any, receive: Any, send: Any) -> None:
        await JSONResponse({"ok": True})(scope, receive, send)

    caplog.set_level(logging.DEBUG)
    web = ChainAuthMiddleware(endpoint, chains[0])
    tokens = minted(mint)
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "search", "arguments": {}}}
    seen = []
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=web), base_url="http://127.0.0.1") as client:
        for token in tokens:
            r = await client.post("/mcp", json=body, headers={"Authorization": f"Bearer {token}"})
            seen.append(f"{r.status_code} {r.headers!r} {r.text}")
    assert {s.split()[0] for s in seen} >= {"200", "401", "403"}
    events = [json.loads(r.getMessage()) for r in caplog.records if r.name == "fastapps_auth.audit"]
    assert len(events) == len(tokens)
    assert {(e["method"], e["path"], e["tool"]) for e in events} == {("POST", "/mcp", "search")}
    assert leaks(captured_text(caplog, capsys) + "\n".join(seen), tokens) == []
