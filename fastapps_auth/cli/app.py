"""The ``fastapps-auth`` Typer application and what every command shares: output, errors, exit codes.

Errors are one line on standard error and exit code 2. Output written to a pipe or a file is
never wrapped (a script reads whole lines); on a terminal only descriptions wrap.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console, RenderableType
from rich.markup import escape

from fastapps_auth.errors import ConfigError

app = typer.Typer(
    name="fastapps-auth",
    help="Composable bearer-token verification for MCP servers.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,  # plain click help: no boxes wrapped at 80 columns, no <bool> beside a flag
    pretty_exceptions_enable=False,  # a rich traceback would show local variables, tokens among them
)

#: Exit codes of ``verify`` (and of every command on a usage or configuration error).
EXIT_OK, EXIT_REJECTED, EXIT_USAGE = 0, 1, 2

#: Width given to rich when standard output is not a terminal: wide enough that no line is ever wrapped.
UNWRAPPED = 1 << 20


def _is_terminal(stream: Any) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if isatty is not None else False
    except ValueError:  # a closed stream
        return False


def out(renderable: RenderableType = "") -> None:
    """Print to standard output: wrapped to the terminal's width on a terminal, never when piped.

    Lines lose the trailing spaces rich pads table cells with.
    """
    terminal = _is_terminal(sys.stdout)
    console = Console(
        width=None if terminal else UNWRAPPED,
        force_terminal=terminal,
        no_color=not terminal,
        soft_wrap=False,
        highlight=False,
    )
    with console.capture() as captured:
        console.print(renderable)
    text = "\n".join(line.rstrip() for line in captured.get().splitlines())
    sys.stdout.write(text + "\n")


#: What must not reach a terminal raw: C0/C1 controls (escape sequences, newlines), line and
#: paragraph separators, bidirectional overrides.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def plain(text: object) -> str:
    """``text`` with control characters written as ``\\x1b``-style escapes (no markup involved)."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(text))


def shown(text: object) -> str:
    """``text`` for a terminal: rich markup escaped, control characters written as ``\\x1b``-style escapes.

    A subject, a scope or an error message may hold anything: an escape sequence would drive
    the terminal, a newline would forge a line of output.
    """
    return escape(plain(text))


def error(message: str) -> None:
    """``fastapps-auth: error: <message>`` on standard error, one line."""
    sys.stderr.write(f"fastapps-auth: error: {plain(message)}\n")


def note(message: str) -> None:
    """``fastapps-auth: note: <message>`` on standard error: something the user should know, not an error."""
    sys.stderr.write(f"fastapps-auth: note: {plain(message)}\n")


def fail(message: str) -> NoReturn:
    """One line on standard error, exit 2: the shape of every error of this command."""
    error(message)
    raise typer.Exit(EXIT_USAGE)


def build_chain(config: Path, now: float | None = None) -> Any:
    """The chain of ``config``; every failure to build it is one line and exit 2."""
    from fastapps_auth.clock import FixedClock
    from fastapps_auth.config import chain_from_config

    try:
        return chain_from_config(config, clock=FixedClock(now) if now is not None else None)
    except ConfigError as exc:
        fail(str(exc))
    except Exception as exc:  # a plugin's constructor failing in an unplanned way
        fail(f"{config}: building the chain failed: {type(exc).__name__}: {exc}")
