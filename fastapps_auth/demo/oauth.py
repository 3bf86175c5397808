"""The demo's OAuth scenarios: the MCP Python SDK's own ``OAuthClientProvider`` starts from nothing.

401 -> protected resource metadata -> authorization server metadata -> registration ->
authorization code + PKCE (a headless login as ``frank``) -> a token for this server ->
``tools/call`` succeeds; then ``report`` answers 403 with ``scope="reports:read"`` and the client
re-authorizes for it. Every HTTP step is recorded and checked against what the specification says
comes next. Tokens and codes are never shown: only what they say (``aud``, ``scope``).
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapps_auth.demo.scenarios import STEP_TIMEOUT
from fastapps_auth.demo.world import SCOPE, SCOPED_TOOL, World
from fastapps_auth.testing import HeadlessLogin, LoginError, oauth_client

OAUTH_USER = "frank"


@dataclass(slots=True)
class Step:
    """One HTTP exchange of the flow: what kind, the status, what it said."""

    kind: str
    request: str
    status: int | None
    detail: str = ""
    facts: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Journey:
    """A part of the flow: the steps it must take, checks on what they said, and what happened."""

    name: str
    expected: list[tuple[str, int]]
    checks: list[tuple[str, Callable[[list[Step]], bool]]]
    steps: list[Step] = field(default_factory=list)
    error: str = ""

    @property
    def failed_checks(self) -> list[str]:
        return [label for label, check in self.checks if not check(self.steps)]

    @property
    def ok(self) -> bool:
        got = [(s.kind, s.status) for s in self.steps]
        return not self.error and got == self.expected and not self.failed_checks


def _claims(token: str) -> dict[str, Any]:
    """A JWT's payload, read for display only (the chain is what verifies it)."""
    try:
        payload = token.split(".")[1]
        data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _fact(steps: list[Step], kind: str, name: str) -> str:
    return next((s.facts.get(name, "") for s in steps if s.kind == kind), "")


class StepLog:
    """Records the flow's HTTP exchanges from the client's ``httpx`` hooks and the headless login."""

    def __init__(self, issuer_url: str, resource: str) -> None:
        self.issuer_url = issuer_url
        self.resource = resource
        self.steps: list[Step] = []

    async def on_response(self, response: Any) -> None:
        request = response.request
        url = str(request.url).split("?")[0]
        path = request.url.path
        if url.startswith(self.issuer_url):
            await self._issuer_step(path, response)
        elif "/.well-known/oauth-protected-resource" in path:
            await response.aread()
            servers = response.json().get("authorization_servers", []) if response.status_code == 200 else []
            detail = "authorization_servers = " + json.dumps(servers)
            self.steps.append(Step("resource metadata", f"GET {path}", response.status_code, detail))
        elif url == self.resource and request.method == "POST":
            self._mcp_step(request, response)

    async def _issuer_step(self, path: str, response: Any) -> None:
        status = response.status_code
        await response.aread()
        body = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
        if status >= 300:
            step = Step(path, f"{response.request.method} issuer {path}", status, str(body.get("error_description")))
        elif path == "/.well-known/oauth-authorization-server":
            methods = "/".join(body.get("code_challenge_methods_supported", []))
            step = Step("server metadata", "GET issuer metadata (RFC 8414)", status, f"authorize, token, register; PKCE {methods}")  # fmt: skip # noqa: E501
        elif path == "/register":
            secret = " (+ a secret)" if body.get("client_secret") else ""
            step = Step("register", "POST issuer /register (RFC 7591)", status, f"client_id {body.get('client_id')}{secret}")  # fmt: skip # noqa: E501
        elif path == "/token":
            claims = _claims(str(body.get("access_token", "")))
            facts = {"aud": str(claims.get("aud", "")), "scope": str(body.get("scope", ""))}
            detail = f'aud={facts["aud"]} scope="{facts["scope"]}"'
            step = Step("token", "POST issuer /token, code + PKCE verifier", status, detail, facts)
        else:
            step = Step(path, f"{response.request.method} issuer {path}", status)
        self.steps.append(step)

    def _mcp_step(self, request: Any, response: Any) -> None:
        try:
            rpc = json.loads(request.content)
        except ValueError:
            rpc = {}
        method = rpc.get("method", "?") if isinstance(rpc, dict) else "?"
        tool = rpc.get("params", {}).get("name") if method == "tools/call" else None
        status = response.status_code
        if status < 300 and method != "tools/call":
            return  # initialize, notifications, tools/list: the session's plumbing
        kind = f"tools/call {tool}" if tool else method
        www = response.headers.get("www-authenticate", "")
        error, scope = _param(www, "error"), _param(www, "scope")
        if error:
            detail = f'{error}, scope="{scope}"' if scope else error
        else:
            detail = "WWW-Authenticate: Bearer resource_metadata=…" if "resource_metadata" in www else ""
        bearer = "" if "authorization" in request.headers else ", no token"
        self.steps.append(Step(kind, f"POST /mcp {kind}{bearer}", status, detail, {"challenge": www}))

    def login(self, login: HeadlessLogin, status: int | None, error: str = "") -> None:
        sent = login.requests[-1] if login.requests else {}
        came = login.responses[-1] if login.responses and not error else {}
        echoed = "state echoed" if came.get("state") == sent.get("state") else "state NOT echoed"
        detail = error or f'scope="{sent.get("scope", "")}", {sent.get("code_challenge_method")}; {echoed}'
        request = f"GET issuer /authorize login_hint={login.user}"
        self.steps.append(Step("authorize", request, status, detail, {"scope": sent.get("scope", "")}))

    def result(self, text: str) -> None:
        """The tool's answer, on the last ``tools/call`` step."""
        call = next((s for s in reversed(self.steps) if s.kind.startswith("tools/call")), None)
        if call is not None:
            call.detail, call.facts["result"] = text, text


