"""The ``fastapps-auth`` command: list plugins, check a config, explain decisions, run the demo.

Errors are one line on standard error and exit code 2; ``verify`` exits 0 when
every token is allowed and 1 when any is rejected. Tokens are never printed:
only their fingerprints.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fastapps_auth.errors import ConfigError
from fastapps_auth.options_info import COMPUTED, OptionInfo, options_of

app = typer.Typer(
    name="fastapps-auth",
    help="Composable bearer-token verification for MCP servers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,  # a rich traceback would show local variables, tokens among them
)

#: Exit codes of ``verify`` (and of every command on a usage or configuration error).
EXIT_OK, EXIT_REJECTED, EXIT_USAGE = 0, 1, 2


def _out() -> Console:
    return Console(soft_wrap=False, highlight=False)


#: What must not reach a terminal raw: C0/C1 controls (escape sequences, newlines), line and
#: paragraph separators, bidirectional overrides.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def shown(text: object) -> str:
    """``text`` for a terminal: rich markup escaped, control characters written as ``\\x1b``-style escapes.

    A subject, a scope or an error message may hold anything: an escape sequence would drive
    the terminal, a newline would forge a line of output.
    """
    return escape(_CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(text)))


def _error(message: str) -> None:
    Console(stderr=True, highlight=False, soft_wrap=True).print(f"fastapps-auth: error: {shown(message)}")


def _fail(message: str) -> NoReturn:
    """One line on standard error, exit 2: the shape of every error of this command."""
    _error(message)
    raise typer.Exit(EXIT_USAGE)


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
    names: Annotated[list[str] | None, typer.Argument(help="Show only these plugins.", show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per plugin, one per line.")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Exit 1 if any plugin fails to load.")] = False,
) -> None:
    """Every installed stage and observer: kind, distribution, version and options. Broken ones say why."""
    from fastapps_auth.registry import plugins

    found = plugins()
    if names:
        unknown = sorted(set(names) - {p.name for p in found})
        if unknown:
            _fail(f"no plugin named {', '.join(map(repr, unknown))} (installed: {', '.join(p.name for p in found)})")
        found = [p for p in found if p.name in names]
    console = _out()
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
            console.print(f"[bold red]{escape(info.name)}[/]  BROKEN  ({escape(dist)})")
            console.print(f"  [red]{escape(info.error or 'failed to load')}[/]\n")
            continue
        doc = (info.component.__doc__ or "").strip().splitlines()
        console.print(f"[bold]{escape(info.name)}[/]  {info.kind}  ({escape(dist)})  {escape(doc[0] if doc else '')}")
        table = Table(show_header=True, header_style="bold", box=None, pad_edge=False, padding=(0, 2, 0, 2))
        for column in ("option", "type", "default", "description"):
            table.add_column(column, overflow="fold")
        for row in options:
            table.add_row(*(escape(row[k]) for k in ("name", "type", "default", "description")))
        console.print(table)
        console.print()
    broken = [p for p in found if p.component is None]
    if broken and not as_json:
        Console(stderr=True, highlight=False).print(
            f"{len(broken)} plugin(s) failed to load: {', '.join(p.name for p in broken)}"
        )
    if broken and strict:
        raise typer.Exit(EXIT_REJECTED)


# -- check --------------------------------------------------------------------------------------


def _build(config: Path, now: float | None = None) -> Any:
    """The chain of ``config``; every failure to build it is one line and exit 2."""
    from fastapps_auth.clock import FixedClock
    from fastapps_auth.config import chain_from_config

    try:
        return chain_from_config(config, clock=FixedClock(now) if now is not None else None)
    except ConfigError as exc:
        _fail(str(exc))
    except Exception as exc:  # a plugin's constructor failing in an unplanned way
        _fail(f"{config}: building the chain failed: {type(exc).__name__}: {exc}")


@app.command("check")
def check_command(
    config: Annotated[Path, typer.Argument(help="The TOML configuration to validate.", show_default=False)],
    connect: Annotated[
        bool, typer.Option("--connect", help="Also open every resource (pools, key sets) to prove it is reachable.")
    ] = False,
) -> None:
    """Validate CONFIG: plugin names, option names and types, environment variables. Exit 2 on error."""
    chain = _build(config)

    async def warm() -> str | None:
        try:
            await chain.start()
            return None
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        finally:
            await chain.aclose()

    problem = asyncio.run(warm()) if connect else None
    if not connect:
        asyncio.run(chain.aclose())
    if problem is not None:
        _fail(f"{config}: the configuration is valid but a resource could not be opened: {problem}")
    stages = ", ".join(s.name for s in chain.stages)
    observers = ", ".join(o.name for o in chain.observers) or "none"
    typer.echo(f"{config}: ok (stages: {stages}; observers: {observers})")


# -- verify -------------------------------------------------------------------------------------


def _read_tokens(tokens: list[str] | None) -> list[str]:
    if tokens:
        return tokens
    if sys.stdin is None or sys.stdin.isatty():
        _fail("no token given: pass tokens as arguments or one per line on standard input")
    reconfigure = getattr(sys.stdin, "reconfigure", None)
    if reconfigure is not None:  # a line that is not text is a token to reject, not a traceback
        reconfigure(errors="surrogateescape")
    found = [line.strip() for line in sys.stdin]
    found = [t for t in found if t]
    if not found:
        _fail("no token on standard input")
    return found


def _decision_report(console: Console, index: int, decision: Any) -> None:
    fp = decision.fingerprint or "-"
    if decision.allowed:
        at = decision.access_token
        head = f"[bold green]ALLOWED[/] token #{index} ({fp}) subject={shown(at.subject)}"
        if at.scopes:
            head += f" scopes={shown(' '.join(at.scopes))}"
        if at.expires_at is not None:
            head += f" expires_at={at.expires_at}"
        if decision.failed_open:
            head += f" [yellow](failed open: {shown(', '.join(decision.failed_open))})[/]"
    else:
        head = (
            f"[bold red]REJECTED[/] token #{index} ({fp}) by {shown(decision.stage)}: "
            f"{shown(decision.reason)} ({decision.status} {shown(decision.error)})"
        )
        if decision.description:
            head += f" - {shown(decision.description)}"
        if decision.retry_after is not None:
            head += f" retry after {decision.retry_after:g}s"
    console.print(head)
    table = Table(box=None, pad_edge=False, padding=(0, 2, 0, 2), header_style="bold")
    for column in ("stage", "outcome", "ms", "cache", "reason", "error"):
        table.add_column(column, overflow="fold")
    for t in decision.trace:
        table.add_row(
            shown(t.stage),
            t.outcome,
            f"{t.duration * 1000:.3f}",
            "-" if t.cache_hit is None else ("hit" if t.cache_hit else "miss"),
            shown(t.reason or ""),
            shown(t.error or ""),
        )
    console.print(table)
    console.print()


@app.command("verify")
def verify_command(
    config: Annotated[Path, typer.Option("--config", "-c", help="The TOML configuration.", show_default=False)],
    tokens: Annotated[
        list[str] | None,
        typer.Argument(help="Tokens to verify; without any, one per line on standard input.", show_default=False),
    ] = None,
    now: Annotated[
        float | None,
        typer.Option("--now", help="Pin the clock to this epoch (explain a captured token after it expired)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON decision per line instead of tables.")] = False,
) -> None:
    """Verify tokens with CONFIG and show each decision with its trace. Exit 0 all allowed, 1 any rejected."""
    if now is not None and not math.isfinite(now):  # NaN makes every expiry check false
        _fail(f"--now must be a finite epoch in seconds, not {now}")
    raw = _read_tokens(tokens)
    chain = _build(config, now)

    async def run() -> list[Any]:
        try:
            return [await chain.evaluate(t) for t in raw]
        finally:
            await chain.aclose()

    decisions = asyncio.run(run())
    console = _out()
    for i, decision in enumerate(decisions, 1):
        if as_json:
            typer.echo(json.dumps(decision.as_dict(), default=str))
        else:
            _decision_report(console, i, decision)
    raise typer.Exit(EXIT_OK if all(d.allowed for d in decisions) else EXIT_REJECTED)


# -- commands owned by other modules ----------------------------------------------------------------


def _entry(module: str, attribute: str, what: str) -> Callable[..., int]:
    """``module.attribute``, imported only when its command runs (the rest of the CLI works without it)."""
    try:
        found: Callable[..., int] = getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError) as exc:
        _fail(f"{what} is not available ({type(exc).__name__}: {exc})")
    return found


@app.command("demo")
def demo_command() -> None:
    """Run the whole thing on embedded defaults: an issuer, a database, a rate limit, an MCP server."""
    run = _entry("fastapps_auth.demo", "run", "the demo")
    raise typer.Exit(run())


@app.command(
    "dev-issuer",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
    add_help_option=False,
)
def dev_issuer_command(ctx: typer.Context) -> None:
    """A local OAuth issuer for development and tests (arguments go to it; try: dev-issuer --help)."""
    forward = _entry("fastapps_auth.dev_issuer.cli", "main", "the dev issuer")
    raise typer.Exit(forward(list(ctx.args)))


def _escape_what_cannot_be_written() -> None:
    """Characters the terminal cannot encode become escapes instead of a traceback.

    A subject or claim may hold anything a token carries: ``zoë`` on an ASCII terminal
    (``LANG=C``), a lone surrogate no encoding can write.
    """
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns the exit code (``sys.exit(main())``)."""
    _escape_what_cannot_be_written()
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        code = app(args=args or ["--help"], prog_name="fastapps-auth", standalone_mode=False)
    except typer.TyperException as exc:  # a usage error: one line, like every other error
        ctx = getattr(exc, "ctx", None)
        _error(f"{exc.format_message()} (see: {ctx.command_path if ctx else 'fastapps-auth'} --help)")
        return exc.exit_code
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else EXIT_USAGE)
    except (KeyboardInterrupt, typer.Abort):
        return 130
    if not args:  # the help, shown because nothing was asked
        return EXIT_USAGE
    return code if isinstance(code, int) else EXIT_OK
