"""The ``fastapps-auth`` command: list plugins, check a config, explain decisions, run the demo.

``main`` is the console-script entry point (``fastapps-auth = "fastapps_auth.cli:main"``); ``app``
is the Typer application (for ``typer.testing.CliRunner``).
"""

from __future__ import annotations

from fastapps_auth.cli.app import shown
from fastapps_auth.cli.main import app, main

__all__ = ["app", "main", "shown"]
