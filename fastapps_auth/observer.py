"""Observers see every decision exactly once, after it is made, and can never change it."""

from __future__ import annotations

from typing import ClassVar

from fastapps_auth.component import Component, ComponentOptions, OptionsT
from fastapps_auth.decision import Decision


class Observer(Component[OptionsT]):
    """Base class of observers (audit log, metrics). ``__call__`` must be quick and synchronous.

    An observer that raises is logged by the chain; the decision stands.
    """

    kind: ClassVar[str] = "observer"
    options_model: ClassVar[type[ComponentOptions]] = ComponentOptions

    def __call__(self, decision: Decision) -> None:
        raise NotImplementedError
