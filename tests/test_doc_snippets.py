"""Every python, toml and bash block of README.md and docs/ is classified, and every runnable one runs.

The markers are described in tests/support/doc_blocks.py. A page's ``<!-- run -->`` blocks run in
document order in one fresh directory of their own (outside this repository, so no pytest or ruff
configuration of ours applies), as a reader working through the page would run them:

- Python: ``python block.py`` in a subprocess; a block that defines ``test_`` functions is a test file
  instead, run with ``python -m pytest`` and pytest-asyncio's default (strict) configuration.
- TOML: ``fastapps-auth check`` (a chain configuration).
- bash: ``bash -e -o pipefail``, with this venv's ``fastapps-auth`` first on ``PATH``.

What a page finds there is the quickstart's state after its step 4: a dev issuer served by
``fastapps-auth dev-issuer serve`` (the CLI's ``dev-issuer mint`` signs with its keys), the quickstart's
``auth.toml`` (``AUTH_TOML``), a SQLite ``users.db`` (alice, dave, erin and frank active, bob banned,
carol inactive), and the environment in ``ENVIRONMENT`` below: ``AUTH_ISSUER_URL``,
``AUTH_AUDIENCE`` (``http://127.0.0.1:8000/mcp``, which the issuer's tokens carry), ``DATABASE_URL``,
``TOKEN`` (alice's, scope ``read``)... A ``${VAR}`` that a block uses without a default and the
environment lacks gets a placeholder (a URL for ``*_URL``/``*_URI``), so a block can show
configuration by variable as production would. Each block has ``TIMEOUT`` seconds.
"""

from __future__ import annotations

import ast
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.doc_blocks import ROOT, Block, blocks, pages

TIMEOUT = 120.0
BIN = Path(sys.executable).parent
AUDIENCE = "http://127.0.0.1:8000/mcp"
USERS = [("alice", 1, 0), ("bob", 1, 1), ("carol", 0, 0), ("dave", 1, 0), ("erin", 1, 0), ("frank", 1, 0)]
POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
ENVIRONMENT = {
    "AUTH_AUDIENCE": AUDIENCE,
    "DATABASE_URL": "sqlite:///users.db",
    "DATABASE_POOLER_URL": POSTGRES,
    "DATABASE_DIRECT_URL": POSTGRES,
    "NO_COLOR": "1",
    "COLUMNS": "120",
}
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
ALL = [block for page in pages() for block in blocks(page)]


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


@pytest.fixture(scope="module")
def doc_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The environment of every block: a served dev issuer, its state directory, a token, the variables."""
    state = tmp_path_factory.mktemp("dev-issuer-state")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "COV_"))}
    env.update(ENVIRONMENT, FASTAPPS_AUTH_DEV_ISSUER_DIR=str(state), PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
    log = (state.parent / "dev-issuer.log").open("w")
    cmd = [str(BIN / "fastapps-auth"), "dev-issuer", "serve", "--port", "0", "--audience", AUDIENCE]
    server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = None
        deadline = time.monotonic() + 30
        while url is None and time.monotonic() < deadline and server.poll() is None:
            found = re.search(r"dev issuer (http://127\.0\.0\.1:\d+)", (state.parent / "dev-issuer.log").read_text())
            url = found.group(1) if found else time.sleep(0.05)
        assert url is not None, f"the dev issuer did not start: {(state.parent / 'dev-issuer.log').read_text()}"
        httpx.get(f"{url}/.well-known/oauth-authorization-server", timeout=10).raise_for_status()
        env["AUTH_ISSUER_URL"] = url
        status, token = run([str(BIN / "fastapps-auth"), "dev-issuer", "mint", "--sub", "alice", "--scope", "read"],
                            state, env)  # fmt: skip
        assert status == 0, token
        env["TOKEN"] = token.strip()
        yield env
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=10)
        log.close()


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


def run_block(block: Block, workdir: Path, env: dict[str, str], written: set[Path]) -> str | None:
    """Run one ``<!-- run -->`` block in ``workdir``; a failure message, or None.

    ``written``: the files earlier blocks of the page wrote; a block for one of them adds to it, a block for
    any other file replaces it (the page's own ``auth.toml`` replaces the seeded one).
    """
    stem = f"block_{block.page.stem.replace('-', '_')}_{block.line}"
    target = workdir / block.options.get("file", f"{stem}.{ {'python': 'py', 'toml': 'toml', 'bash': 'sh'}[block.lang]}")
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("a" if target in written else "w", encoding="utf-8") as f:
        f.write(block.code)
    written.add(target)
    env = {**env, **placeholders(block.code, env)}
    if block.lang == "python" and re.search(r"^(async )?def test_", block.code, flags=re.M):
        if not target.name.startswith("test_"):
            target = target.rename(workdir / f"test_{stem}.py")
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", target.name]
    elif block.lang == "python":
        cmd = [sys.executable, str(target.relative_to(workdir))]
    elif block.lang == "toml":
        cmd = [str(BIN / "fastapps-auth"), "check", str(target.relative_to(workdir))]
    else:
        cmd = ["bash", "-e", "-o", "pipefail", str(target.relative_to(workdir))]
    status, out = run(cmd, workdir, env)
    expected = int(block.options.get("exit", "0"))
    if status == expected:
        return None
    tail = "\n".join(out.splitlines()[-40:])
    what = f"timed out after {TIMEOUT:g} s" if status is None else f"exit status {status}, expected {expected}"
    return f"{block.where}: `{' '.join(cmd[-2:])}` {what}:\n{tail}"


def test_every_block_is_marked() -> None:
    """Every python, toml and bash block says whether it runs as written or is a fragment."""
    unmarked = [f"{b.where} ({b.lang})" for b in ALL if b.kind is None and b.problem is None]
    malformed = [f"{b.where}: {b.problem}" for b in ALL if b.problem is not None]
    assert not malformed, "\n".join(malformed)
    assert not unmarked, (
        "put <!-- run --> (runs as written) or <!-- fragment --> on the line before each of these blocks:\n"
        + "\n".join(unmarked)
    )


def test_most_blocks_run_as_written() -> None:
    runnable = [b for b in ALL if b.kind == "run"]
    assert len(runnable) > len(ALL) / 2, f"only {len(runnable)} of {len(ALL)} blocks are marked <!-- run -->"


@pytest.mark.parametrize("page", [p for p in pages() if blocks(p)], ids=lambda p: str(p.relative_to(ROOT)))
def test_the_page_runs_as_written(page: Path, doc_env: dict[str, str], tmp_path: Path) -> None:
    """The page's runnable blocks run, in order, in a directory of their own; its fragments parse."""
    seed(tmp_path)
    failures = []
    written: set[Path] = set()
    for block in blocks(page):
        if block.kind == "run":
            failure = run_block(block, tmp_path, doc_env, written)
        else:
            problem = check_fragment(block)
            failure = f"{block.where}: the fragment does not parse: {problem}" if problem else None
        if failure:
            failures.append(failure)
    assert not failures, "\n\n".join(failures)
