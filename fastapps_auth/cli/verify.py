"""``fastapps-auth verify``: explain decisions, for a request described on the command line.

``--tool``, ``--ip``, ``--method``, ``--mcp-method``, ``--url`` and ``--header`` build the
``RequestInfo`` the HTTP middleware would give the chain, so per-tool, per-address and
per-method decisions can be explained too. A token pasted with its scheme (``Bearer eyJ...``,
``Authorization: DPoP eyJ...``) is recognised: the scheme is removed, and a note says so.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import math
import re
import sys
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import typer
from rich.table import Table

from fastapps_auth.cli.app import EXIT_OK, EXIT_REJECTED, app, build_chain, fail, note, out, shown
from fastapps_auth.request import RequestInfo

#: ``Bearer <token>``, ``DPoP <token>``, optionally after ``Authorization:``: a token has no spaces (RFC 6750 b64token).
_SCHEME = re.compile(r"(?:authorization\s*:\s*)?(bearer|dpop)\s+(\S+)", re.IGNORECASE)
#: Request headers the chain reads (through ``RequestInfo``), by lower-case name.
HEADERS = {"dpop": "DPoP", "mcp-method": "Mcp-Method", "mcp-name": "Mcp-Name"}


def read_tokens(tokens: list[str] | None) -> list[str]:
    """The tokens from the arguments, else one per line of standard input (blank lines skipped)."""
    if tokens:
        return tokens
    if sys.stdin is None or sys.stdin.isatty():
        fail("no token given: pass tokens as arguments or one per line on standard input")
    reconfigure = getattr(sys.stdin, "reconfigure", None)
    if reconfigure is not None:  # a line that is not text is a token to reject, not a traceback
        reconfigure(errors="surrogateescape")
    found = [line.strip() for line in sys.stdin]
    found = [t for t in found if t]
    if not found:
        fail("no token on standard input")
    return found


def split_scheme(raw: str) -> tuple[str | None, str]:
    """(lower-case scheme, token) for a pasted ``Bearer x`` / ``Authorization: DPoP x``; (None, raw) otherwise."""
    match = _SCHEME.fullmatch(raw.strip())
    if match is None:
        return None, raw
    return match.group(1).lower(), match.group(2)


def build_request(
    *,
    tool: str | None,
    ip: str | None,
    method: str | None,
    mcp_method: str | None,
    url: str | None,
    headers: list[str],
) -> RequestInfo | None:
    """The ``RequestInfo`` the options describe, or ``None`` when they describe none (as without HTTP)."""
    proofs: list[str] = []
    named: dict[str, str] = {}
    for header in headers:
        name, sep, value = header.partition(":")
        key = name.strip().lower()
        if not sep or not key:
            fail(f"--header takes NAME:VALUE, not {header[:40]!r}")
        if key not in HEADERS:
            fail(f"--header {name.strip()!r} is not read by any stage (known: {', '.join(HEADERS.values())})")
        if key == "dpop":
            proofs.append(value.strip())
        else:
            named[key] = value.strip()
    if tool is not None and named.get("mcp-name", tool) != tool:
        fail("--tool and --header Mcp-Name name different tools")
    tool = tool if tool is not None else named.get("mcp-name")
    rpc = mcp_method or named.get("mcp-method") or ("tools/call" if tool is not None else None)
    if tool is not None and rpc != "tools/call":
        fail(f"a tool is called by tools/call, not {rpc!r}: drop --mcp-method or --tool")
    if ip is not None:
        try:
            ip = str(ipaddress.ip_address(ip.strip()))
        except ValueError:
            fail(f"--ip {ip[:60]!r} is not an IP address")
    path: str | None = None
    if url is not None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            fail(f"--url must be an http(s) URL, not {url[:60]!r}")
        path = parts.path or "/"
        url = parts._replace(query="", fragment="").geturl()
    if not (tool or ip or method or rpc or url or proofs):
        return None
    return RequestInfo(
        method=(method or "POST").upper(),
        path=path,
        client_ip=ip,
        mcp_method=rpc,
        tool_name=tool,
        url=url,
        auth_scheme="bearer",
        dpop_proofs=tuple(proofs),
    )


def _request_line(request: RequestInfo) -> str:
    fields = {
        "method": request.method,
        "url": request.url,
        "ip": request.client_ip,
        "mcp_method": request.mcp_method,
        "tool": request.tool_name,
        "dpop_proofs": len(request.dpop_proofs) or None,
    }
    return "request: " + " ".join(f"{k}={shown(v)}" for k, v in fields.items() if v is not None)


def report(index: int, decision: Any) -> None:
    """One decision: a head line (verdict, who, why) and its per-stage trace."""
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
        for field in ("scope", "acr_values", "max_age"):
            value = getattr(decision, field)
            if value is not None:
                head += f" {field}={shown(value)}"
        if decision.retry_after is not None:
            head += f" retry after {decision.retry_after:g}s"
    if decision.shadowed:
        entries = ", ".join(f"{stage}: {reason}" for stage, reason in decision.shadowed)
        head += f" [magenta](shadow mode would have refused: {shown(entries)})[/]"
    out(head)
    table = Table(box=None, pad_edge=False, padding=(0, 2, 0, 2), header_style="bold")
    for column in ("stage", "outcome", "ms", "cache", "reason", "error"):
        table.add_column(column, no_wrap=True)  # stage and exception class names are never split
    for t in decision.trace:
        table.add_row(
            shown(t.stage),
            t.outcome,
            f"{t.duration * 1000:.3f}",
            "-" if t.cache_hit is None else ("hit" if t.cache_hit else "miss"),
            shown(t.reason or ""),
            shown(t.error or ""),
        )
    out(table)
    out()


@app.command("verify")
def verify_command(
    config: Annotated[
        Path, typer.Option("--config", "-c", help="The TOML configuration.", metavar="CONFIG", show_default=False)
    ],
    tokens: Annotated[
        list[str] | None,
        typer.Argument(
            help="Tokens to verify; without any, one per line on standard input.",
            metavar="TOKEN",
            show_default=False,
        ),
    ] = None,
    now: Annotated[
        float | None,
        typer.Option(
            "--now", help="Pin the clock to this epoch (explain a captured token after it expired).", metavar="EPOCH"
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON decision per line instead of tables.")] = False,
    tool: Annotated[
        str | None, typer.Option("--tool", help="As a tools/call of this MCP tool.", metavar="NAME")
    ] = None,
    ip: Annotated[str | None, typer.Option("--ip", help="As from this client address.", metavar="ADDRESS")] = None,
    method: Annotated[
        str | None, typer.Option("--method", help="The HTTP method (default POST).", metavar="METHOD")
    ] = None,
    mcp_method: Annotated[
        str | None,
        typer.Option("--mcp-method", help="The JSON-RPC method (default tools/call with --tool).", metavar="METHOD"),
    ] = None,
    url: Annotated[
        str | None, typer.Option("--url", help="The request's public URL (DPoP checks it).", metavar="URL")
    ] = None,
    header: Annotated[
        list[str] | None,
        typer.Option(
            "--header",
            "-H",
            help="A request header (repeatable): DPoP, Mcp-Method or Mcp-Name.",
            metavar="NAME:VALUE",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Verify tokens with CONFIG and show each decision with its trace. Exit 0 all allowed, 1 any rejected."""
    if now is not None and not math.isfinite(now):  # NaN makes every expiry check false
        fail(f"--now must be a finite epoch in seconds, not {now}")
    base = build_request(tool=tool, ip=ip, method=method, mcp_method=mcp_method, url=url, headers=header or [])
    pasted = [split_scheme(t) for t in read_tokens(tokens)]
    for i, (scheme, _) in enumerate(pasted, 1):
        if scheme is not None:
            note(
                f"token #{i}: the {'DPoP' if scheme == 'dpop' else 'Bearer'} scheme was removed (pass the token alone)"
            )
    chain = build_chain(config, now)

    def request_for(scheme: str | None) -> RequestInfo | None:
        if scheme == "dpop":
            return (base or RequestInfo(method="POST"))._replace(auth_scheme="dpop")
        return base

    async def run() -> list[Any]:
        try:
            return [await chain.evaluate(t, request=request_for(s)) for s, t in pasted]
        finally:
            await chain.aclose()

    decisions = asyncio.run(run())
    if base is not None and not as_json:
        out(_request_line(base))
    for i, decision in enumerate(decisions, 1):
        if as_json:
            typer.echo(json.dumps(decision.as_dict(), default=str))
        else:
            report(i, decision)
    raise typer.Exit(EXIT_OK if all(d.allowed for d in decisions) else EXIT_REJECTED)
