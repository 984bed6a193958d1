"""Shared helpers for benchmarks: the result row and the table printer."""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Row:
    """One measured number, its reference in the same run, and the target it is held to."""

    bench: str
    metric: str
    ours: str
    reference: str = ""
    ratio: str = ""
    target: str = ""
    verdict: str = ""


def print_table(rows: list[Row]) -> None:
    """Print rows as an aligned plain-text table."""
    head = ("bench", "metric", "ours", "reference", "ratio", "target", "ok")
    data = [head] + [(r.bench, r.metric, r.ours, r.reference, r.ratio, r.target, r.verdict) for r in rows]
    widths = [max(len(row[i]) for row in data) for i in range(len(head))]
    for i, row in enumerate(data):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))


RUNS = max(1, int(os.environ.get("BENCH_RUNS", "3")))
"""How many times a bench repeats its measurement (env BENCH_RUNS, default 3): one run on a
shared 2-core machine says little, so every headline is a median with its spread."""


def median_spread(values: Sequence[float], fmt: str = "{:.1f}") -> str:
    """`median [min-max] n=K` of repeated runs: the reader sees how much one run can be trusted."""
    if not values:
        return "no runs"
    med = statistics.median(values)
    if len(values) == 1:
        return f"{fmt.format(med)} n=1"
    return f"{fmt.format(med)} [{fmt.format(min(values))}-{fmt.format(max(values))}] n={len(values)}"


def median(values: Sequence[float]) -> float:
    """Median of repeated runs (nan when there are none), for ratios and verdicts."""
    return float(statistics.median(values)) if values else math.nan
