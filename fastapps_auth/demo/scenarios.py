"""The demo's token scenarios: a token in hand (valid, tampered, expired, a banned user's...), one session each."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapps_auth import Decision
from fastapps_auth.demo.world import RATE_LIMIT, SCOPE, SCOPED_TOOL, DecisionRecorder, World

#: Every step must answer within this; a hang is a failed scenario, not a stuck demo.
STEP_TIMEOUT = 10.0


class Tokens:
    """What a scenario gets its token from: the dev issuer, minting for the demo server's audience."""

    def __init__(self, issuer: Any, resource: str) -> None:
        self.issuer = issuer
        self.resource = resource

    def mint(self, subject: str, **kwargs: Any) -> str:
        kwargs.setdefault("audience", self.resource)
        token: str = self.issuer.mint(subject, **kwargs)
        return token

    def expired(self, subject: str) -> str:
        token: str = self.issuer.expired(subject, audience=self.resource)
        return token

    def tampered(self, subject: str) -> str:
        from fastapps_auth.testing import tamper

        return tamper(self.mint(subject))


@dataclass(frozen=True, slots=True)
class Scenario:
    """A request to make and what must come back: HTTP status, deciding stage and reason."""

    name: str
    token: Callable[[Tokens], str | None]
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

    @property
    def ok(self) -> bool:
        s = self.scenario
        return (self.status, self.stage, self.reason) == (s.status, s.stage, s.reason)


def scenarios() -> list[Scenario]:
    """The token scenarios, in order (the chain's stages are named by their plugin names)."""
    return [
        Scenario("valid user calls a widget", lambda t: t.mint("alice"), "hello", 200),
        Scenario("user with the scope calls report", lambda t: t.mint("erin", scopes=[SCOPE]), SCOPED_TOOL, 200),
        Scenario("no token", lambda t: None, "hello", 401, None, "missing_token"),
        Scenario("tampered token", lambda t: t.tampered("alice"), "hello", 401, "jwt", "bad_signature"),
        Scenario("expired token", lambda t: t.expired("alice"), "hello", 401, "jwt", "expired"),
        Scenario("banned user", lambda t: t.mint("bob"), "hello", 401, "user-status", "user_banned"),
        Scenario("inactive user", lambda t: t.mint("carol"), "hello", 401, "user-status", "user_inactive"),
        Scenario("missing scope", lambda t: t.mint("alice"), SCOPED_TOOL, 403, "scopes", "insufficient_tool_scope"),
        Scenario(
            "rate limit reached",
            lambda t: t.mint("dave"),
            "hello",
            429,
            "rate-limit",
            "rate_limited",
            repeat_until_rejected=RATE_LIMIT,
        ),
    ]


async def mcp_call(url: str, token: str | None, tool: str) -> list[tuple[int, str]]:
    """Initialize an MCP session and call ``tool``: (status, WWW-Authenticate) of each response."""
    import httpx
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    statuses: list[tuple[int, str]] = []

    async def record(response: httpx.Response) -> None:
        statuses.append((response.status_code, response.headers.get("www-authenticate", "")))

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(headers=headers, event_hooks={"response": [record]}, timeout=STEP_TIMEOUT) as http:
        # The MCP client surfaces a 401/403/429 as an exception: the recorded statuses tell what happened.
        with contextlib.suppress(Exception):
            async with asyncio.timeout(STEP_TIMEOUT):
                async with (
                    streamable_http_client(url, http_client=http) as (read, write, _),
                    ClientSession(read, write) as session,
                ):
                    await session.initialize()
                    await session.call_tool(tool, {})
    return statuses


def _final_response(statuses: list[tuple[int, str]]) -> tuple[int | None, str]:
    """The response that decided the call: the first non-2xx one, else the last."""
    for status, www in statuses:
        if status >= 300:
            return status, www
    return statuses[-1] if statuses else (None, "")


async def run_scenario(scenario: Scenario, world: World) -> Outcome:
    token = scenario.token(Tokens(world.issuer, world.resource))
    recorder: DecisionRecorder = world.recorder
    status: int | None = None
    www = ""
    decisions: list[Decision] = []
    calls = 0
    for calls in range(1, scenario.repeat_until_rejected + 1):  # noqa: B007 - calls is reported
        mark = len(recorder.since(0))
        status, www = _final_response(await mcp_call(world.resource, token, scenario.tool))
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
    return Outcome(scenario, status, deciding.stage, deciding.reason, round(deciding.duration * 1000, 2), calls)
