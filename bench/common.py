"""Shared helpers for benchmarks: the result row and the table printer."""

from __future__ import annotations

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
