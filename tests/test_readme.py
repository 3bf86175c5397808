"""The README tells the truth: its sample output is the demo's, its layout names every package, its
chain builds what it shows; and concepts.md names every built-in plugin.

(Every README block also runs as written: tests/test_doc_snippets.py.)
"""

from __future__ import annotations

import contextlib
import io
import re
import tomllib
from pathlib import Path

import pytest

from fastapps_auth import chain_from_config, demo

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def blocks(lang: str, text: str = README) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, flags=re.S | re.M)


async def test_readme_toml_builds_the_chain_it_shows(tmp_path: Path) -> None:
    [toml] = [b for b in blocks("toml") if "[[stages]]" in b]
    path = tmp_path / "auth.toml"
    path.write_text(toml)
    env = {"AUTH_ISSUER_URL": "https://tenant.example.com/", "AUTH_AUDIENCE": "https://api.example.com"}
    chain = chain_from_config(path, env=env)
    assert [s.name for s in chain.stages] == ["jwt", "user-status", "rate-limit"]
    assert [o.name for o in chain.observers] == ["audit"]
    await chain.aclose()


# -- the sample output -------------------------------------------------------------------------------------


def normalize(line: str) -> str:
    """A line with what changes between runs (ports, client ids, times) replaced."""
    line = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", line)
    line = re.sub(r"dcr-[A-Za-z0-9_-]+", "dcr-ID", line)
    line = re.sub(r"in \d+(\.\d+)? s$", "in N s", line)
    return line.rstrip()


def cells(line: str, sep: str) -> list[str]:
    return [c.strip() for c in line.strip().strip(sep).split(sep)]


def tables(text: str) -> list[dict[str, object]]:
    """Each rich table: its title, its column names, and its rows' first cells (HTTP column too)."""
    found: list[dict[str, object]] = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith("┃"):
            rows = []
            for row in lines[i + 2 :]:
                if not row.strip().startswith(("│", "├")):
                    break
                values = cells(row, "│")
                if row.strip().startswith("│") and values[0]:  # a wrapped row continues with an empty first cell
                    rows.append((values[0], values[1]))
            found.append({"title": lines[i - 2].strip(), "columns": cells(line, "┃"), "rows": rows})
    return found


def audit_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("event='auth.decision'")]


def fields(line: str) -> list[str]:
    return re.findall(r"(?:^| )([a-z_]+)=", line)


def field(line: str, name: str) -> str | None:
    found = re.search(rf" {name}=('[^']*'|\S+)", line)
    return found.group(1) if found else None


@pytest.fixture(scope="module")
def demo_output() -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert demo.run() == 0
    return out.getvalue()


@pytest.mark.parametrize("page", ["README.md", "docs/demo-output.md"])
def test_the_sample_output_is_what_the_demo_prints(page: str, demo_output: str) -> None:
    """Columns, scenario names and statuses, steps, audit fields in order (timestamp too), the summary line."""
    [sample] = [b for b in blocks("text", (ROOT / page).read_text()) if b.startswith("fastapps-auth demo:")]
    head = [normalize(line) for line in sample.splitlines()[:3]]
    assert head == [normalize(line) for line in demo_output.splitlines()[:3]]

    shown, printed = tables(sample), tables(demo_output)
    assert [t["title"] for t in shown] == [t["title"] for t in printed]
    assert [t["columns"] for t in shown] == [t["columns"] for t in printed]
    assert [t["rows"] for t in shown] == [t["rows"] for t in printed]  # scenario names and HTTP statuses

    shown_audit, printed_audit = audit_lines(sample), audit_lines(demo_output)
    assert shown_audit, "the sample shows no audit line"
    for line in shown_audit:
        assert "timestamp" in fields(line)
        same = [
            p
            for p in printed_audit
            if all(field(p, k) == field(line, k) for k in ("subject", "reason", "mcp_method", "tool", "status"))
        ]
        assert same, f"the demo prints no audit line like {line[:120]}"
        assert fields(line) == fields(same[0]), "the fields of an audit line, in order"

    summary = [normalize(line) for line in sample.splitlines() if line.startswith("all ")]
    assert summary == [normalize(line) for line in demo_output.splitlines() if line.startswith("all ")]


# -- the layout and the plugin list --------------------------------------------------------------------------


def test_the_layout_lists_every_package() -> None:
    [layout] = re.findall(r"^```\n(fastapps_auth/.*?)^```", README, flags=re.S | re.M)
    top = {m.group(1) for m in re.finditer(r"^  ([a-z_]+)/", layout, flags=re.M)}
    packages = sorted(
        p.parent.relative_to(ROOT / "fastapps_auth") for p in (ROOT / "fastapps_auth").rglob("__init__.py")
    )
    missing = []
    for package in packages:
        parts = package.parts
        if len(parts) == 1 and parts[0] not in top:
            missing.append(str(package))
        if len(parts) > 1 and f"{parts[-1]}/" not in layout:
            missing.append(str(package))
    assert not missing, f"README's layout does not name {missing}"


def test_concepts_names_every_built_in_plugin() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    builtins = set(pyproject["project"]["entry-points"]["fastapps_auth.stages"])
    concepts = (ROOT / "docs" / "concepts.md").read_text()
    sentence = concepts[concepts.index("by a short name") :].split("built from")[0]
    named = set(re.findall(r"`([a-z-]+)`", sentence))
    assert builtins <= named, f"docs/concepts.md does not name {sorted(builtins - named)}"