def _param(header: str, name: str) -> str:
    """A parameter of a ``WWW-Authenticate`` challenge (quoted values only, as the server sends them)."""
    found = re.search(rf'{name}="([^"]*)"', header)
    return found.group(1) if found else ""


class RecordedLogin(HeadlessLogin):
    """The headless login, recording its step in the log."""

    def __init__(self, log: StepLog, user: str) -> None:
        super().__init__(user, timeout=STEP_TIMEOUT)
        self.log = log

    async def redirect_handler(self, authorization_url: str) -> None:
        try:
            await super().redirect_handler(authorization_url)
        except LoginError as exc:
            self.log.login(self, None, str(exc))
            raise
        self.log.login(self, 302)


def journeys(resource: str) -> list[Journey]:
    """The OAuth scenarios and what each must show."""
    report = f"tools/call {SCOPED_TOOL}"

    def token_for_the_server(steps: list[Step]) -> bool:
        return _fact(steps, "token", "aud") == resource

    def hello_as_the_user(steps: list[Step]) -> bool:
        return f"from {OAUTH_USER}" in _fact(steps, "tools/call hello", "result")

    def challenge_names_the_scope(steps: list[Step]) -> bool:
        return f'scope="{SCOPE}"' in _fact(steps, report, "challenge")

    def new_token_has_the_scope(steps: list[Step]) -> bool:
        return SCOPE in _fact(steps, "token", "scope").split()

    sign_in = [
        ("initialize", 401),
        ("resource metadata", 200),
        ("server metadata", 200),
        ("register", 201),
        ("authorize", 302),
        ("token", 200),
        ("tools/call hello", 200),
    ]
    return [
        Journey(
            f"sign in from nothing, as {OAUTH_USER}",
            sign_in,
            [
                ("the token's aud is the server", token_for_the_server),
                (f"hello answers as {OAUTH_USER}", hello_as_the_user),
            ],
        ),
        Journey(
            f"step up: {SCOPED_TOOL} needs {SCOPE}",
            [(report, 403), ("authorize", 302), ("token", 200), (report, 200)],
            [
                (f'the 403 says scope="{SCOPE}"', challenge_names_the_scope),
                (f"the new token has {SCOPE}", new_token_has_the_scope),
            ],
        ),
    ]


def _text(result: Any) -> str:
    if getattr(result, "isError", False):
        return "tool error"
    data = getattr(result, "structuredContent", None) or {}
    return str(data["message"]) if "message" in data else json.dumps(data, separators=(", ", ": "))[:80]


async def run_journeys(world: World) -> list[Journey]:
    """Run the flow in one MCP session; split its steps between the two journeys."""
    import httpx
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    log = StepLog(world.issuer.url, world.resource)
    auth = oauth_client(world.resource, login=RecordedLogin(log, OAUTH_USER), client_name="fastapps-auth demo")
    first, second = journeys(world.resource)
    current = first
    try:
        async with asyncio.timeout(STEP_TIMEOUT * 3):
            async with (
                httpx.AsyncClient(auth=auth, event_hooks={"response": [log.on_response]}, timeout=STEP_TIMEOUT) as http,
                streamable_http_client(world.resource, http_client=http) as (read, write, _),
                ClientSession(read, write) as session,
            ):
                await session.initialize()
                log.result(_text(await session.call_tool("hello", {})))
                first.steps, log.steps, current = log.steps, [], second
                log.result(_text(await session.call_tool(SCOPED_TOOL, {})))
    except Exception as exc:  # what failed is reported in the table, the run exits 1
        leaf: BaseException = exc
        while isinstance(leaf, BaseExceptionGroup) and leaf.exceptions:  # the MCP client's task groups
            leaf = leaf.exceptions[0]
        current.error = f"{type(leaf).__name__}: {str(leaf)[:160]}"
    current.steps = log.steps
    return [first, second]
