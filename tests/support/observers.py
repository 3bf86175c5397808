"""An observer for tests: records every decision it sees."""

from __future__ import annotations

from typing import Any

from fastapps_auth import Decision, Observer
from fastapps_auth.component import ComponentOptions


class Recorder(Observer[ComponentOptions]):
    """Keeps every decision in ``decisions``, in order."""

    plugin_name = "recorder"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.decisions: list[Decision] = []

    def __call__(self, decision: Decision) -> None:
        self.decisions.append(decision)
