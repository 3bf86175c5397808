"""The doc blocks marked ``<!-- run venv=hosts -->`` or ``venv=both`` run as written in this venv (mcp 2.x,
FastMCP 4.x).

The main suite runs every other ``<!-- run -->`` block (tests/test_doc_snippets.py) and only parses these.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.doc_blocks import ENVIRONMENT, ROOT, blocks, pages, run_page

HOSTS_PAGES = [
    p for p in pages() if any(b.kind == "run" and b.options.get("venv") in ("hosts", "both") for b in blocks(p))
]


def test_some_blocks_need_this_venv() -> None:
    assert HOSTS_PAGES, "no doc block is marked <!-- run venv=hosts -->: is this test still needed?"


@pytest.mark.parametrize("page", HOSTS_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_page_runs_as_written_with_mcp2(page: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env.update(ENVIRONMENT, AUTH_ISSUER_URL="https://auth.example.com/", TOKEN="not-a-token")
    failures = run_page(page, tmp_path, env, venv="hosts")
    assert not failures, "\n\n".join(failures)
