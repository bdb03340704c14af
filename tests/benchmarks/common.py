"""Shared helpers of the benchmarks: timing, tables, JSON results.

Results go to ``bench_results/<name>.json`` (git-ignored; ``$MVCLI_BENCH_DIR`` moves it) and
a Markdown table is printed (``make bench`` runs pytest with ``-s``).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]


def results_dir() -> Path:
    path = Path(os.environ.get("MVCLI_BENCH_DIR", REPO / "bench_results"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def env_int(name: str, default: int) -> int:
    """A size knob: ``MVCLI_BENCH_<NAME>`` overrides the default."""
    return int(os.environ.get(f"MVCLI_BENCH_{name}", default))


def machine() -> dict:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cores": cores,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def interleaved(
    funcs: dict[str, Callable[[], object]], rounds: int, min_seconds: float = 0.2
) -> dict[str, list[float]]:
    """Seconds per call of each function, measured in alternation, ``rounds`` samples each.

    Alternating the candidates within each round spreads any drift of a shared machine (other
    processes, CPU frequency) evenly over them; each sample repeats the call until it has
    lasted ``min_seconds`` (calibrated on a warm-up call).
    """
    repeats = {}
    for name, fn in funcs.items():
        start = time.perf_counter()
        fn()  # warm-up, also calibrates the repeat count
        repeats[name] = max(1, round(min_seconds / max(time.perf_counter() - start, 1e-6)))
    samples: dict[str, list[float]] = {name: [] for name in funcs}
    for _ in range(rounds):
        for name, fn in funcs.items():
            start = time.perf_counter()
            for _ in range(repeats[name]):
                fn()
            samples[name].append((time.perf_counter() - start) / repeats[name])
    return samples


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def spread(values: Sequence[float]) -> float:
    """Relative half-range of the samples (a rough noise figure)."""
    mid = statistics.median(values)
    return (max(values) - min(values)) / (2 * mid) if mid else 0.0


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table (pasted as is into docs/performance.md)."""
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        if value >= 100:
            return f"{value:,.0f}"
        if value >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    return str(value)


def goal(value: float, target: float, higher: bool = True) -> str:
    met = value >= target if higher else value <= target
    sign = ">=" if higher else "<="
    return f"{'met' if met else 'MISSED'} ({sign} {target:g})"


def report(name: str, title: str, tables: dict[str, str], data: dict) -> Path:
    """Print the tables and write ``<results>/<name>.json``."""
    path = results_dir() / f"{name}.json"
    payload = {"benchmark": name, "machine": machine(), **data, "tables": tables}
    path.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    print(f"\n## {title}\n")
    for caption, text in tables.items():
        print(f"{caption}\n\n{text}\n")
    print(f"(written to {path})")
    return path
