"""FastApps widgets for the integration tests: one per auth decorator, and building them without a compiler."""

from __future__ import annotations

from typing import Any

from fastapps import BaseWidget, auth_required, no_auth
from fastapps.builder.compiler import WidgetBuildResult
from pydantic import BaseModel


class NoInput(BaseModel):
    pass


def build(widget: type[BaseWidget]) -> BaseWidget:
    """An instance of ``widget``, as FastApps builds it from its compiled assets."""
    return widget(WidgetBuildResult(name=widget.identifier, hash="0", html="<div></div>"))


@no_auth
class Public(BaseWidget):  # type: ignore[misc]  # fastapps ships no type information: BaseWidget is Any
    identifier = "public"
    title = "Public"
    input_schema = NoInput

    async def execute(self, input_data: Any, context: Any = None, user: Any = None) -> dict[str, Any]:
        return {"authenticated": bool(user and user.is_authenticated)}


@auth_required
class Protected(BaseWidget):  # type: ignore[misc]  # fastapps ships no type information: BaseWidget is Any
    identifier = "protected"
    title = "Protected"
    input_schema = NoInput

    async def execute(self, input_data: Any, context: Any = None, user: Any = None) -> dict[str, Any]:
        return {"subject": user.subject if user else None}
