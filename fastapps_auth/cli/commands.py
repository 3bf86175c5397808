"""``fastapps-auth plugins`` and ``fastapps-auth check [--connect]``."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel
from rich.markup import escape
from rich.table import Table

from fastapps_auth.cli.app import EXIT_REJECTED, EXIT_USAGE, app, build_chain, error, fail, out, plain
from fastapps_auth.cli.options_info import COMPUTED, OptionInfo, options_of

#: Seconds ``check --connect`` gives each component's ``probe()`` (they run concurrently).
PROBE_TIMEOUT = 10.0

# -- plugins ------------------------------------------------------------------------------------


def default_label(info: OptionInfo) -> str:
    """The option's default as TOML/JSON would spell it, or ``required``."""
    text = info.default_text
    if text is not None:
        return text
    return "required" if info.required else "(computed)" if info.default is COMPUTED else "-"


def option_rows(model: type[BaseModel]) -> list[dict[str, str]]:
    """Name, type, default and description of every field of an options model."""
    return [
        {"name": o.name, "type": o.type_text, "default": default_label(o), "description": o.description}
        for o in options_of(model)
    ]


@app.command("plugins")
def plugins_command(
    names: Annotated[
        list[str] | None, typer.Argument(help="Show only these plugins.", metavar="NAME", show_default=False)
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per plugin, one per line.")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Exit 1 if any plugin fails to load.")] = False,
) -> None:
    """Every installed stage and observer: kind, distribution, version and options. Broken ones say why."""
    from fastapps_auth.registry import plugins

    found = plugins()
    if names:
        unknown = sorted(set(names) - {p.name for p in found})
        if unknown:
            fail(f"no plugin named {', '.join(map(repr, unknown))} (installed: {', '.join(p.name for p in found)})")
        found = [p for p in found if p.name in names]
    for info in found:
        options = option_rows(info.component.options_model) if info.component is not None else []
        if as_json:
            record = {
                "name": info.name,
                "kind": info.kind,
                "distribution": info.distribution,
                "version": info.version,
                "target": info.value,
                "options": options,
                "error": info.error,
            }
            typer.echo(json.dumps(record))
            continue
        dist = f"{info.distribution or 'unknown distribution'} {info.version or ''}".strip()
        if info.component is None:
            out(f"[bold red]{escape(info.name)}[/]  BROKEN  ({escape(dist)})")
            out(f"  [red]{escape(info.error or 'failed to load')}[/]\n")
            continue
        doc = (info.component.__doc__ or "").strip().splitlines()
        out(f"[bold]{escape(info.name)}[/]  {info.kind}  ({escape(dist)})  {escape(doc[0] if doc else '')}")
        table = Table(show_header=True, header_style="bold", box=None, pad_edge=False, padding=(0, 2, 0, 2))
        for column in ("option", "type", "default"):  # names are never split, even on a narrow terminal
            table.add_column(column, no_wrap=True)
        table.add_column("description", overflow="fold")
        for row in options:
            table.add_row(*(escape(row[k]) for k in ("name", "type", "default", "description")))
        out(table)
        out()
    broken = [p for p in found if p.component is None]
    if broken and not as_json:
        error(f"{len(broken)} plugin(s) failed to load: {', '.join(p.name for p in broken)}")
    if broken and strict:
        raise typer.Exit(EXIT_REJECTED)


# -- check --------------------------------------------------------------------------------------


async def probe_all(chain: Any, limit: float) -> list[tuple[Any, str]]:
    """``probe()`` every component of ``chain`` (nested ones too) concurrently, each within ``limit`` seconds.

    Returns (component, one-line problem) for each that failed or did not answer in time.
    """
    from fastapps_auth.chain import leaves

    components = list(leaves(chain))
    tasks = [asyncio.ensure_future(_probe(c)) for c in components]
    if not tasks:
        return []
    done, pending = await asyncio.wait(tasks, timeout=limit)
    for task in pending:
        task.cancel()
    if pending:  # a probe that ignores its cancellation cannot hold the command
        await asyncio.wait(pending, timeout=1.0)
    problems: list[tuple[Any, str]] = []
    for component, task in zip(components, tasks, strict=True):
        if task not in done:
            problems.append((component, f"no answer within {limit:g}s"))
        elif task.exception() is not None:
            exc = task.exception()
            text = str(exc).strip().splitlines()
            problems.append((component, f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__))
    return problems


async def _probe(component: Any) -> None:
    await component.probe()  # inside a coroutine: a ``probe`` that is not one fails alone


@app.command("check")
def check_command(
    config: Annotated[
        Path, typer.Argument(help="The TOML configuration to validate.", metavar="CONFIG", show_default=False)
    ],
    connect: Annotated[
        bool,
        typer.Option(
            "--connect",
            help="Also reach every service each stage uses (database, Redis, issuer) and report each failure.",
        ),
    ] = False,
    timeout: Annotated[
        float, typer.Option("--timeout", help="With --connect: seconds each stage's probe may take.", metavar="SECONDS")
    ] = PROBE_TIMEOUT,
) -> None:
    """Validate CONFIG: plugin names, option names and types, environment variables. Exit 2 on error."""
    if not (math.isfinite(timeout) and timeout > 0):
        fail(f"--timeout must be a positive number of seconds, not {timeout}")
    chain = build_chain(config)

    async def run() -> list[tuple[Any, str]]:
        try:
            return await probe_all(chain, timeout) if connect else []
        finally:
            await chain.aclose()

    problems = asyncio.run(run())
    for component, problem in problems:
        error(f"{config}: {component.kind} {component.name!r}: {problem}")
    if problems:
        raise typer.Exit(EXIT_USAGE)  # as for a config error: this configuration cannot serve
    stages = ", ".join(s.name for s in chain.stages)
    observers = ", ".join(o.name for o in chain.observers) or "none"
    reached = "; every service reached" if connect else ""
    typer.echo(plain(f"{config}: ok (stages: {stages}; observers: {observers}{reached})"))
