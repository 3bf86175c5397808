"""What each ``fastapps-auth dev-issuer`` command does (the parser is in ``cli``)."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from fastapps_auth.dev_issuer.clients import Client, configured_client
from fastapps_auth.dev_issuer.issuer import DEFAULT_AUDIENCE, DEFAULT_LIFETIME, DEFAULT_SCOPES, DevIssuer
from fastapps_auth.dev_issuer.keystore import KeyStore
from fastapps_auth.dev_issuer.state import StateDir
from fastapps_auth.dev_issuer.users import DEFAULT_USERS

PROG = "fastapps-auth dev-issuer"


class CommandError(Exception):
    """A command cannot do what it was asked: one line, exit 2."""


def _note(message: str) -> None:
    print(f"{PROG}: note: {message}", file=sys.stderr)


def _keys(state: StateDir, command: str, *, create: bool) -> KeyStore:
    """The state directory's keys; a command that would make new ones where keys were expected says so."""
    if not state.has_keys:
        if not create:
            raise CommandError(f"no keys in {state} (run `{PROG} serve` first, or pass the --state-dir it printed)")
        why = "an issuer served from here, so its tokens will no longer verify" if state.served else "none were there"
        _note(
            f"{command}: created new signing keys in {state} ({why}); tokens verify only against an issuer using them"
        )
    return KeyStore(state.path)


def _mint(args: argparse.Namespace) -> int:
    state = StateDir(args.state_dir)
    saved = state.read()
    keys = _keys(state, "mint", create=True)
    url = args.issuer or saved.get("issuer") or "http://127.0.0.1:8765"
    issuer = DevIssuer(url, keys, saved.get("audience") or DEFAULT_AUDIENCE, float(saved.get("lifetime") or 3600))
    aud: str | list[str] | None = None
    if args.aud:
        aud = args.aud[0] if len(args.aud) == 1 else list(args.aud)
    common: dict[str, Any] = {
        "scopes": [s for item in args.scope for s in item.split()],
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


def _clients_for(args: argparse.Namespace, state: StateDir) -> list[Client]:
    """``--client`` ones (replacing the saved configured clients), the saved ones, or a new ``dev-client``."""
    saved = state.clients()
    registered = [c for c in saved if c.registered]
    if args.client:
        configured = [configured_client(cid, secret, scopes) for cid, secret, scopes in args.client]
    else:
        configured = [c for c in saved if not c.registered] or [configured_client("dev-client")]
    return configured + registered


def _serve(args: argparse.Namespace) -> int:
    from fastapps_auth.dev_issuer.app import create_app
    from fastapps_auth.dev_issuer.server import bind, serve_forever, url_of

    state = StateDir(args.state_dir)
    saved = state.read()
    try:
        sock = bind(args.host, args.port)
    except (ValueError, OSError) as exc:
        raise CommandError(f"cannot listen on {args.host}:{args.port}: {exc}") from None
    created = not state.has_keys
    url = url_of(sock)
    audience = args.audience or saved.get("audience") or DEFAULT_AUDIENCE
    lifetime = args.lifetime or float(saved.get("lifetime") or DEFAULT_LIFETIME)
    scopes = args.scopes_supported.split() if args.scopes_supported is not None else DEFAULT_SCOPES
    try:
        issuer = DevIssuer(
            url,
            KeyStore(state.path),
            audience,
            lifetime,
            clients=_clients_for(args, state),
            users=args.user or DEFAULT_USERS,
            auto_login=args.auto_login,
            opaque=args.opaque,
            dpop_nonce=args.dpop_nonce,
            scopes_supported=scopes,
        )
    except ValueError:
        sock.close()
        raise

    def save() -> None:
        state.save(issuer=url, audience=audience, lifetime=lifetime, clients=issuer.registry.all())

    save()
    issuer.registry.on_change = save  # a client registered over HTTP is still there after a restart
    users = ", ".join(issuer.users)
    configured = ", ".join(c.client_id for c in issuer.registry.all() if not c.registered)
    lines = [
        f"dev issuer {url}  (for development and tests only; loopback only)",
        f"  state      {state}" + ("  (created new signing keys)" if created else ""),
        f"  metadata   {url}/.well-known/oauth-authorization-server  (and /.well-known/openid-configuration)",
        f"  authorize  {issuer.authorization_endpoint}  (login page: {users}; login_hint=NAME skips it)",
        f"  token      {issuer.token_endpoint}",
        f"  register   {issuer.registration_endpoint}  (RFC 7591; client ID metadata documents work too)",
        f"  introspect {issuer.introspection_endpoint}",
        f"  revoke     {issuer.revocation_endpoint}",
        f"  jwks       {issuer.jwks_uri}",
        f"  clients    {configured}  (ids and secrets: {PROG} clients)",
        f"  audience   {audience}  (a request's resource parameter sets aud instead)",
    ]
    if args.auto_login:
        lines.append(f"  auto-login {args.auto_login}  (every authorization signs in as this user)")
    kind = "opaque (introspection only)" if args.opaque else "JWT (RFC 9068 at+jwt)"
    nonces = ", proofs need its DPoP-Nonce" if args.dpop_nonce else ""
    lines.append(f"  tokens     {kind}; DPoP-bound (RFC 9449) when the token request carries a proof{nonces}")
    print("\n".join(lines))
    sys.stdout.flush()
    with contextlib.suppress(KeyboardInterrupt):
        serve_forever(create_app(issuer), sock)
    return 0


def _rotate(args: argparse.Namespace) -> int:
    keys = _keys(StateDir(args.state_dir), "rotate", create=True)
    for kid in keys.rotate(grace=args.grace, algorithms=args.alg):
        print(f"new key {kid}")
    print(f"old keys stay published for {args.grace:g} s")
    return 0


def _jwks(args: argparse.Namespace) -> int:
    print(json.dumps(_keys(StateDir(args.state_dir), "jwks", create=False).jwks(), indent=2))
    return 0


def _stamp(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _list_keys(args: argparse.Namespace) -> int:
    for k in _keys(StateDir(args.state_dir), "keys", create=False).published():
        state = "active" if k.active else f"retired, published until {_stamp(k.drop_at or 0)}"
        print(f"{k.kid}  {k.alg}  created {_stamp(k.created)}  {state}")
    return 0


def _clients(args: argparse.Namespace) -> int:
    state = StateDir(args.state_dir)
    clients = state.clients()
    if not clients:
        raise CommandError(f"no clients in {state} (run `{PROG} serve` first, or pass the --state-dir it printed)")
    for c in clients:
        if args.json:
            print(json.dumps(c.to_json()))
            continue
        kind = "registered" if c.registered else "configured"
        grants = ",".join(sorted(c.grant_types))
        print(f"{c.client_id}  secret={c.secret or '-'}  auth={c.auth_method}  {kind}  grants={grants}")
        for uri in c.redirect_uris:
            print(f"    redirect {uri}")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "serve": _serve,
    "mint": _mint,
    "rotate": _rotate,
    "jwks": _jwks,
    "keys": _list_keys,
    "clients": _clients,
}
