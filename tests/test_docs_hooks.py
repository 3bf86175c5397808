"""The mkdocs hook that renders `<!-- options: NAME -->` from a plugin's options model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

import pytest
from mkdocs.exceptions import PluginError as MkDocsPluginError
from pydantic import BaseModel, ConfigDict, Field

from docs.hooks import on_config, render
from fastapps_auth import registry
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


def test_marker_becomes_the_options_table() -> None:
    out = render("# demo\n\n<!-- options: docs-demo -->\n\nafter\n", where="stages/demo.md")
    assert "<!--" not in out
    assert '| `mode` | `"all" | "any"` | `"all"` | All or any &lt;scope&gt; \\| none. |' in out
    assert "| `dsn` | `str` | *required* | Where. |" in out
    assert "| `on_error` |" in out  # inherited options are listed too
    assert "Each entry of `rules` (`Rule`):" in out
    assert "| `limit` | `int` | *required* | How many. |" in out
    assert out.startswith("# demo\n") and out.endswith("after\n")


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
    for name in ("jwt", "user-status", "rate-limit", "scopes", "tenant", "roles", "audit", "metrics"):
        assert render(f"<!-- options: {name} -->\n", where=name).startswith("| Option |")


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
