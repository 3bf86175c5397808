"""The fenced code blocks of README.md and docs/, the marker that classifies each one, and running them.

A ``python``, ``toml`` or ``bash`` block carries a marker on the last non-blank line before its fence:

- ``<!-- run -->``: it runs as written (see tests/test_doc_snippets.py for how each language runs);
  ``<!-- run file=NAME -->`` also writes it to NAME in the page's directory, where later blocks of the
  page find it (a second block naming the same file is appended, as a reader copying both would);
  ``exit=N`` expects exit status N instead of 0; ``venv=hosts`` runs it in the hosts venv (mcp 2.x,
  FastMCP 4.x: tests/hosts/test_host_doc_snippets.py) instead of this one, where it is only parsed;
  ``venv=both`` runs it in each.
- ``<!-- fragment -->``: part of something larger (placeholders, names from the prose); it is only
  parsed (Python, top-level ``await`` allowed; TOML; ``bash -n``).

Any other fenced block (``console``, ``text``, ``json``...) is prose, not collected.
"""

from __future__ import annotations

import ast
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent

#: Fence info strings collected, and the language each one is run as.
LANGUAGES = {"python": "python", "py": "python", "toml": "toml", "bash": "bash", "sh": "bash", "shell": "bash"}

FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`\s]*)")
MARKER = re.compile(r"^\s*<!--\s*(?P<kind>run|fragment)(?P<options>(?:\s+[\w-]+=\S+)*)\s*-->\s*$")
OPTION = re.compile(r"([\w-]+)=(\S+)")
OPTIONS = {"run": {"file", "exit", "venv"}, "fragment": set()}


@dataclass(frozen=True)
class Block:
    """One fenced block: where it is, its language, its code, and its marker (``kind`` None when unmarked)."""

    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    kind: str | None
    options: dict[str, str] = field(default_factory=dict)
    problem: str | None = None  # a malformed marker

    @property
    def where(self) -> str:
        page = self.page.relative_to(ROOT) if self.page.is_relative_to(ROOT) else self.page
        return f"{page}:{self.line}"


def pages() -> list[Path]:
    """README.md and every page under docs/, in a stable order."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _marker(lines: list[str], fence_index: int) -> tuple[str | None, dict[str, str], str | None]:
    before = next((lines[i] for i in range(fence_index - 1, -1, -1) if lines[i].strip()), "")
    found = MARKER.match(before)
    if found is None:
        if "<!--" in before and re.search(r"\b(run|fragment)\b", before):
            return None, {}, f"malformed marker {before.strip()!r}"
        return None, {}, None
    kind = found.group("kind")
    options = dict(OPTION.findall(found.group("options")))
    unknown = set(options) - OPTIONS[kind]
    if unknown:
        return kind, options, f"unknown marker option(s) {sorted(unknown)} for {kind}"
    if options.get("venv", "hosts") not in ("hosts", "both"):
        return kind, options, f"venv={options['venv']!r}: hosts (mcp 2.x, FastMCP 4.x) or both"
    if "exit" in options and not options["exit"].isdigit():
        return kind, options, f"exit={options['exit']!r} is not an exit status"
    return kind, options, None


def blocks(page: Path) -> list[Block]:
    """The page's python, toml and bash blocks, in document order."""
    lines = page.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        fence, indent = opening.group("fence"), len(opening.group("indent"))
        end = next(
            (
                j
                for j in range(i + 1, len(lines))
                if re.fullmatch(rf"[ \t]*{fence[0]}{{{len(fence)},}}[ \t]*", lines[j])
            ),
            len(lines),
        )
        lang = LANGUAGES.get(opening.group("info").lower())
        if lang is not None:
            body = "\n".join(line[indent:] if line[:indent].isspace() else line for line in lines[i + 1 : end])
            kind, options, problem = _marker(lines, i)
            found.append(Block(page, i + 1, lang, textwrap.dedent(body) + "\n", kind, options, problem))
        i = end + 1
    return found


#: Seconds each block may run.
TIMEOUT = 120.0
AUDIENCE = "http://127.0.0.1:8000/mcp"
USERS = [("alice", 1, 0), ("bob", 1, 1), ("carol", 0, 0), ("dave", 1, 0), ("erin", 1, 0), ("frank", 1, 0)]
POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
#: The environment of every block (with the served issuer's URL, a token and the state directory added).
ENVIRONMENT = {
    "AUTH_AUDIENCE": AUDIENCE,
    "DATABASE_URL": "sqlite:///users.db",
    "DATABASE_POOLER_URL": POSTGRES,
    "DATABASE_DIRECT_URL": POSTGRES,
    "NO_COLOR": "1",
    "COLUMNS": "120",
}
#: The ``auth.toml`` every page's directory starts with (the quickstart's).
AUTH_TOML = """\
[[stages]]
use = "jwt"
issuer_url = "${AUTH_ISSUER_URL}"
audience = "${AUTH_AUDIENCE}"

[[stages]]
use = "user-status"
dsn = "${DATABASE_URL}"

[[stages]]
use = "rate-limit"
limit = 100
window = "1h"

[[stages]]
use = "audit"
"""


def placeholders(code: str, env: dict[str, str]) -> dict[str, str]:
    """A value for each ``${VAR}`` (without a default) the code uses and ``env`` lacks."""
    names = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", code)) - set(env)
    return {n: "https://auth.example.com/" if n.endswith(("_URL", "_URI")) else f"example-{n.lower()}" for n in names}


def seed(directory: Path) -> None:
    """What every page's directory starts with: ``auth.toml`` and ``users.db``."""
    (directory / "auth.toml").write_text(AUTH_TOML)
    con = sqlite3.connect(directory / "users.db")
    con.execute("CREATE TABLE users (id TEXT PRIMARY KEY, active BOOLEAN NOT NULL, banned BOOLEAN NOT NULL)")
    con.executemany("INSERT INTO users VALUES (?, ?, ?)", USERS)
    con.commit()
    con.close()


def run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = TIMEOUT) -> tuple[int | None, str]:
    """Exit status (None on timeout) and combined output; a timeout kills the whole process group."""
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
        return proc.returncode, out
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return None, out


def check_fragment(block: Block) -> str | None:
    """A fragment still parses: the reader should only have to fill in what the prose names."""
    try:
        if block.lang == "python":
            compile(block.code, block.where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT | ast.PyCF_ONLY_AST)
        elif block.lang == "toml":
            tomllib.loads(block.code)
        else:
            proc = subprocess.run(["bash", "-n"], input=block.code, capture_output=True, text=True, timeout=30)
            if proc.returncode:
                return proc.stderr
    except (SyntaxError, tomllib.TOMLDecodeError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def run_block(block: Block, workdir: Path, env: dict[str, str], written: set[Path], python: str) -> str | None:
    """Run one ``<!-- run -->`` block in ``workdir``; a failure message, or None.

    ``written``: the files earlier blocks of the page wrote; a block for one of them adds to it, a block for
    any other file replaces it (the page's own ``auth.toml`` replaces the seeded one). ``python``: the
    interpreter of the venv to run in (its ``fastapps-auth`` checks TOML).
    """
    stem = f"block_{block.page.stem.replace('-', '_')}_{block.line}"
    target = workdir / block.options.get(
        "file", f"{stem}.{ {'python': 'py', 'toml': 'toml', 'bash': 'sh'}[block.lang] }"
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("a" if target in written else "w", encoding="utf-8") as f:
        f.write(block.code)
    written.add(target)
    env = {**env, **placeholders(block.code, env)}
    if block.lang == "python" and re.search(r"^(async )?def test_", block.code, flags=re.M):
        if not target.name.startswith("test_"):
            target = target.rename(workdir / f"test_{stem}.py")
        cmd = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", target.name]
    elif block.lang == "python":
        cmd = [python, str(target.relative_to(workdir))]
    elif block.lang == "toml":
        cmd = [str(Path(python).parent / "fastapps-auth"), "check", str(target.relative_to(workdir))]
    else:
        cmd = ["bash", "-e", "-o", "pipefail", str(target.relative_to(workdir))]
    status, out = run(cmd, workdir, env)
    expected = int(block.options.get("exit", "0"))
    if env.get("TOKEN") and env["TOKEN"] in out:
        return f"{block.where}: `{' '.join(cmd[-2:])}` printed the raw token it was given ($TOKEN)"
    if status == expected:
        return None
    tail = "\n".join(out.splitlines()[-40:])
    what = f"timed out after {TIMEOUT:g} s" if status is None else f"exit status {status}, expected {expected}"
    return f"{block.where}: `{' '.join(cmd[-2:])}` {what}:\n{tail}"


def run_page(page: Path, workdir: Path, env: dict[str, str], *, venv: str | None = None) -> list[str]:
    """Run the page's blocks for ``venv`` (None: this one) in order in ``workdir``; parse the others.

    Returns one failure message per block that failed.
    """
    seed(workdir)
    failures: list[str] = []
    written: set[Path] = set()
    for block in blocks(page):
        if block.kind == "run" and block.options.get("venv") in (venv, "both"):
            failure = run_block(block, workdir, env, written, python=sys.executable)
        else:
            problem = check_fragment(block)
            failure = f"{block.where}: the block does not parse: {problem}" if problem else None
        if failure:
            failures.append(failure)
    return failures
