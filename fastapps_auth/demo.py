"""``fastapps-auth demo``: the whole library working in one process, on loopback, on embedded defaults.

A dev issuer, a SQLite user store, the chain ``jwt → user-status → rate-limit → scopes``
with the audit observer, and a protected ``WidgetMCPServer`` driven by the MCP Python
client through the scenarios a newcomer should see. Exit status 0 only if every
scenario got its expected outcome. No PostgreSQL, Redis or internet.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import sqlite3
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from fastapps_auth.component import ComponentOptions
from fastapps_auth.decision import Decision
from fastapps_auth.observer import Observer

AUDIENCE = "fastapps-auth-demo"
RATE_LIMIT = 8
RATE_WINDOW = 60.0
#: (id, active, banned). Each MCP tool call is about four HTTP requests (initialize, initialized,
#: tools/call, tools/list), each one verified and counted: the scenarios spread over users so that
#: only the rate-limit scenario reaches the limit.
USERS = [
    ("alice", True, False),
    ("erin", True, False),
    ("dave", True, False),
    ("bob", True, True),
    ("carol", False, False),
]
SCOPED_TOOL, SCOPE = "report", "reports:read"
#: Every step must answer within this; a hang is a failed scenario, not a stuck demo.
STEP_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class Scenario:
    """A request to make and what must come back: HTTP status, deciding stage and reason."""

    name: str
    token: Callable[[Any], str | None]  # from the RunningIssuer
    tool: str
    status: int
    stage: str | None = None
    reason: str | None = None
    repeat_until_rejected: int = 1  # calls made (at most) to reach a rejection, for the rate limit


@dataclass(slots=True)
class Outcome:
    """What one scenario got."""

    scenario: Scenario
    status: int | None
    stage: str | None
    reason: str | None
    latency_ms: float | None
    calls: int = 1
    detail: str = ""

    @property
    def ok(self) -> bool:
        s = self.scenario
        return (self.status, self.stage, self.reason) == (s.status, s.stage, s.reason)


class DecisionRecorder(Observer[ComponentOptions]):
    """Keeps the decisions the server made, so the demo can show which stage decided (bounded)."""

    plugin_name: ClassVar[str] = "demo-recorder"

    def __init__(self, limit: int = 1000) -> None:
        super().__init__(name="demo-recorder")
        self._lock = threading.Lock()
        self._limit = limit
        self.decisions: list[Decision] = []

    def __call__(self, decision: Decision) -> None:
        with self._lock:
            if len(self.decisions) < self._limit:
                self.decisions.append(decision)

    def since(self, index: int) -> list[Decision]:
        with self._lock:
            return self.decisions[index:]


class AuditLines(logging.Handler):
    """Collects the audit observer's log lines to print after the table (bounded)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.lines) < 1000:
            self.lines.append(record.getMessage())


def scenarios() -> list[Scenario]:
    """The demo's scenarios, in order (the chain's stages are named by their plugin names)."""
    from fastapps_auth.testing.issuer import tamper

    return [
        Scenario("valid user calls a widget", lambda i: i.mint("alice"), "hello", 200),
        Scenario(
            "user with the scope calls report",
            lambda i: i.mint("erin", scopes=[SCOPE]),
            SCOPED_TOOL,
            200,
        ),
        Scenario("no token", lambda i: None, "hello", 401, None, "missing_token"),
        Scenario("tampered token", lambda i: tamper(i.mint("alice")), "hello", 401, "jwt", "bad_signature"),
        Scenario("expired token", lambda i: i.expired("alice"), "hello", 401, "jwt", "expired"),
        Scenario("banned user", lambda i: i.mint("bob"), "hello", 401, "user-status", "user_banned"),
        Scenario("inactive user", lambda i: i.mint("carol"), "hello", 401, "user-status", "user_inactive"),
        Scenario("missing scope", lambda i: i.mint("alice"), SCOPED_TOOL, 403, "scopes", "insufficient_tool_scope"),
        Scenario(
            "rate limit reached",
            lambda i: i.mint("dave"),
            "hello",
            429,
            "rate-limit",
            "rate_limited",
            repeat_until_rejected=RATE_LIMIT,
        ),
    ]


