"""The option tables written into the docs pages, between ``<!-- options: NAME -->`` and ``<!-- /options -->``.

Each table comes from the plugin's pydantic options model (``registry.load(name).options_model``), so a
page cannot drift from the code without ``--check`` (and the test suite) saying so; the tables are in the
``.md`` files themselves, so a reader on a code host sees them too. Regenerate them with::

    python -m fastapps_auth.cli.options_tables --write docs      # or: make docs-tables

A marker without its closing ``<!-- /options -->`` (a page just written) gets its table the same way.
Markers inside code fences are examples and are left alone.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from pydantic import BaseModel

from fastapps_auth.cli.options_info import COMPUTED, OptionInfo, options_of

#: The opening marker, alone on its line.
OPEN = re.compile(r"^[ \t]*<!--\s*options:\s*([A-Za-z0-9_.:-]+)\s*-->[ \t]*$")
#: The closing marker, alone on its line.
CLOSE = re.compile(r"^[ \t]*<!--\s*/options\s*-->[ \t]*$")


class OptionsTableError(ValueError):
    """A marker names a plugin that cannot be loaded, or whose options lack descriptions; names the page."""


def default_text(info: OptionInfo) -> str:
    """The default as written in a config file, or *required*."""
    text = info.default_text
    if text is not None:
        return f"`{text}`"
    return "*required*" if info.required else "(computed)" if info.default is COMPUTED else "—"


def cell(text: str, *, site: bool = False) -> str:
    """Escape a table cell: outside code spans a pipe would split it and ``<name>`` vanish as HTML.

    Inside code spans, GitHub's tables need ``\\|`` for a pipe (and show ``|``); Python-Markdown keeps a bare
    pipe in its cell and would show the backslash, so the built site (``site=True``) gets it bare.
    """
    parts = text.replace("\n", " ").split("`")
    for i, part in enumerate(parts):
        if i % 2 == 0:
            parts[i] = part.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")
        elif not site:
            parts[i] = part.replace("|", "\\|")
    return "`".join(parts).strip()


def options_table(model: type[BaseModel], *, site: bool = False, _seen: set[type[BaseModel]] | None = None) -> str:
    """The Markdown table of ``model``'s fields (option, type, default, description), then one per nested model.

    ``site``: for Python-Markdown (the mkdocs build) rather than GitHub (see ``cell``).
    """
    rows = ["| Option | Type | Default | Description |", "|---|---|---|---|"]
    seen = _seen if _seen is not None else {model}
    nested: list[tuple[str, type[BaseModel]]] = []
    for option in options_of(model):
        name, kind = cell(f"`{option.name}`", site=site), cell(f"`{option.type_text}`", site=site)
        default, description = cell(default_text(option), site=site), cell(option.description, site=site)
        rows.append(f"| {name} | {kind} | {default} | {description} |")
        for sub in option.nested:
            if sub not in seen:
                seen.add(sub)
                nested.append((option.name, sub))
    out = "\n".join(rows)
    for key, sub in nested:
        out += f"\n\nEach entry of `{key}` (`{sub.__name__}`):\n\n" + options_table(sub, site=site, _seen=seen)
    return out


def plugin_table(name: str, *, where: str, site: bool = False) -> str:
    """The options table of the installed plugin ``name``; ``OptionsTableError`` naming ``where`` otherwise."""
    from fastapps_auth.errors import PluginError
    from fastapps_auth.registry import load

    try:
        component = load(name)
    except PluginError as exc:
        raise OptionsTableError(f"{where}: <!-- options: {name} -->: {exc.detail}") from None
    model = component.options_model
    missing = [f for f, info in model.model_fields.items() if not (info.description or "").strip()]
    if missing:
        raise OptionsTableError(
            f"{where}: plugin '{name}' has options without a description: {', '.join(missing)} "
            "(give each Field(description=...))"
        )
    return options_table(model, site=site)


def render(markdown: str, *, where: str, site: bool = False) -> str:
    """``markdown`` with every marker followed by its plugin's current table and the closing marker.

    What stood between a marker and its ``<!-- /options -->`` is replaced; a marker without one gets both.
    """
    lines = markdown.split("\n")
    out: list[str] = []
    fence: str | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.lstrip()
        i += 1
        if fence is None and stripped.startswith(("```", "~~~")):
            fence = stripped[:3]
        elif fence is not None and stripped.startswith(fence):
            fence = None
        elif fence is None and (opened := OPEN.match(line)):
            end = next((j for j in range(i, len(lines)) if CLOSE.match(lines[j]) or OPEN.match(lines[j])), None)
            out += [line, "", plugin_table(opened.group(1), where=where, site=site), "", "<!-- /options -->"]
            if end is not None and CLOSE.match(lines[end]):
                i = end + 1  # what stood between the markers is replaced
            continue
        out.append(line)
    return "\n".join(out)


def pages(paths: Iterable[Path]) -> Iterator[Path]:
    """The Markdown files named, or found under the directories named, in a stable order."""
    for path in paths:
        yield from sorted(path.rglob("*.md")) if path.is_dir() else [path]


def main(argv: list[str] | None = None) -> int:
    """``--write`` rewrites the stale pages; ``--check`` (the default) lists them and exits 1."""
    p = argparse.ArgumentParser(
        prog="python -m fastapps_auth.cli.options_tables", description="Write the docs' option tables."
    )
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="Markdown files or directories")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="rewrite pages whose tables are stale")
    mode.add_argument("--check", action="store_true", help="list pages whose tables are stale, exit 1 (default)")
    ns = p.parse_args(argv)
    stale: list[Path] = []
    for page in pages(ns.paths):
        text = page.read_text(encoding="utf-8")
        try:
            fresh = render(text, where=str(page))
        except OptionsTableError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if fresh != text:
            stale.append(page)
            if ns.write:
                page.write_text(fresh, encoding="utf-8")
    for page in stale:
        print(f"{'wrote' if ns.write else 'stale'}: {page}")
    return 1 if stale and not ns.write else 0


if __name__ == "__main__":
    raise SystemExit(main())
