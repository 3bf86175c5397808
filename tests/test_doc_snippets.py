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
carol inactive), and the environment in ``ENVIRONMENT`` (tests/support/doc_blocks.py): ``AUTH_ISSUER_URL``,
``AUTH_AUDIENCE`` (``http://127.0.0.1:8000/mcp``, which the issuer's tokens carry), ``DATABASE_URL``,
``TOKEN`` (alice's, scope ``read``)... A ``${VAR}`` that a block uses without a default and the
environment lacks gets a placeholder (a URL for ``*_URL``/``*_URI``), so a block can show
configuration by variable as production would. Each block has ``TIMEOUT`` seconds.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.doc_blocks import AUDIENCE, ENVIRONMENT, ROOT, blocks, pages, run, run_page

BIN = Path(sys.executable).parent
ALL = [block for page in pages() for block in blocks(page)]


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
            if found is None:
                time.sleep(0.05)  # the issuer prints its URL once it listens
                continue
            url = found.group(1)
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
    """The page's runnable blocks run, in order, in a directory of their own; the others parse."""
    failures = run_page(page, tmp_path, doc_env)
    assert not failures, "\n\n".join(failures)


# -- the collector and the runner themselves -----------------------------------------------------------------

PAGE = """\
# A page

<!-- run -->
```python
print("ran")
```

text between

<!-- fragment -->

```toml
query = "SELECT 1"
```

```bash
echo unmarked
```

```console
$ not collected
```

- a list item:

  <!-- run exit=3 -->
  ```bash
  exit 3
  ```

````markdown
```python
inside another fence: not a block of this page
```
````

<!-- run file=mod.py -->
```py
A = 1
```

<!-- run file=mod.py -->
```python
B = A + 1
print("B", B)
```

<!-- run nope=1 -->
```sh
true
```
"""


def test_blocks_are_found_with_their_markers(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(PAGE)
    found = [(b.line, b.lang, b.kind, b.options, b.problem) for b in blocks(page)]
    assert found == [
        (4, "python", "run", {}, None),
        (12, "toml", "fragment", {}, None),  # a blank line between marker and fence is allowed
        (16, "bash", None, {}, None),  # unmarked: test_every_block_is_marked names it
        (27, "bash", "run", {"exit": "3"}, None),  # indented in a list item
        (38, "python", "run", {"file": "mod.py"}, None),
        (43, "python", "run", {"file": "mod.py"}, None),
        (49, "bash", "run", {"nope": "1"}, "unknown marker option(s) ['nope'] for run"),
    ]
    assert blocks(page)[3].code == "exit 3\n"


def test_the_runner_runs_in_order_and_reports_each_failure(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        PAGE.replace("```bash\necho unmarked\n```", "<!-- run -->\n```bash\necho $TOKEN\n```")
        + '\n<!-- run -->\n```python\nraise SystemExit("boom")\n```\n'
        + '\n<!-- run -->\n```toml\n[[stages]]\nuse = "rate-limit"\nlimit = 1\nwindow = 1\n```\n'
        + "\n<!-- fragment -->\n```python\ndef broken(:\n```\n"
    )
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, **ENVIRONMENT, "AUTH_ISSUER_URL": "https://auth.example.com/", "TOKEN": "the-secret-token"}
    failures = run_page(page, work, env)
    assert (work / "mod.py").read_text() == 'A = 1\nB = A + 1\nprint("B", B)\n'  # the second block added to it
    assert (work / "auth.toml").exists() and (work / "users.db").exists()  # the seeded directory
    assert [f.split(":", 2)[1] for f in failures] == ["17", "55", "60", "68"], failures
    assert "printed the raw token it was given" in failures[0]
    assert "exit status 1, expected 0" in failures[1] and "boom" in failures[1]
    assert "no stage authenticates the token" in failures[2]
    assert "does not parse" in failures[3]
