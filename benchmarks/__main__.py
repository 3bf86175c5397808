"""`make bench`: run every benchmarks/bench_*.py in its own process, then write the summary page and chart.

Each module runs as ``python -m benchmarks.bench_<area>`` (a fresh interpreter, so one area's caches,
event loop or imports cannot colour another's numbers). A module that also calls
``common.write_results`` contributes rows to docs/benchmarks.md and docs/img/benchmarks.png; one that
does not is still run and linked. Pass ``--smoke`` to run each module's short version and skip the pages,
or module names (``chain http``) to run only those.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS, machine, versions

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "benchmarks"
DOCS = ROOT / "docs"
PAGE = DOCS / "benchmarks.md"
CHART = DOCS / "img" / "benchmarks.png"
PACKAGES = ("fastapps-auth", "mcp", "fastapps", "joserfc", "cryptography", "asyncpg", "aiosqlite", "redis")


@dataclass
class Run:
    """One module's run: exit code, wall time, and the results files it (re)wrote."""

    area: str
    returncode: int
    seconds: float
    written: list[str] = field(default_factory=list)


def discover() -> list[str]:
    """Area names of every benchmarks/bench_<area>.py, sorted."""
    return sorted(p.stem.removeprefix("bench_") for p in BENCH_DIR.glob("bench_*.py"))


def _stamps() -> dict[str, float]:
    return {p.name: p.stat().st_mtime for p in RESULTS.glob("*.json")} if RESULTS.is_dir() else {}


def run_module(area: str, *, smoke: bool, timeout: float) -> Run:
    """Run one benchmark module in a fresh interpreter and note which results files it wrote."""
    before = _stamps()
    cmd = [sys.executable, "-m", f"benchmarks.bench_{area}", *(["--smoke"] if smoke else [])]
    print(f"\n=== {' '.join(cmd[1:])}", flush=True)
    t0 = time.perf_counter()
    env = {**os.environ, "MPLBACKEND": "Agg"}
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, timeout=timeout, capture_output=True, text=True, check=False)
        code, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        code = -1
        out = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        out += f"\n(timed out after {timeout:.0f}s)"
    print(out, flush=True)
    written = sorted(name for name, stamp in _stamps().items() if before.get(name) != stamp)
    return Run(area, code, time.perf_counter() - t0, written)


def load_results() -> dict[str, dict[str, Any]]:
    """Every results file (this run's or an earlier one's), keyed by its area; unreadable ones skipped."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(RESULTS.glob("*.json")) if RESULTS.is_dir() else []:
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            print(f"(ignoring unreadable {path.name}: {exc})")
            continue
        if isinstance(data, dict) and isinstance(data.get("rows"), list):
            out[str(data.get("area", path.stem))] = data
    return out


def module_of(result_area: str) -> str:
    """The bench module name of a results area (``rate-limit`` → ``rate_limit``)."""
    return result_area.replace("-", "_")


def summary_rows(results: dict[str, dict[str, Any]]) -> list[tuple[str, str, dict[str, Any]]]:
    """(area, title, row) for every row of every area that wrote results."""
    out = []
    for area in sorted(results):
        data = results[area]
        for row in data.get("rows", []):
            if isinstance(row.get("ratio"), int | float) and isinstance(row.get("label"), str):
                out.append((area, str(data.get("title", area)), row))
    return out


def draw_chart(rows: list[tuple[str, str, dict[str, Any]]], path: Path) -> bool:
    """A horizontal bar chart of every ratio, with its target marked; False if there is nothing to draw."""
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def label(area: str, text: str) -> str:
        short = text.removeprefix(f"{area}: ").removeprefix(f"{area.replace('_', '-')} ")
        return f"{area}: {short}"

    labels = [label(area, str(row["label"])) for area, _, row in rows]
    ratios = [max(float(row["ratio"]), 1e-3) for _, _, row in rows]
    targets = [row.get("target") for _, _, row in rows]
    colors = ["#2e7d32" if t is None or r >= float(t) else "#c62828" for r, t in zip(ratios, targets, strict=True)]
    fig, ax = plt.subplots(figsize=(12, max(2.5, 0.38 * len(rows) + 1.4)))
    ys = list(range(len(rows)))[::-1]
    ax.barh(ys, ratios, color=colors, height=0.6)
    for y, r, t in zip(ys, ratios, targets, strict=True):
        if t is not None:
            ax.plot([float(t), float(t)], [y - 0.4, y + 0.4], color="black", linewidth=2)
        ax.text(max(r, float(t) if t is not None else r) * 1.15, y, f"{r:.2f}x", va="center", fontsize=8)
    ax.axvline(1.0, color="grey", linestyle=":", linewidth=1)
    ax.set_yticks(ys)
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_xscale("log")
    ax.set_xlim(min(ratios) * 0.5, max(max(ratios), *(float(t) for t in targets if t is not None)) * 4)
    ax.set_xlabel("ratio, log scale (higher is better for fastapps-auth; black tick: target; red: below target)")
    ax.set_title("fastapps-auth: ratios against alternatives measured in the same run", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def page_of(area: str) -> str | None:
    """The docs/benchmarks/ page of an area: its own name, or with dashes, or with underscores."""
    names = [area, area.replace("_", "-"), area.replace("-", "_")]
    return next((n for n in names if (DOCS / "benchmarks" / f"{n}.md").exists()), None)


def page_heading(page: str) -> str | None:
    """The title of an area's page (its first line, ``# Title``), for areas that write no results."""
    try:
        first = (DOCS / "benchmarks" / f"{page}.md").read_text().split("\n", 1)[0]
    except OSError:
        return None
    if not first.startswith("# "):
        return None
    return first[2:].strip() or None


