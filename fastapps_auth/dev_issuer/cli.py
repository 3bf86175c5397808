"""``fastapps-auth dev-issuer``: serve, mint, rotate and inspect a local dev issuer's keys.

``fastapps_auth.cli`` forwards ``fastapps-auth dev-issuer ARGS...`` to ``main(ARGS)``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from fastapps_auth.dev_issuer.issuer import DEFAULT_AUDIENCE, DEFAULT_LIFETIME, DevIssuer
from fastapps_auth.dev_issuer.keystore import ALGORITHMS, KeyStore

DIR_ENV = "FASTAPPS_AUTH_DEV_ISSUER_DIR"
DEFAULT_DIR = Path(".fastapps-auth") / "dev-issuer"
DEFAULT_PORT = 8765
ISSUER_FILE = "issuer.json"


def _folder(value: str | None) -> Path:
    return Path(value or os.environ.get(DIR_ENV) or DEFAULT_DIR)


def _read_issuer_file(folder: Path) -> dict[str, Any]:
    path = folder / ISSUER_FILE
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_private(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # the mode above applies only to a new file; an existing one may be readable by others
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)


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


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fastapps-auth dev-issuer",
        description="A local OAuth/OIDC issuer for development and tests (loopback only).",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    folder_help = f"key folder (default: ${DIR_ENV} or {DEFAULT_DIR})"

    s = sub.add_parser("serve", help="serve discovery, JWKS and a client_credentials token endpoint")
    s.add_argument("--dir", help=folder_help)
    s.add_argument("--host", default="127.0.0.1", help="loopback address to listen on (default 127.0.0.1)")
    s.add_argument("--port", type=_port, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 = any free)")
    s.add_argument("--audience", default=None, help=f"default aud of minted tokens (default {DEFAULT_AUDIENCE})")
    s.add_argument("--lifetime", type=_seconds, default=None, help="token lifetime in seconds (default 3600)")
    s.add_argument(
        "--client",
        type=_client,
        action="append",
        default=[],
        metavar="ID:SECRET[:SCOPES]",
        help="a client_credentials client (repeatable; default: one saved in the folder)",
    )

    m = sub.add_parser("mint", help="print a signed at+jwt access token")
    m.add_argument("--dir", help=folder_help)
    m.add_argument("--issuer", help="iss claim (default: the URL the last `serve` used)")
    m.add_argument("--sub", default="user-1", help="subject (default user-1)")
    m.add_argument("--scope", action="append", default=[], help="scope (repeatable, or space separated)")
    m.add_argument("--aud", action="append", default=None, help="audience (repeatable)")
    m.add_argument("--client-id", default=None, help="client_id claim (default: the subject)")
    m.add_argument("--lifetime", type=_seconds, default=None, help="seconds until exp (default 3600)")
    m.add_argument(
        "--claim",
        type=_claim,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra claim; VALUE is JSON if it parses, else a string; NAME=null removes a claim",
    )
    m.add_argument("--alg", choices=sorted(ALGORITHMS), default="RS256", help="signing algorithm (default RS256)")
    m.add_argument("--now", type=_seconds, default=None, help="issue as if the time were this epoch")
    state = m.add_mutually_exclusive_group()
    state.add_argument("--expired", action="store_true", help="a token that expired 5 minutes ago")
    state.add_argument("--not-yet-valid", action="store_true", help="a token valid only from 5 minutes from now")

    r = sub.add_parser("rotate", help="new signing keys; old ones stay in the JWKS for a grace period")
    r.add_argument("--dir", help=folder_help)
    r.add_argument("--grace", type=_seconds, default=3600.0, help="seconds the old keys stay published (default 3600)")
    r.add_argument("--alg", action="append", choices=sorted(ALGORITHMS), help="rotate only this algorithm")

    j = sub.add_parser("jwks", help="print the public JWK set")
    j.add_argument("--dir", help=folder_help)

    k = sub.add_parser("keys", help="list the keys: kid, alg, state")
    k.add_argument("--dir", help=folder_help)
    return p


def _issuer_url(args: argparse.Namespace, folder: Path) -> str:
    if args.issuer:
        return str(args.issuer)
    saved = _read_issuer_file(folder).get("issuer")
    return saved if isinstance(saved, str) else f"http://127.0.0.1:{DEFAULT_PORT}"


def _mint(args: argparse.Namespace) -> int:
    folder = _folder(args.dir)
    saved = _read_issuer_file(folder)
    keys = KeyStore(folder)
    issuer = DevIssuer(
        _issuer_url(args, folder),
        keys,
        audience=saved.get("audience") or DEFAULT_AUDIENCE,
        lifetime=float(saved.get("lifetime") or DEFAULT_LIFETIME),
    )
    scopes = [s for item in args.scope for s in item.split()]
    aud: str | list[str] | None = None
    if args.aud:
        aud = args.aud[0] if len(args.aud) == 1 else list(args.aud)
    common: dict[str, Any] = {
        "scopes": scopes,
        "audience": aud,
        "client_id": args.client_id,
        "claims": dict(args.claim),
        "alg": args.alg,
    }
    if args.lifetime is not None:
        common["lifetime"] = args.lifetime
    if args.now is not None:
        from fastapps_auth.clock import FixedClock

        issuer.clock = FixedClock(args.now)
    if args.expired:
        token = issuer.expired(args.sub, **common)
    elif args.not_yet_valid:
        token = issuer.not_yet_valid(args.sub, **common)
    else:
        token = issuer.mint(args.sub, **common)
    print(token)
    return 0


def _serve(args: argparse.Namespace) -> int:
    from fastapps_auth.dev_issuer.app import create_app
    from fastapps_auth.dev_issuer.server import bind, serve_forever, url_of

    folder = _folder(args.dir)
    saved = _read_issuer_file(folder)
    keys = KeyStore(folder)
    try:
        sock = bind(args.host, args.port)
    except (ValueError, OSError) as exc:
        print(f"dev-issuer: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 2
    url = url_of(sock)
    audience = args.audience or saved.get("audience") or DEFAULT_AUDIENCE
    lifetime = args.lifetime or float(saved.get("lifetime") or DEFAULT_LIFETIME)
    issuer = DevIssuer(url, keys, audience=audience, lifetime=lifetime)
    clients = args.client or [
        (c["client_id"], c["secret"], c.get("scopes")) for c in saved.get("clients", []) if isinstance(c, dict)
    ]
    if not clients:
        generated = issuer.add_client("dev-client")
        clients = [(generated.client_id, generated.secret, None)]
    for cid, secret, scopes in clients:
        issuer.add_client(cid, secret, scopes)
    _write_private(
        folder / ISSUER_FILE,
        {
            "issuer": url,
            "audience": audience,
            "lifetime": lifetime,
            "clients": [{"client_id": c, "secret": s, "scopes": sc} for c, s, sc in clients],
        },
    )
    print(f"dev issuer {url}  (keys in {folder}; loopback only)")
    print(f"  discovery  {url}/.well-known/openid-configuration")
    print(f"  jwks       {issuer.jwks_uri}")
    print(f"  token      {issuer.token_endpoint}  (grant_type=client_credentials)")
    for cid, _secret, _scopes in clients:
        print(f"  client     {cid}  (secret in {folder / ISSUER_FILE})")
    print(f"  audience   {audience}")
    sys.stdout.flush()
    with contextlib.suppress(KeyboardInterrupt):
        serve_forever(create_app(issuer), sock)
    return 0


def _rotate(args: argparse.Namespace) -> int:
    keys = KeyStore(_folder(args.dir))
    new = keys.rotate(grace=args.grace, algorithms=args.alg)
    for kid in new:
        print(f"new key {kid}")
    print(f"old keys stay published for {args.grace:g} s")
    return 0


def _jwks(args: argparse.Namespace) -> int:
    print(json.dumps(KeyStore(_folder(args.dir)).jwks(), indent=2))
    return 0


def _keys(args: argparse.Namespace) -> int:
    for k in KeyStore(_folder(args.dir)).published():
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(k.created))
        if k.active:
            state = "active"
        else:
            state = "retired, published until " + time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(k.drop_at or 0))
        print(f"{k.kid}  {k.alg}  created {created}  {state}")
    return 0


COMMANDS = {"serve": _serve, "mint": _mint, "rotate": _rotate, "jwks": _jwks, "keys": _keys}


def main(args: list[str] | None = None) -> int:
    """Run ``fastapps-auth dev-issuer ARGS``; returns the exit status (2 on a usage error)."""
    parser = _parser()
    try:
        ns = parser.parse_args(sys.argv[1:] if args is None else args)
    except SystemExit as exc:
        return int(exc.code or 0) if isinstance(exc.code, int) else 2
    try:
        return COMMANDS[ns.command](ns)
    except (ValueError, OSError) as exc:
        print(f"dev-issuer {ns.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
