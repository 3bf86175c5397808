"""``fastapps-auth``'s entry point: the commands assembled, the forwarding ones, and ``main()``.

Errors are one line on standard error and exit code 2; ``verify`` exits 0 when
every token is allowed and 1 when any is rejected. Tokens are never printed:
only their fingerprints.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable

import typer

from fastapps_auth.cli import commands, verify
from fastapps_auth.cli.app import EXIT_OK, EXIT_USAGE, app, error, fail

__all__ = ["app", "commands", "main", "verify"]


def _entry(module: str, attribute: str, what: str) -> Callable[..., int]:
    """``module.attribute``, imported only when its command runs (the rest of the CLI works without it)."""
    try:
        found: Callable[..., int] = getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError) as exc:
        fail(f"{what} is not available ({type(exc).__name__}: {exc})")
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
        error(f"{exc.format_message()} (see: {ctx.command_path if ctx else 'fastapps-auth'} --help)")
        return exc.exit_code
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else EXIT_USAGE)
    except (KeyboardInterrupt, typer.Abort):
        return 130
    if not args:  # the help, shown because nothing was asked
        return EXIT_USAGE
    return code if isinstance(code, int) else EXIT_OK
