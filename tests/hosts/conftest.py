"""Host tests run in ``.venv-hosts`` (mcp 2.x, fastmcp 4.x); in the main venv they are not collected."""

from __future__ import annotations

from importlib.metadata import version

_MAJOR = int(version("mcp").split(".")[0])

collect_ignore_glob = [] if _MAJOR >= 2 else ["test_*.py"]