def _make_users(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE users (id TEXT PRIMARY KEY, active BOOLEAN, banned BOOLEAN)")
        db.executemany("INSERT INTO users (id, active, banned) VALUES (?, ?, ?)", USERS)
    db.close()


def _widgets() -> list[Any]:
    from fastapps.builder.compiler import WidgetBuildResult
    from fastapps.core.widget import BaseWidget, ClientContext, UserContext
    from pydantic import BaseModel, Field

    class HelloInput(BaseModel):
        name: str = Field(default="world", description="Who to greet.")

    class HelloWidget(BaseWidget):  # type: ignore[misc]
        identifier = "hello"
        title = "Hello"
        input_schema = HelloInput

        async def execute(
            self, input_data: BaseModel, context: ClientContext | None = None, user: UserContext | None = None
        ) -> dict[str, Any]:
            who = user.subject if user is not None else None
            return {"message": f"Hello {getattr(input_data, 'name', 'world')}, from {who}"}

    class ReportInput(BaseModel):
        quarter: str = Field(default="Q3", description="Which quarter.")

    class ReportWidget(BaseWidget):  # type: ignore[misc]
        identifier = SCOPED_TOOL
        title = "Quarterly report"
        input_schema = ReportInput

        async def execute(
            self, input_data: BaseModel, context: ClientContext | None = None, user: UserContext | None = None
        ) -> dict[str, Any]:
            return {"quarter": getattr(input_data, "quarter", "Q3"), "revenue": 42}

    def build(name: str) -> Any:
        return WidgetBuildResult(name=name, hash="demo", html=f"<div id='{name}'></div>")

    return [HelloWidget(build("hello")), ReportWidget(build(SCOPED_TOOL))]


async def _mcp_call(url: str, token: str | None, tool: str) -> tuple[list[tuple[int, str]], str]:
    """Initialize an MCP session and call ``tool``: (status, WWW-Authenticate) of each response, and an error."""
    import httpx
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    statuses: list[tuple[int, str]] = []

    async def record(response: httpx.Response) -> None:
        statuses.append((response.status_code, response.headers.get("www-authenticate", "")))

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    error = ""
    async with httpx.AsyncClient(headers=headers, event_hooks={"response": [record]}, timeout=STEP_TIMEOUT) as http:
        try:
            async with asyncio.timeout(STEP_TIMEOUT):
                async with (
                    streamable_http_client(url, http_client=http) as (read, write, _),
                    ClientSession(read, write) as session,
                ):
                    await session.initialize()
                    result = await session.call_tool(tool, {})
                    if result.isError:
                        error = "tool error"
        except Exception as exc:  # the MCP client surfaces a 401/403/429 as an exception
            error = type(exc).__name__
    return statuses, error


def _final_response(statuses: list[tuple[int, str]]) -> tuple[int | None, str]:
    """The response that decided the call: the first non-2xx one, else the last."""
    for status, www in statuses:
        if status >= 300:
            return status, www
    return statuses[-1] if statuses else (None, "")


async def _run_scenario(scenario: Scenario, url: str, issuer: Any, recorder: DecisionRecorder) -> Outcome:
    token = scenario.token(issuer)
    status: int | None = None
    www = ""
    decisions: list[Decision] = []
    calls = 0
    for calls in range(1, scenario.repeat_until_rejected + 1):  # noqa: B007 - calls is reported
        mark = len(recorder.since(0))
        statuses, _error = await _mcp_call(url, token, scenario.tool)
        status, www = _final_response(statuses)
        decisions = recorder.since(mark)
        if status is not None and status >= 300:
            break
    denied = next((d for d in decisions if not d.allowed), None)
    call = next((d for d in decisions if d.request is not None and d.request.mcp_method == "tools/call"), None)
    deciding = denied or call or (decisions[-1] if decisions else None)
    if deciding is None:
        # No chain decision: the request carried no bearer token, and the server's bare
        # challenge (no error parameter, RFC 6750 §3.1) says so.
        reason = "no_credentials" if status == 401 and "error=" not in www else None
        return Outcome(scenario, status, None, reason, None, calls)
    return Outcome(
        scenario,
        status,
        deciding.stage,
        deciding.reason,
        round(deciding.duration * 1000, 2),
        calls,
    )


async def _main(console: Any) -> int:
    from rich.table import Table

    from fastapps_auth.chain import VerifierChain
    from fastapps_auth.dev_issuer.server import BackgroundServer
    from fastapps_auth.integrations.fastapps import WidgetMCPServer
    from fastapps_auth.stages.audit import AuditObserver
    from fastapps_auth.stages.jwt import JWTVerifier
    from fastapps_auth.stages.rate_limit import RateLimitStage
    from fastapps_auth.stages.scopes import ScopesStage
    from fastapps_auth.stages.user_status import UserStatusStage
    from fastapps_auth.testing.issuer import start_issuer

    started = time.perf_counter()
    audit_logger = logging.getLogger("fastapps_auth.audit")
    lines = AuditLines()
    saved = (audit_logger.level, audit_logger.propagate)
    audit_logger.addHandler(lines)
    audit_logger.setLevel(logging.INFO)
    audit_logger.propagate = False
    with tempfile.TemporaryDirectory(prefix="fastapps-auth-demo-") as tmp:
        db = Path(tmp) / "users.db"
        _make_users(db)
        issuer = start_issuer(audience=AUDIENCE)
        recorder = DecisionRecorder()
        chain = VerifierChain(
            JWTVerifier(issuer_url=issuer.url, audience=AUDIENCE, algorithms=["RS256", "ES256"], require_typ="at+jwt"),
            UserStatusStage(dsn=f"sqlite:///{db}"),
            RateLimitStage(limit=RATE_LIMIT, window=RATE_WINDOW, backend="memory://"),
            ScopesStage(tools={SCOPED_TOOL: [SCOPE]}),
            observers=[AuditObserver(renderer="logfmt", include_trace=False), recorder],
        )
        server = WidgetMCPServer("fastapps-auth-demo", _widgets(), token_verifier=chain)
        http = BackgroundServer(server.get_app(), on_stop=[chain.aclose]).start()
        url = f"{http.url}/mcp"
        console.print(f"[bold]fastapps-auth demo[/bold]: dev issuer {issuer.url}, MCP server {url}")
        console.print(
            f"chain: jwt → user-status (SQLite, {len(USERS)} users) → rate-limit ({RATE_LIMIT}/{RATE_WINDOW:g}s, "
            f"memory) → scopes ({SCOPED_TOOL} needs {SCOPE}); observer: audit\n"
        )
        outcomes: list[Outcome] = []
        try:
            for scenario in scenarios():
                outcomes.append(await _run_scenario(scenario, url, issuer, recorder))
        finally:
            http.stop()  # closes the chain on the server's loop
            issuer.stop()
            audit_logger.removeHandler(lines)
            audit_logger.setLevel(saved[0])
            audit_logger.propagate = saved[1]

    table = Table(title="Scenarios (MCP Python client → protected WidgetMCPServer)")
    for column in ("scenario", "HTTP", "deciding stage", "reason", "chain latency", "ok"):
        table.add_column(column, justify="right" if column in ("HTTP", "chain latency") else "left", no_wrap=True)
    for o in outcomes:
        latency = f"{o.latency_ms:.2f} ms" if o.latency_ms is not None else "—"
        name = o.scenario.name + (f" (session {o.calls})" if o.calls > 1 else "")
        mark = "[green]✓[/green]" if o.ok else f"[red]✗ expected {o.scenario.status}[/red]"
        table.add_row(name, str(o.status), o.stage or "—", o.reason or "—", latency, mark)
    console.print(table)
    console.print("\n[bold]Audit log[/bold] (fastapps_auth.audit, one line per decision; tokens only as fingerprints)")
    for line in lines.lines:
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    failed = [o for o in outcomes if not o.ok]
    elapsed = time.perf_counter() - started
    if failed:
        console.print(f"\n[red]{len(failed)} of {len(outcomes)} scenarios did not get the expected outcome[/red]")
        return 1
    console.print(f"\n[green]all {len(outcomes)} scenarios got the expected outcome[/green] in {elapsed:.1f} s")
    return 0


def run() -> int:
    """Run the demo; 0 only if every scenario got its expected outcome."""
    from rich.console import Console

    console = Console()
    if console.width < 110:  # the table's width; a narrower terminal wraps the audit lines only
        console = Console(width=110)
    # The MCP client logs every 4xx it receives with a traceback; the table reports them instead.
    client_log = logging.getLogger("mcp.client.streamable_http")
    level = client_log.level
    client_log.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            # FastMCP imports authlib modules that warn about their own deprecation; not the newcomer's concern.
            # authlib installs an "always" filter for its warning when imported, so import it before ours.
            with contextlib.suppress(ImportError):
                importlib.import_module("authlib.deprecate")
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                import fastapps  # noqa: F401  (the widget server needs the fastapps extra)
                import fastmcp  # noqa: F401
            except ImportError:
                console.print("the demo needs the fastapps extra: pip install 'fastapps-auth[fastapps,sqlite]'")
                return 2
            return asyncio.run(_main(console))
    finally:
        client_log.setLevel(level)


if __name__ == "__main__":
    raise SystemExit(run())
