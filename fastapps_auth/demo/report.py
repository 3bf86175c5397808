"""The demo's tables: one row per token scenario, one row per step of the OAuth scenarios."""

from __future__ import annotations

from typing import Any

from fastapps_auth.demo.oauth import Journey
from fastapps_auth.demo.scenarios import Outcome

OK = "[green]✓[/green]"


def print_scenarios(console: Any, outcomes: list[Outcome]) -> None:
    from rich.table import Table

    table = Table(title="Token scenarios (MCP Python client → protected WidgetMCPServer)")
    for column in ("scenario", "HTTP", "deciding stage", "reason", "chain latency", "ok"):
        table.add_column(column, justify="right" if column in ("HTTP", "chain latency") else "left", no_wrap=True)
    for o in outcomes:
        latency = f"{o.latency_ms:.2f} ms" if o.latency_ms is not None else "—"
        name = o.scenario.name + (f" (session {o.calls})" if o.calls > 1 else "")
        mark = OK if o.ok else f"[red]✗ expected {o.scenario.status}[/red]"
        table.add_row(name, str(o.status), o.stage or "—", o.reason or "—", latency, mark)
    console.print(table)


def print_journeys(console: Any, journeys: list[Journey]) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="OAuth scenarios (the MCP SDK's OAuthClientProvider → dev issuer → WidgetMCPServer)")
    for column in ("step", "HTTP", "what came back", "ok"):
        table.add_column(column, justify="right" if column == "HTTP" else "left", no_wrap=column != "what came back")
    for journey in journeys:
        mark = OK if journey.ok else "[red]✗[/red]"
        table.add_section()
        table.add_row(f"[bold]{escape(journey.name)}[/bold]", "", "", mark)
        for i, step in enumerate(journey.steps):
            expected = journey.expected[i] if i < len(journey.expected) else None
            fits = expected == (step.kind, step.status)
            step_mark = OK if fits else f"[red]✗ expected {expected[1] if expected else 'nothing'}[/red]"
            table.add_row(escape(step.request), str(step.status or "—"), escape(step.detail), step_mark)
        if not journey.steps and not journey.error:
            table.add_row("[red]not run[/red]", "", "the scenario before it failed", "[red]✗[/red]")
        elif journey.error:
            table.add_row("[red]error[/red]", "", f"[red]{escape(journey.error)}[/red]", "[red]✗[/red]")
        else:
            for label in journey.failed_checks:
                table.add_row("[red]check failed[/red]", "", f"[red]{escape(label)}[/red]", "[red]✗[/red]")
    console.print(table)
