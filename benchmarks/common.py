"""What every benchmark shares: timing by medians over rounds, ratio tables, a page in docs/benchmarks/.

Benchmarks compare alternatives measured in the same run and report ratios; they never
gate anything on absolute times.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks"


def rate(fn: Callable[[], object], *, number: int, rounds: int = 5) -> float:
    """Median calls per second of a synchronous ``fn`` over ``rounds`` rounds of ``number`` calls."""
    fn()  # warm-up
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        samples.append(number / (time.perf_counter() - t0))
    return statistics.median(samples)


async def arate(fn: Callable[[], Awaitable[object]], *, number: int, rounds: int = 5, concurrency: int = 1) -> float:
    """Median awaited calls per second, sequential (``concurrency=1``) or with that many tasks."""
    await fn()  # warm-up
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        if concurrency == 1:
            for _ in range(number):
                await fn()
        else:
            per_task = max(1, number // concurrency)

            async def worker(n: int = per_task) -> None:
                for _ in range(n):
                    await fn()

            await asyncio.gather(*(worker() for _ in range(concurrency)))
            number = per_task * concurrency
        samples.append(number / (time.perf_counter() - t0))
    return statistics.median(samples)


async def interleaved(
    alternatives: Mapping[str, Callable[[], object]], *, number: int, rounds: int = 5
) -> dict[str, float]:
    """Median calls per second of each alternative, measured round-robin: round r times every
    alternative once before round r+1 starts, so drift on a shared machine hits all alike.
    An alternative may be synchronous or return an awaitable (awaited sequentially)."""
    samples: dict[str, list[float]] = {name: [] for name in alternatives}
    for fn in alternatives.values():  # warm-up
        result = fn()
        if inspect.isawaitable(result):
            await result
    for _ in range(rounds):
        for name, fn in alternatives.items():
            t0 = time.perf_counter()
            for _ in range(number):
                result = fn()
                if inspect.isawaitable(result):
                    await result
            samples[name].append(number / (time.perf_counter() - t0))
    return {name: statistics.median(values) for name, values in samples.items()}


def fmt_rate(r: float) -> str:
    return f"{r / 1000:,.1f}k/s" if r >= 1000 else f"{r:,.0f}/s"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table."""
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def versions(*packages: str) -> str:
    found = []
    for p in packages:
        try:
            found.append(f"{p} {version(p)}")
        except PackageNotFoundError:
            found.append(f"{p} (not installed)")
    return ", ".join(found)


def machine() -> str:
    import os

    return f"{platform.machine()}, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, {platform.system()}"


def write_page(area: str, title: str, body: str, *, packages: Sequence[str] = ()) -> Path:
    """Write docs/benchmarks/<area>.md with the machine and versions noted."""
    DOCS.mkdir(parents=True, exist_ok=True)
    path = DOCS / f"{area}.md"
    stamp = time.strftime("%Y-%m-%d", time.gmtime())
    head = f"# {title}\n\nMeasured {stamp} on {machine()}."
    if packages:
        head += f" Versions: {versions(*packages)}."
    path.write_text(f"{head}\n\n{body.strip()}\n")
    return path


# -- structured results, for `python -m benchmarks` (the summary page and the chart) ------------------

RESULTS = Path(__file__).resolve().parent / "results"


def write_results(area: str, rows: Sequence[Mapping[str, object]], *, title: str | None = None) -> Path:
    """Write benchmarks/results/<area>.json so the runner can summarise every area in one table and chart.

    Each row is ``{"label": str, "ratio": float, "target": float | None, "note": str}``: ``ratio`` is the
    measured alternative ratio (higher is better for fastapps-auth), ``target`` the issue's bar if any,
    ``note`` free text such as the two absolute rates. Extra keys are kept and ignored.
    """
    RESULTS.mkdir(parents=True, exist_ok=True)
    clean = []
    for row in rows:
        label, ratio = row.get("label"), row.get("ratio")
        if not isinstance(label, str) or not isinstance(ratio, int | float):
            raise ValueError(f"a result row needs a str 'label' and a numeric 'ratio': {row!r}")
        target = row.get("target")
        clean.append(
            {
                **row,
                "label": label,
                "ratio": float(ratio),
                "target": float(target) if isinstance(target, int | float) else None,
                "note": str(row.get("note", "")),
            }
        )
    payload = {
        "area": area,
        "title": title or area,
        "measured": time.strftime("%Y-%m-%d", time.gmtime()),
        "machine": machine(),
        "rows": clean,
    }
    path = RESULTS / f"{area}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path
