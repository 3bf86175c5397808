"""``fastapps-auth dev-issuer``: serve, mint, rotate, and inspect a local authorization server's state.

``fastapps_auth.cli`` forwards ``fastapps-auth dev-issuer ARGS...`` to ``main(ARGS)``. Errors are
one line on standard error, ``fastapps-auth dev-issuer: error: ...``, and exit code 2, like
every command of ``fastapps-auth``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any, NoReturn

from fastapps_auth.dev_issuer.keystore import ALGORITHMS
from fastapps_auth.dev_issuer.state import DIR_ENV
from fastapps_auth.dev_issuer.users import parse_user

PROG = "fastapps-auth dev-issuer"
DEFAULT_PORT = 8765


class UsageError(Exception):
    """A usage error found by argparse: one line, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse prints a usage block and exits; one line instead
        raise UsageError(f"{message} (see: {self.prog} --help)")


def error(message: str) -> None:
    """The one-line error of every ``fastapps-auth`` command, with unprintable characters escaped."""
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)
    print(f"{PROG}: error: {shown}", file=sys.stderr)


def _claim(text: str) -> tuple[str, Any]:
    name, sep, raw = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    try:
        value: Any = json.loads(raw)
    except json.JSONDecodeError:
        value = raw  # a bare string
    return name, value


def _seconds(text: str) -> float:
    """A finite number of seconds (``inf`` or ``nan`` would end as a traceback or an ``Infinity`` in keys.json)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0 to 65535, got {value}")
    return value


def _client(text: str) -> tuple[str, str, list[str] | None]:
    parts = text.split(":", 2)
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise argparse.ArgumentTypeError(f"expected ID:SECRET[:SCOPE,SCOPE...], got {text!r}")
    scopes = [s for s in parts[2].split(",") if s] if len(parts) == 3 else None
    return parts[0], parts[1], scopes


def _user(text: str) -> Any:
    try:
        return parse_user(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _state_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--state-dir",
        "--dir",
        dest="state_dir",
        metavar="DIR",
        help=f"keys and clients (default: ${DIR_ENV}, else a per-user data directory; `serve` prints it)",
    )


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG, description="A local OAuth 2.1 authorization server for development and tests (loopback only)."
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser(
        "serve", help="serve the authorization server (metadata, login, token, register, introspect, ...)"
    )
    _state_option(s)
    s.add_argument("--host", default="127.0.0.1", help="loopback address to listen on (default 127.0.0.1)")
    s.add_argument("--port", type=_port, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 = any free)")
    s.add_argument(
        "--audience", default=None, help="aud of tokens requested without a resource (default fastapps-auth-dev)"
    )
    s.add_argument("--lifetime", type=_seconds, default=None, help="access token lifetime in seconds (default 3600)")
    s.add_argument(
        "--client", type=_client, action="append", default=[], metavar="ID:SECRET[:SCOPES]",
        help="a confidential client (repeatable; default: the saved ones, else dev-client with a random secret)",
    )  # fmt: skip
    s.add_argument(
        "--user", type=_user, action="append", default=[], metavar="NAME[=SCOPES]",
        help="a user of the login page, optionally limited to SCOPE,SCOPE (repeatable; default alice, bob, ... frank)",
    )  # fmt: skip
    s.add_argument("--auto-login", metavar="NAME", help="sign every authorization in as NAME, without the login page")
    s.add_argument("--opaque", action="store_true", help="issue opaque access tokens (for the introspection stage)")
    s.add_argument(
        "--dpop-nonce",
        action="store_true",
        help="DPoP proofs at the token endpoint need a nonce it issued (RFC 9449 §8)",
    )
    s.add_argument("--scopes-supported", metavar="SCOPES", help="the metadata's scopes_supported, space separated")

    m = sub.add_parser("mint", help="print a signed at+jwt access token")
    _state_option(m)
    m.add_argument("--issuer", help="iss claim (default: the URL the last `serve` used)")
    m.add_argument("--sub", default="user-1", help="subject (default user-1)")
    m.add_argument("--scope", action="append", default=[], help="scope (repeatable, or space separated)")
    m.add_argument("--aud", action="append", default=None, help="audience (repeatable)")
    m.add_argument("--client-id", default=None, help="client_id claim (default: the subject)")
    m.add_argument("--lifetime", type=_seconds, default=None, help="seconds until exp (default 3600)")
    m.add_argument(
        "--claim", type=_claim, action="append", default=[], metavar="NAME=VALUE",
        help="extra claim; VALUE is JSON if it parses, else a string; NAME=null removes a claim",
    )  # fmt: skip
    m.add_argument("--alg", choices=sorted(ALGORITHMS), default="RS256", help="signing algorithm (default RS256)")
    m.add_argument("--now", type=_seconds, default=None, help="issue as if the time were this epoch")
    when = m.add_mutually_exclusive_group()
    when.add_argument("--expired", action="store_true", help="a token that expired 5 minutes ago")
    when.add_argument("--not-yet-valid", action="store_true", help="a token valid only from 5 minutes from now")

    r = sub.add_parser("rotate", help="new signing keys; old ones stay in the JWKS for a grace period")
    _state_option(r)
    r.add_argument("--grace", type=_seconds, default=3600.0, help="seconds the old keys stay published (default 3600)")
    r.add_argument("--alg", action="append", choices=sorted(ALGORITHMS), help="rotate only this algorithm")

    _state_option(sub.add_parser("jwks", help="print the public JWK set"))
    _state_option(sub.add_parser("keys", help="list the keys: kid, alg, state"))
    c = sub.add_parser("clients", help="list the clients with their secrets and redirect URIs")
    _state_option(c)
    c.add_argument("--json", action="store_true", help="one JSON object per client")
    return p


def main(args: list[str] | None = None) -> int:
    """Run ``fastapps-auth dev-issuer ARGS``; returns the exit status (2 on a usage error)."""
    from fastapps_auth.dev_issuer.commands import COMMANDS, CommandError

    try:
        ns = parser().parse_args(sys.argv[1:] if args is None else args)
    except UsageError as exc:
        error(str(exc))
        return 2
    except SystemExit as exc:  # --help
        return int(exc.code or 0) if isinstance(exc.code, int) else 2
    try:
        return COMMANDS[ns.command](ns)
    except (CommandError, ValueError, OSError) as exc:
        error(f"{ns.command}: {exc}")
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
