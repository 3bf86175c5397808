"""``fastapps-auth demo``: every scenario gets its expected outcome, and a wrong one fails the run."""

from __future__ import annotations

import re

import pytest

from fastapps_auth import demo


def test_demo_runs_every_scenario_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert demo.run() == 0
    out = capsys.readouterr().out
    assert re.search(r"dev issuer http://127\.0\.0\.1:\d+, MCP server http://127\.0\.0\.1:\d+/mcp", out)
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
    assert f"all {len(demo.scenarios())} scenarios got the expected outcome" in out
    # the audit lines: one per decision, fingerprints only
    audit = [line for line in out.splitlines() if line.startswith("event='auth.decision'")]
    assert any("reason='user_banned'" in line for line in audit)
    with_token = [line for line in audit if "reason='missing_token'" not in line]  # the no-token 401 has none
    assert len(with_token) < len(audit)
    assert all(re.search(r"token_fingerprint='[0-9a-f]{12}'", line) for line in with_token)
    assert not re.search(r"eyJ[A-Za-z0-9_-]{10,}", out)  # no token, nor a slice of one, is printed


def test_a_scenario_that_misses_its_expectation_fails_the_demo(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    wrong = demo.Scenario("banned user let through?", lambda i: i.mint("bob"), "hello", 200)
    monkeypatch.setattr(demo, "scenarios", lambda: [wrong])
    assert demo.run() == 1
    out = capsys.readouterr().out
    assert "1 of 1 scenarios did not get the expected outcome" in out
    assert re.search(r"banned user let through\?\s+│\s+401 │ user-status", out)