def render_page(modules: list[str], results: dict[str, dict[str, Any]], runs: dict[str, Run], chart: bool) -> str:
    """docs/benchmarks.md: the summary table, the chart, and a link to every area's own page."""
    rows = summary_rows(results)
    stamp = time.strftime("%Y-%m-%d", time.gmtime())
    lines = [
        "# Benchmarks",
        "",
        "Every number here is a **ratio between alternatives measured in the same run on the same machine**, "
        "so it means something on your machine too; absolute rates are in each area's page. "
        "Nothing in CI is gated on these numbers: CI runs a short smoke of each benchmark so none rots "
        "(`tests/test_benchmarks_smoke.py`).",
        "",
        "Regenerate everything with `make bench` (runs each `benchmarks/bench_*.py` in its own process, then "
        "writes this page and the chart). One area: `python -m benchmarks.bench_<area>`.",
        "",
        f"Summary written {stamp} on {machine()}. Versions: {versions(*PACKAGES)}.",
        "",
        "## Summary",
        "",
    ]
    if rows:
        lines += ["| Area | Comparison | Ratio | Target | Met | Detail |", "|---|---|---|---|---|---|"]
        for area, _title, row in rows:
            target = row.get("target")
            met = "—" if target is None else ("yes" if float(row["ratio"]) >= float(target) else "**no**")
            tgt = "—" if target is None else f">= {float(target):.3g}x"
            page = page_of(area)
            link = f"[{area}](benchmarks/{page}.md)" if page else area
            note = str(row.get("note", "")).replace("|", "\\|")
            lines.append(f"| {link} | {row['label']} | {float(row['ratio']):.2f}x | {tgt} | {met} | {note} |")
    else:
        lines.append("No benchmark has written structured results yet: run `make bench`.")
    if chart:
        lines += ["", "![Benchmark ratios](img/benchmarks.png)"]
    lines += ["", "## Areas", ""]
    for module in modules:
        mine = [a for a in results if module_of(a) == module]
        run = runs.get(module)
        status = ""
        if run is not None and run.returncode != 0:
            status = f" — **failed in this run** (exit {run.returncode})"
        elif mine and (run is None or not run.written):
            status = f" (numbers from {results[mine[0]].get('measured', 'an earlier run')})"
        page = page_of(mine[0]) if mine else None
        page = page or page_of(module)
        title = str(results[mine[0]].get("title", module)) if mine else (page and page_heading(page)) or module
        shown = f"[{title}](benchmarks/{page}.md)" if page else f"{title} (no page written)"
        lines.append(f"- {shown}: `python -m benchmarks.bench_{module}`{status}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    summary = __doc__.splitlines()[0] if __doc__ else ""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=summary)
    parser.add_argument("areas", nargs="*", help="areas to run (default: every benchmarks/bench_*.py)")
    parser.add_argument("--smoke", action="store_true", help="run each module's short version; write no pages")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds allowed per module (default 900)")
    args = parser.parse_args(argv)

    modules = discover()
    unknown = [a for a in args.areas if a not in modules]
    if unknown:
        parser.error(f"no such benchmark: {', '.join(unknown)} (have: {', '.join(modules)})")
    selected = args.areas or modules
    runs = {a: run_module(a, smoke=args.smoke, timeout=args.timeout) for a in selected}

    failed = [r for r in runs.values() if r.returncode != 0]
    print("\n=== summary")
    for r in runs.values():
        state = "ok" if r.returncode == 0 else f"FAILED (exit {r.returncode})"
        print(f"  {r.area:<16} {state:<18} {r.seconds:6.1f}s  {', '.join(r.written) or 'no results file'}")
    if args.smoke:
        return 1 if failed else 0

    results = load_results()
    chart = draw_chart(summary_rows(results), CHART)
    PAGE.write_text(render_page(modules, results, runs, chart))
    print(f"\nwrote {PAGE.relative_to(ROOT)}" + (f" and {CHART.relative_to(ROOT)}" if chart else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
