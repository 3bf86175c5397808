"""A plugin's options described for people: the CLI's ``plugins`` listing and the docs' tables.

Both read the same pydantic options model through these functions, so neither can
drift from the code nor from each other.
"""

from __future__ import annotations

import enum
import json
import types
import typing
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

#: ``default`` of an option that has none.
REQUIRED: Any = PydanticUndefined
#: ``default`` of an option whose default is computed and could not be shown.
COMPUTED = object()


def type_label(annotation: Any) -> str:
    """A readable name for an option's type: ``str | None``, ``list[str]``, ``"deny" | "allow"``."""
    if annotation is None or annotation is type(None):
        return "None"
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return type_label(args[0])
    if origin is typing.Literal:
        return " | ".join(repr(a).replace("'", '"') for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_label(a) for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(type_label(a) for a in args)}]" if args else name
    if isinstance(annotation, type):
        if issubclass(annotation, enum.Enum):
            return " | ".join(repr(m.value).replace("'", '"') for m in annotation)
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def default_value(field: FieldInfo) -> Any:
    """The option's default as plain data, ``REQUIRED``, or ``COMPUTED``."""
    if field.is_required():
        return REQUIRED
    if field.default_factory is not None:
        try:
            value = field.default_factory()  # type: ignore[call-arg]
        except Exception:
            return COMPUTED
    else:
        value = field.default
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, BaseModel):
        return value.model_dump()
    return value


def nested_models(annotation: Any) -> list[type[BaseModel]]:
    """Pydantic models inside a field's type (``list[RuleOptions] | None`` → ``[RuleOptions]``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        for model in nested_models(arg):
            if model not in found:
                found.append(model)
    return found


@dataclass(frozen=True, slots=True)
class OptionInfo:
    """One option: its key in a config file, type, default, description and nested option models."""

    name: str
    type_text: str
    default: Any
    description: str
    nested: tuple[type[BaseModel], ...] = ()

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    @property
    def default_text(self) -> str | None:
        """The default as a config file spells it (``true``, ``"deny"``, ``["RS256"]``); ``None`` when
        there is none to show (required, computed, or ``None``): see ``required``."""
        value = self.default
        if value is REQUIRED or value is COMPUTED or value is None:
            return None
        try:
            return json.dumps(value, default=str)
        except (TypeError, ValueError):  # keys JSON cannot write, a value that contains itself
            return repr(value)


def options_of(model: type[BaseModel]) -> list[OptionInfo]:
    """Every option of an options model, in declaration order."""
    return [
        OptionInfo(
            field.alias or name,
            type_label(field.annotation),
            default_value(field),
            field.description or "",
            tuple(nested_models(field.annotation)),
        )
        for name, field in model.model_fields.items()
    ]
