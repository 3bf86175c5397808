"""mkdocs hook: render `<!-- options: <plugin-name> -->` as a table of that plugin's options.

The table comes from the plugin's pydantic options model (``registry.load(name).options_model``), so the
docs cannot drift from the code. An unknown or broken plugin fails the build with a message naming the page.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError as MkDocsPluginError
from pydantic import BaseModel

from fastapps_auth.cli.options_info import COMPUTED, OptionInfo, options_of

MARKER = re.compile(r"^[ \t]*<!--\s*options:\s*([A-Za-z0-9_.:-]+)\s*-->[ \t]*$", re.MULTILINE)


def default_text(info: OptionInfo) -> str:
    """The default as written in a config file, or *required*."""
    text = info.default_text
    if text is not None:
        return f"`{text}`"
    return "*required*" if info.required else "(computed)" if info.default is COMPUTED else "—"


def cell(text: str) -> str:
    """Escape a table cell outside code spans: a pipe would split it, ``<name>`` vanish as HTML."""
    parts = text.replace("\n", " ").split("`")
    for i in range(0, len(parts), 2):  # outside code spans only
        parts[i] = parts[i].replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")
    return "`".join(parts).strip()  # Python-Markdown keeps a pipe inside a code span in its cell


def options_table(model: type[BaseModel], _seen: set[type[BaseModel]] | None = None) -> str:
    """The Markdown table of ``model``'s fields (option, type, default, description), then one per nested model."""
    rows = ["| Option | Type | Default | Description |", "|---|---|---|---|"]
    seen = _seen if _seen is not None else {model}
    nested: list[tuple[str, type[BaseModel]]] = []
    for option in options_of(model):
        rows.append(
            f"| `{option.name}` | `{option.type_text}` | {cell(default_text(option))} | {cell(option.description)} |"
        )
        for sub in option.nested:
            if sub not in seen:
                seen.add(sub)
                nested.append((option.name, sub))
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
