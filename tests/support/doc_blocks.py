"""The fenced code blocks of README.md and docs/, with the marker that classifies each one.

A ``python``, ``toml`` or ``bash`` block carries a marker on the last non-blank line before its fence:

- ``<!-- run -->``: it runs as written (see tests/test_doc_snippets.py for how each language runs);
  ``<!-- run file=NAME -->`` also writes it to NAME in the page's directory, where later blocks of the
  page find it (a second block naming the same file is appended, as a reader copying both would);
  ``exit=N`` expects exit status N instead of 0.
- ``<!-- fragment -->``: part of something larger (placeholders, names from the prose); it is only
  parsed (Python, top-level ``await`` allowed; TOML; ``bash -n``).

Any other fenced block (``console``, ``text``, ``json``...) is prose, not collected.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent

#: Fence info strings collected, and the language each one is run as.
LANGUAGES = {"python": "python", "py": "python", "toml": "toml", "bash": "bash", "sh": "bash", "shell": "bash"}

FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`\s]*)")
MARKER = re.compile(r"^\s*<!--\s*(?P<kind>run|fragment)(?P<options>(?:\s+[\w-]+=\S+)*)\s*-->\s*$")
OPTION = re.compile(r"([\w-]+)=(\S+)")
OPTIONS = {"run": {"file", "exit"}, "fragment": set()}


@dataclass(frozen=True)
class Block:
    """One fenced block: where it is, its language, its code, and its marker (``kind`` None when unmarked)."""

    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    kind: str | None
    options: dict[str, str] = field(default_factory=dict)
    problem: str | None = None  # a malformed marker

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def pages() -> list[Path]:
    """README.md and every page under docs/, in a stable order."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _marker(lines: list[str], fence_index: int) -> tuple[str | None, dict[str, str], str | None]:
    before = next((lines[i] for i in range(fence_index - 1, -1, -1) if lines[i].strip()), "")
    found = MARKER.match(before)
    if found is None:
        if "<!--" in before and re.search(r"\b(run|fragment)\b", before):
            return None, {}, f"malformed marker {before.strip()!r}"
        return None, {}, None
    kind = found.group("kind")
    options = dict(OPTION.findall(found.group("options")))
    unknown = set(options) - OPTIONS[kind]
    if unknown:
        return kind, options, f"unknown marker option(s) {sorted(unknown)} for {kind}"
    if "exit" in options and not options["exit"].isdigit():
        return kind, options, f"exit={options['exit']!r} is not an exit status"
    return kind, options, None


def blocks(page: Path) -> list[Block]:
    """The page's python, toml and bash blocks, in document order."""
    lines = page.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        fence, indent = opening.group("fence"), len(opening.group("indent"))
        end = next(
            (j for j in range(i + 1, len(lines)) if re.fullmatch(rf"[ \t]*{fence[0]}{{{len(fence)},}}[ \t]*", lines[j])),
            len(lines),
        )
        lang = LANGUAGES.get(opening.group("info").lower())
        if lang is not None:
            body = "\n".join(line[indent:] if line[:indent].isspace() else line for line in lines[i + 1 : end])
            kind, options, problem = _marker(lines, i)
            found.append(Block(page, i + 1, lang, textwrap.dedent(body) + "\n", kind, options, problem))
        i = end + 1
    return found
