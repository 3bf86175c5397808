"""``fastapps-auth demo``: every scenario gets its expected outcome, and a wrong one fails the run."""

from __future__ import annotations

import re

import pytest

from fastapps_auth import demo
from fastapps_auth.demo import oauth


def test_demo_runs_every_scenario_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert demo.run() == 0
    out = capsys.readouterr().out
    found = re.search(r"dev issuer (http://127\.0\.0\.1:\d+), MCP server (http://127\.0\.0\.1:\d+/mcp)", out)
    assert found
    issuer, server = found.groups()
    rows = {
        "valid user calls a widget": r"200 │ —",
        "no token": r"401 │ —\s+│ missing_token",
        "tampered token": r"401 │ jwt\s+│ bad_signature",
        "expired token": r"401 │ jwt\s+│ expired",
        "banned user": r"401 │ user-status\s+│ user_banned",
        "inactive user": r"401 │ user-status\s+│ user_inactive",
        "missing scope": r"403 │ scopes\s+│ insufficient_tool_scope",
        "rate limit reached": r"429 │ rate-limit\s+│ rate_limited",
    }
    for name, expected in rows.items():
        assert re.search(re.escape(name) + r"[^│]*│\s+" + expected, out), name
    # The OAuth scenarios: each step of the sign-in, then the step-up, with the token bound to the server.
    steps = [
        r"POST /mcp initialize, no token\s+│\s+401 │ WWW-Authenticate: Bearer resource_metadata=",
        r"GET /\.well-known/oauth-protected-resource/mcp\s+│\s+200 │ authorization_servers = \[\"" + re.escape(issuer),
        r"GET issuer metadata \(RFC 8414\)\s+│\s+200 │ authorize, token, register; PKCE S256",
        r"POST issuer /register \(RFC 7591\)\s+│\s+201 │ client_id dcr-",
        r"GET issuer /authorize login_hint=frank\s+│\s+302 │ scope=\"openid profile email\", S256; state echoed",
        r"POST issuer /token, code \+ PKCE verifier\s+│\s+200 │ aud=" + re.escape(server),
        r"POST /mcp tools/call hello\s+│\s+200 │ Hello world, from frank",
        r"POST /mcp tools/call report\s+│\s+403 │ insufficient_scope, scope=\"reports:read\"",
        r"GET issuer /authorize login_hint=frank\s+│\s+302 │ scope=\"reports:read\"",
        r"POST /mcp tools/call report\s+│\s+200 │ \{\"quarter\": \"Q3\", \"revenue\": 42\}",
    ]
    position = 0
    for step in steps:
        found_step = re.compile(step).search(out, position)
        assert found_step, step
        position = found_step.end()
    total = len(demo.scenarios()) + 2
    assert f"all {total} scenarios got the expected outcome" in out
    # the audit lines: one per decision, fingerprints only
    audit = [line for line in out.splitlines() if line.startswith("event='auth.decision'")]
    assert any("reason='user_banned'" in line for line in audit)
    assert any("subject='frank'" in line and "tool='report'" in line for line in audit)
    with_token = [line for line in audit if "reason='missing_token'" not in line]  # the no-token 401 has none
    assert all(re.search(r"token_fingerprint='[0-9a-f]{12}'", line) for line in with_token)
    assert not re.search(r"eyJ[A-Za-z0-9_-]{10,}", out)  # no token, nor a slice of one, is printed


def test_a_scenario_that_misses_its_expectation_fails_the_demo(capsys: pytest.CaptureFixture[str]) -> None:
    wrong = demo.Scenario("banned user let through?", lambda t: t.mint("bob"), "hello", 200)
    assert demo.run(bearer=[wrong], oauth=False) == 1
    out = capsys.readouterr().out
    assert "1 of 1 scenarios did not get the expected outcome" in out
    assert re.search(r"banned user let through\?\s+│\s+401 │ user-status", out)


def test_a_sign_in_that_fails_fails_the_demo(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(oauth, "OAUTH_USER", "mallory")  # not a user of the dev issuer's login page
    assert demo.run(bearer=[], oauth=True) == 1
    out = capsys.readouterr().out
    assert re.search(r"GET issuer /authorize login_hint=mallory\s+│\s+— │ access_denied: login_hint names no", out)
    assert re.search(r"error\s+│\s+│ LoginError: access_denied", out)
    assert re.search(r"not run\s+│\s+│ the scenario before it failed", out)
    assert "2 of 2 scenarios did not get the expected outcome" in out  # the step-up never got to run
