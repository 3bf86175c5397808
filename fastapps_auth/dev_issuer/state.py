"""The dev issuer's state directory: one folder shared by ``serve``, ``mint``, ``keys``, ``rotate``, ``clients``.

It holds ``keys.json`` (the private signing keys) and ``issuer.json`` (the URL the last ``serve``
used, its audience and lifetime, and the clients with their secrets), both mode 0600. The
default is a per-user data directory, so every command finds the same keys wherever it runs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from fastapps_auth.dev_issuer.clients import Client
from fastapps_auth.dev_issuer.keystore import KEYS_FILE

DIR_ENV = "FASTAPPS_AUTH_DEV_ISSUER_DIR"
ISSUER_FILE = "issuer.json"


def default_dir() -> Path:
    """The per-user data directory (``~/.local/share/fastapps-auth/dev-issuer`` on Linux)."""
    import platformdirs

    return platformdirs.user_data_path("fastapps-auth", appauthor=False) / "dev-issuer"


def write_private(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as JSON, readable by the owner only, replacing the file in one step."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # the mode above applies only to a new file; a stale one may be readable by others
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)


class StateDir:
    """The folder ``path`` (``--state-dir``, else ``$FASTAPPS_AUTH_DEV_ISSUER_DIR``, else the default)."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        chosen = path or os.environ.get(DIR_ENV)
        self.path = Path(chosen).expanduser() if chosen else default_dir()

    def __str__(self) -> str:
        return str(self.path)

    @property
    def has_keys(self) -> bool:
        return (self.path / KEYS_FILE).exists()

    @property
    def served(self) -> bool:
        """Whether a ``serve`` has run with this directory (so keys are expected in it)."""
        return (self.path / ISSUER_FILE).exists()

    def read(self) -> dict[str, Any]:
        try:
            data = json.loads((self.path / ISSUER_FILE).read_text())
        except FileNotFoundError:
            return {}
        except json.JSONDecodeError as exc:
            raise ValueError(f"{self.path / ISSUER_FILE} is not valid JSON ({exc.msg}, line {exc.lineno})") from None
        return data if isinstance(data, dict) else {}

    def clients(self) -> list[Client]:
        """The saved clients (configured and registered), as the last ``serve`` left them."""
        saved = self.read().get("clients", [])
        return [Client.from_json(c) for c in saved if isinstance(c, dict) and c.get("client_id")]

    def save(self, *, issuer: str, audience: str | list[str], lifetime: float, clients: list[Client]) -> None:
        data = {
            "issuer": issuer,
            "audience": audience,
            "lifetime": lifetime,
            "clients": [c.to_json() for c in clients if not c.metadata_document],
        }
        write_private(self.path / ISSUER_FILE, data)
