"""mkdocs hooks: the option tables of the pages, and the pages of auto-listed nav sections.

The pages hold their option tables (between ``<!-- options: NAME -->`` and ``<!-- /options -->``, written by
``make docs-tables``); the build renders them again from the plugins' options models, so the site shows each
table once and current, and an unknown or broken plugin fails the build with a message naming the page.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError as MkDocsPluginError

from fastapps_auth.cli import options_tables


def render(markdown: str, *, where: str) -> str:
    """The page with every options table rendered from its plugin; a build error naming the page otherwise."""
    try:
        return options_tables.render(markdown, where=where, site=True)
    except options_tables.OptionsTableError as exc:
        raise MkDocsPluginError(str(exc)) from None


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
