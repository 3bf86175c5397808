"""What the demo runs against: a dev issuer, a SQLite users table, the chain and a protected WidgetMCPServer.

Built from the public API only (stages, ``VerifierChain``, the FastApps integration) and
``fastapps_auth.testing`` (the dev issuer and a loopback server), on embedded defaults.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from fastapps_auth import Decision, Observer, VerifierChain
from fastapps_auth.component import ComponentOptions

RATE_LIMIT = 8
RATE_WINDOW = 60.0
#: id -> (active, banned). Each MCP session is about four HTTP requests, each verified and counted by
#: the rate limiter: the scenarios spread over users so that only the rate-limit scenario reaches it.
USERS: dict[str, tuple[bool, bool]] = {
    "alice": (True, False),
    "erin": (True, False),
    "dave": (True, False),
    "frank": (True, False),
    "bob": (True, True),
    "carol": (False, False),
}
SCOPED_TOOL, SCOPE = "report", "reports:read"


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
    """Collects the audit observer's log lines to print after the tables (bounded)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.lines) < 1000:
            self.lines.append(record.getMessage())


def widgets() -> list[Any]:
    """``hello`` (any signed-in user) and ``report`` (needs ``reports:read``)."""
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


@dataclass
class World:
    """The running demo: ``resource`` is the MCP endpoint, and the audience its tokens must carry."""

    issuer: Any  # fastapps_auth.testing's RunningIssuer
    http: Any  # fastapps_auth.testing's BackgroundServer
    resource: str
    recorder: DecisionRecorder

    def stop(self) -> None:
        self.http.stop()  # closes the chain on the server's loop
        self.issuer.stop()


def start(folder: Path, recorder: DecisionRecorder) -> World:
    """Start the issuer and the protected server on loopback (users table in ``folder``)."""
    from fastapps_auth.backends.sqlite import create_demo_database
    from fastapps_auth.integrations.fastapps import WidgetMCPServer
    from fastapps_auth.stages.audit import AuditObserver
    from fastapps_auth.stages.jwt import JWTVerifier
    from fastapps_auth.stages.rate_limit import RateLimitStage
    from fastapps_auth.stages.scopes import ScopesStage
    from fastapps_auth.stages.user_status import UserStatusStage
    from fastapps_auth.testing import BackgroundServer, start_issuer

    db = create_demo_database(folder / "users.db", USERS)  # the users table's one builder
    issuer = start_issuer(users=list(USERS))  # the login page lists the same users
    chains: list[VerifierChain] = []

    def build(base: str) -> Any:
        resource = f"{base}/mcp"
        chain = VerifierChain(
            # A spec-compliant client's token is for this server (RFC 8707): aud = its resource URL.
            JWTVerifier(issuer_url=issuer.url, audience=resource, algorithms=["RS256", "ES256"], require_typ="at+jwt"),
            UserStatusStage(dsn=f"sqlite:///{db}"),
            RateLimitStage(limit=RATE_LIMIT, window=RATE_WINDOW, backend="memory://"),
            ScopesStage(tools={SCOPED_TOOL: [SCOPE]}),
            observers=[AuditObserver(renderer="logfmt", include_trace=False), recorder],
        )
        chains.append(chain)
        server = WidgetMCPServer(
            "fastapps-auth-demo",
            widgets(),
            auth_issuer_url=issuer.url,
            auth_resource_server_url=resource,
            token_verifier=chain,
        )
        return server.get_app()

    try:
        http = BackgroundServer(build, factory=True, on_stop=[lambda: chains[0].aclose()]).start()
    except BaseException:
        issuer.stop()
        raise
    return World(issuer, http, f"{http.url}/mcp", recorder)
