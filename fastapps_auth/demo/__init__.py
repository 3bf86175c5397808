"""``fastapps-auth demo``: the whole library working in one process, on loopback, on embedded defaults.

A dev issuer, a SQLite user store, the chain ``jwt → user-status → rate-limit → scopes`` with
the audit observer, and a protected ``WidgetMCPServer``, driven by the MCP Python client: first
with tokens in hand (valid, tampered, expired, banned, ...), then as a real client signs in, the
SDK's ``OAuthClientProvider`` starting from nothing and stepping up for a scope. Exit status 0
only if every scenario got its expected outcome. No PostgreSQL, Redis or internet.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from fastapps_auth.demo.oauth import Journey, run_journeys
from fastapps_auth.demo.report import print_journeys, print_scenarios
from fastapps_auth.demo.scenarios import Outcome, Scenario, run_scenario, scenarios
from fastapps_auth.demo.world import RATE_LIMIT, RATE_WINDOW, SCOPE, SCOPED_TOOL, USERS, AuditLines, DecisionRecorder

__all__ = ["Scenario", "run", "scenarios"]


async def _main(console: Any, bearer: list[Scenario], oauth: bool) -> int:
    from fastapps_auth.demo import world as demo_world

    started = time.perf_counter()
    audit_logger = logging.getLogger("fastapps_auth.audit")
    lines = AuditLines()
    saved = (audit_logger.level, audit_logger.propagate)
    audit_logger.addHandler(lines)
    audit_logger.setLevel(logging.INFO)
    audit_logger.propagate = False
    outcomes: list[Outcome] = []
    flows: list[Journey] = []
    try:
        with tempfile.TemporaryDirectory(prefix="fastapps-auth-demo-") as tmp:
            world = demo_world.start(Path(tmp), DecisionRecorder())
            try:
                console.print(
                    f"[bold]fastapps-auth demo[/bold]: dev issuer {world.issuer.url}, MCP server {world.resource}"
                )
                console.print(
                    f"chain: jwt → user-status (SQLite, {len(USERS)} users) → rate-limit "
                    f"({RATE_LIMIT}/{RATE_WINDOW:g}s, memory) → scopes ({SCOPED_TOOL} needs {SCOPE})\nobserver: audit\n"
                )
                for scenario in bearer:
                    outcomes.append(await run_scenario(scenario, world))
                if oauth:
                    flows = await run_journeys(world)
            finally:
                world.stop()
    finally:
        audit_logger.removeHandler(lines)
        audit_logger.setLevel(saved[0])
        audit_logger.propagate = saved[1]
    if outcomes:
        print_scenarios(console, outcomes)
    if flows:
        print_journeys(console, flows)
    console.print("\n[bold]Audit log[/bold] (fastapps_auth.audit, one line per decision; tokens only as fingerprints)")
    for line in lines.lines:
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    total = len(outcomes) + len(flows)
    failed = [o for o in outcomes if not o.ok] + [j for j in flows if not j.ok]
    elapsed = time.perf_counter() - started
    if failed:
        console.print(f"\n[red]{len(failed)} of {total} scenarios did not get the expected outcome[/red]")
        return 1
    console.print(f"\n[green]all {total} scenarios got the expected outcome[/green] in {elapsed:.1f} s")
    return 0


def run(*, bearer: list[Scenario] | None = None, oauth: bool = True) -> int:
    """Run the demo (``bearer``: the token scenarios, default all; ``oauth``: the sign-in scenarios).

    Returns 0 only if every scenario got its expected outcome, 1 otherwise, 2 without the fastapps extra.
    """
    from rich.console import Console

    console = Console()
    if console.width < 120:  # the tables' width; a narrower terminal wraps the audit lines only
        console = Console(width=120)
    # The MCP client logs every 4xx it receives, and its OAuth flow every failure, with a traceback;
    # the tables report them instead.
    quiet = [logging.getLogger(name) for name in ("mcp.client.streamable_http", "mcp.client.auth.oauth2")]
    levels = [log.level for log in quiet]
    for log in quiet:
        log.setLevel(logging.CRITICAL)
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
            return asyncio.run(_main(console, scenarios() if bearer is None else bearer, oauth))
    finally:
        for log, level in zip(quiet, levels, strict=True):
            log.setLevel(level)
