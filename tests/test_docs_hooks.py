"""The option tables: written into the pages between `<!-- options: NAME -->` and `<!-- /options -->`, current
with the plugins' options models, rendered once by the mkdocs hook."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

import pytest
from mkdocs.exceptions import PluginError as MkDocsPluginError
from pydantic import BaseModel, ConfigDict, Field

from docs.hooks import on_config, render
from fastapps_auth import registry
from fastapps_auth.cli import options_tables
from fastapps_auth.component import ComponentOptions
from fastapps_auth.stage import Stage, StageOptions, Verification


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid")
    limit: int = Field(description="How many.")


class DemoOptions(StageOptions):
    mode: Literal["all", "any"] = Field(default="all", description="All or any <scope> | none.")
    rules: list[Rule] = Field(default_factory=list, description="Rules.")
    dsn: str = Field(description="Where.")


class DemoStage(Stage[DemoOptions]):
    plugin_name: ClassVar[str] = "docs-demo"
    options_model: ClassVar[type[ComponentOptions]] = DemoOptions

    async def __call__(self, v: Verification) -> None:
        return None


class Undocumented(StageOptions):
    secret_knob: int = 3


class UndocumentedStage(Stage[Undocumented]):
    plugin_name: ClassVar[str] = "docs-undocumented"
    options_model: ClassVar[type[ComponentOptions]] = Undocumented


@pytest.fixture(autouse=True)
def plugins() -> Iterator[None]:
    registry.register("docs-demo", DemoStage)
    registry.register("docs-undocumented", UndocumentedStage)
    yield
    registry.unregister("docs-demo")
    registry.unregister("docs-undocumented")


ROOT = Path(__file__).resolve().parent.parent


def test_marker_becomes_the_options_table() -> None:
    out = render("# demo\n\n<!-- options: docs-demo -->\n\nafter\n", where="stages/demo.md")
    assert out.count("| `dsn` |") == 1 and out.count("<!-- /options -->") == 1
    assert '| `mode` | `"all" | "any"` | `"all"` | All or any &lt;scope&gt; \\| none. |' in out
    assert "| `dsn` | `str` | *required* | Where. |" in out
    assert "| `on_error` |" in out  # inherited options are listed too
    assert "Each entry of `rules` (`Rule`):" in out
    assert "| `limit` | `int` | *required* | How many. |" in out
    assert out.startswith("# demo\n\n<!-- options: docs-demo -->\n\n| Option |") and out.endswith("after\n")


def test_a_written_table_is_replaced_not_repeated() -> None:
    stale = "# demo\n\n<!-- options: docs-demo -->\n\n| Option | old |\n| `stale-row` |\n\n<!-- /options -->\n\nafter\n"
    fresh = options_tables.render(stale, where="x.md")
    assert "stale-row" not in fresh and fresh.count("| `dsn` |") == 1 and fresh.count("<!-- /options -->") == 1
    assert options_tables.render(fresh, where="x.md") == fresh  # written once, stable
    assert render(fresh, where="x.md").count("| `dsn` |") == 1  # the built site shows it once


def test_the_page_flavour_escapes_pipes_in_code_for_github_and_the_site_does_not() -> None:
    page = options_tables.render("<!-- options: docs-demo -->\n", where="x.md")
    site = render("<!-- options: docs-demo -->\n", where="x.md")
    assert '| `mode` | `"all" \\| "any"` | `"all"` |' in page  # GitHub shows `"all" | "any"` in one cell
    assert '| `mode` | `"all" | "any"` | `"all"` |' in site  # Python-Markdown keeps a bare pipe in a code span


def test_two_markers_each_get_their_own_table() -> None:
    text = "<!-- options: docs-demo -->\n\nbetween\n\n<!-- options: docs-demo -->\n<!-- /options -->\n"
    out = options_tables.render(text, where="x.md")
    assert out.count("| `dsn` |") == out.count("<!-- /options -->") == 2
    assert "between" in out


def test_the_pages_hold_current_tables() -> None:
    """Fails when a plugin's options changed and the page was not regenerated: run `make docs-tables`."""
    stale = [
        str(page.relative_to(ROOT))
        for page in options_tables.pages([ROOT / "docs", ROOT / "README.md"])
        if options_tables.render(text := page.read_text(encoding="utf-8"), where=str(page)) != text
    ]
    assert not stale, f"option tables out of date in {stale}: run `make docs-tables`"


def test_the_regeneration_command_checks_and_writes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    page = tmp_path / "demo.md"
    page.write_text("# demo\n\n<!-- options: docs-demo -->\n")
    assert options_tables.main([str(tmp_path)]) == 1
    assert f"stale: {page}" in capsys.readouterr().out
    assert options_tables.main(["--write", str(tmp_path)]) == 0
    assert "| `dsn` | `str` | *required* | Where. |" in page.read_text()
    assert options_tables.main(["--check", str(page)]) == 0
    (tmp_path / "bad.md").write_text("<!-- options: nope -->\n")
    assert options_tables.main([str(tmp_path)]) == 2
    assert "bad.md: <!-- options: nope -->" in capsys.readouterr().err


def test_unknown_plugin_fails_the_build_naming_the_page() -> None:
    with pytest.raises(MkDocsPluginError, match=r"stages/x\.md: .*unknown plugin 'nope'"):
        render("<!-- options: nope -->\n", where="stages/x.md")


def test_option_without_description_fails_the_build() -> None:
    with pytest.raises(MkDocsPluginError, match="secret_knob"):
        render("<!-- options: docs-undocumented -->\n", where="x.md")


def test_marker_inside_a_code_fence_is_an_example() -> None:
    text = "```markdown\n<!-- options: nope -->\n```\n"
    assert render(text, where="x.md") == text


def test_every_documented_builtin_renders() -> None:
    for name in ("jwt", "user-status", "rate-limit", "scopes", "tenant", "roles", "dpop", "audit", "metrics", "otel"):
        assert render(f"<!-- options: {name} -->\n", where=name).startswith(f"<!-- options: {name} -->\n\n| Option |")


def test_nav_sections_pick_up_new_pages(tmp_path: Path) -> None:
    docs = tmp_path
    (docs / "benchmarks").mkdir()
    (docs / "benchmarks" / "jwt.md").write_text("# jwt\n")
    (docs / "benchmarks" / "chain.md").write_text("# chain\n")
    config: dict[str, Any] = {
        "docs_dir": str(docs),
        "nav": [{"Benchmarks": [{"Summary": "benchmarks.md"}, {"x": "benchmarks/chain.md"}]}],
    }
    on_config(config)
    assert config["nav"][0]["Benchmarks"] == [
        {"Summary": "benchmarks.md"},
        {"x": "benchmarks/chain.md"},
        {"jwt": "benchmarks/jwt.md"},
    ]
