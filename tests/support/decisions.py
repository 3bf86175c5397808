"""An observer that keeps every decision it sees, for tests that count what the observers were told."""

from __future__ import annotations

from typing import ClassVar

from fastapps_auth import Decision, Observer
from fastapps_auth.component import ComponentOptions


class Recorder(Observer[ComponentOptions]):
    """Keeps each decision, in order."""

    plugin_name: ClassVar[str] = "recorder"

    def __init__(self) -> None:
        super().__init__()
        self.decisions: list[Decision] = []

    def __call__(self, decision: Decision) -> None:
        self.decisions.append(decision)

    def refusals(self) -> list[tuple[int, str | None, str | None]]:
        """(status, stage, reason) of each refusal."""
        return [(d.status, d.stage, d.reason) for d in self.decisions if not d.allowed]
