"""Every benchmark runs (short version) so none rots; the runner's summary page and chart are well formed.

Nothing here looks at a timing: benchmarks never gate CI on absolute numbers.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import __main__ as runner
from benchmarks.common import write_results

ROOT = Path(__file__).resolve().parent.parent
AREAS = runner.discover()


def test_the_required_benchmarks_exist() -> None:
    assert {"chain", "http"} <= set(AREAS)


@pytest.mark.parametrize("area", AREAS)
def test_benchmark_smoke_runs(area: str) -> None:
    env = {**os.environ, "MPLBACKEND": "Agg"}
    proc = subprocess.run(
        [sys.executable, "-m", f"benchmarks.bench_{area}", "--smoke"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, f"bench_{area} --smoke failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert "|" in proc.stdout, "a benchmark prints a Markdown table of its ratios"


def test_write_results_rejects_a_row_without_a_ratio(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("benchmarks.common.RESULTS", tmp_path)
    with pytest.raises(ValueError, match="ratio"):
        write_results("x", [{"label": "a"}])


def test_summary_page_and_chart_from_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("benchmarks.common.RESULTS", tmp_path)
    write_results("alpha", [{"label": "chain vs bare RS256", "ratio": 3.5, "target": 1.0, "note": "a | b"}])
    write_results("beta", [{"label": "protected vs open", "ratio": 0.5, "target": 0.9}, {"label": "info", "ratio": 2}])
    import json

    results = {p.stem: json.loads(p.read_text()) for p in tmp_path.glob("*.json")}
    rows = runner.summary_rows(results)
    assert [(a, r["label"]) for a, _, r in rows] == [
        ("alpha", "chain vs bare RS256"),
        ("beta", "protected vs open"),
        ("beta", "info"),
    ]
    chart = tmp_path / "chart.png"
    assert runner.draw_chart(rows, chart)
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not runner.draw_chart([], tmp_path / "none.png")

    page = runner.render_page(["alpha", "beta", "gamma"], results, {}, chart=True)
    assert "| 3.50x | >= 1x | yes |" in page
    assert "| 0.50x | >= 0.9x | **no** |" in page
    assert "| 2.00x | — | — |" in page
    assert "a \\| b" in page  # a pipe in a note does not split the table row
    assert "![Benchmark ratios](img/benchmarks.png)" in page
    assert "gamma (no page written)" in page


def test_an_area_without_results_is_listed_by_its_page_title(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "gamma-area.md").write_text("# Gamma: where the time goes\n\nMeasured today.\n")
    (tmp_path / "benchmarks" / "untitled.md").write_text("no heading here\n")
    monkeypatch.setattr(runner, "DOCS", tmp_path)
    page = runner.render_page(["gamma_area", "untitled", "delta"], {}, {}, chart=False)
    assert "- [Gamma: where the time goes](benchmarks/gamma-area.md): `python -m benchmarks.bench_gamma_area`" in page
    assert "- [untitled](benchmarks/untitled.md)" in page
    assert "- delta (no page written)" in page
