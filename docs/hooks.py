"""mkdocs hook: render `<!-- options: <plugin-name> -->` as a table of that plugin's options.

The table comes from the plugin's pydantic options model (``registry.load(name).options_model``), so the
docs cannot drift from the code. An unknown or broken plugin fails the build with a message naming the page.
"""

from __future__ import annotations

import enum
import re
import types
import typing
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError as MkDocsPluginError
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

MARKER = re.compile(r"^[ \t]*<!--\s*options:\s*([A-Za-z0-9_.:-]+)\s*-->[ \t]*$", re.MULTILINE)


def type_name(annotation: Any) -> str:
    """A short, readable name for a field's type: ``str | None``, ``list[str]``, ``"deny" | "allow"``."""
    if annotation is None or annotation is type(None):
        return "None"
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin is typing.Literal:
        return " | ".join(repr(a).replace("'", '"') for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is not None:
        base = getattr(origin, "__name__", str(origin))
        return f"{base}[{', '.join(type_name(a) for a in args)}]" if args else base
    if isinstance(annotation, type):
        if issubclass(annotation, enum.Enum):
            return " | ".join(repr(m.value).replace("'", '"') for m in annotation)
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def default_text(field: FieldInfo) -> str:
    """The default as written in a config file, or *required*."""
    if field.default_factory is not None:
        try:
            value = field.default_factory()  # type: ignore[call-arg]
        except TypeError:
            return "(computed)"
    elif field.default is PydanticUndefined:
        return "*required*"
    else:
        value = field.default
    if value is None:
        return "—"
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, BaseModel):
        value = value.model_dump()
    text = repr(value).replace("'", '"')
    if isinstance(value, bool):
        text = "true" if value else "false"
    return f"`{text}`"


def cell(text: str) -> str:
    """Escape a table cell outside code spans: a pipe would split it, ``<name>`` vanish as HTML."""
    parts = text.replace("\n", " ").split("`")
    for i in range(0, len(parts), 2):  # outside code spans only
        parts[i] = parts[i].replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")
    return "`".join(parts).strip()  # Python-Markdown keeps a pipe inside a code span in its cell


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


def options_table(model: type[BaseModel], _seen: set[type[BaseModel]] | None = None) -> str:
    """The Markdown table of ``model``'s fields (option, type, default, description), then one per nested model."""
    rows = ["| Option | Type | Default | Description |", "|---|---|---|---|"]
    seen = _seen if _seen is not None else {model}
    nested: list[tuple[str, type[BaseModel]]] = []
    for name, field in model.model_fields.items():
        key = field.alias or name
        description = field.description or ""
        type_text = type_name(field.annotation)
        rows.append(f"| `{key}` | `{type_text}` | {cell(default_text(field))} | {cell(description)} |")
        for sub in nested_models(field.annotation):
            if sub not in seen:
                seen.add(sub)
                nested.append((key, sub))
    out = "\n".join(rows)
    for key, sub in nested:
        out += f"\n\nEach entry of `{key}` (`{sub.__name__}`):\n\n" + options_table(sub, seen)
    return out


def render(markdown: str, *, where: str) -> str:
    """Replace every options marker in ``markdown``; raise for an unknown or broken plugin."""
    from fastapps_auth.errors import PluginError
    from fastapps_auth.registry import load

    def sub(match: re.Match[str]) -> str:
        name = match.group(1)
        try:
            component = load(name)
        except PluginError as exc:
            raise MkDocsPluginError(f"{where}: <!-- options: {name} -->: {exc.detail}") from None
        model = component.options_model
        missing = [f for f, info in model.model_fields.items() if not (info.description or "").strip()]
        if missing:
            raise MkDocsPluginError(
                f"{where}: plugin '{name}' has options without a description: {', '.join(missing)} "
                "(give each Field(description=...))"
            )
        return options_table(model)

    out: list[str] = []
    fence: str | None = None
    for line in markdown.splitlines(keepends=True):
        stripped = line.lstrip()
        if fence is None and stripped.startswith(("```", "~~~")):
            fence = stripped[:3]
        elif fence is not None and stripped.startswith(fence):
            fence = None
        elif fence is None:
            line = MARKER.sub(sub, line)  # markers inside code fences are examples, left alone
        out.append(line)
    return "".join(out)


#: Nav sections that also list every page of a docs folder, so pages added later (a new stage, a new
#: benchmark area) appear without editing mkdocs.yml.
AUTO_SECTIONS = {"Stages": "stages", "Benchmarks": "benchmarks"}


def _listed(items: list[Any]) -> set[str]:
    found: set[str] = set()
    for item in items:
        if isinstance(item, str):
            found.add(item)
        elif isinstance(item, dict):
            for value in item.values():
                found |= _listed(value) if isinstance(value, list) else {value} if isinstance(value, str) else set()
    return found


def on_config(config: Any) -> Any:
    """mkdocs event: add unlisted pages of docs/stages/ and docs/benchmarks/ to their nav sections."""
    nav = config.get("nav") or []
    docs_dir = Path(config["docs_dir"])
    for entry in nav:
        if not isinstance(entry, dict):
            continue
        for title, items in entry.items():
            folder = AUTO_SECTIONS.get(title)
            if folder is None or not isinstance(items, list):
                continue
            listed = _listed(items)
            for page in sorted((docs_dir / folder).glob("*.md")):
                rel = f"{folder}/{page.name}"
                if rel not in listed:
                    items.append({page.stem: rel})
    return config


def on_page_markdown(markdown: str, *, page: Any, config: Any, files: Any) -> str:
    """mkdocs event: expand the options markers of one page."""
    return render(markdown, where=str(page.file.src_uri))
