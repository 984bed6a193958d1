"""Shared helpers for benchmarks: the result row and the table printer."""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import statistics
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


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


CELL_MAX = 48
"""Widest a table column gets: longer cells wrap onto continuation lines."""
FOOTNOTE_MIN = 3 * CELL_MAX
"""A cell longer than this (an error tail, a long note) moves under the table as a footnote."""


def _lines(cell: str, width: int) -> list[str]:
    return textwrap.wrap(cell, width, break_on_hyphens=False) or [""]


def print_table(rows: list[Row]) -> None:
    """Print rows as an aligned plain-text table, no column wider than `CELL_MAX`.

    Long cells wrap onto continuation lines of their row; very long ones (error output) are
    replaced by a `[n]` mark and printed in full as footnotes under the table.
    """
    head = ("bench", "metric", "ours", "reference", "ratio", "target", "ok")
    notes: list[str] = []

    def cell(text: str) -> str:
        if len(text) <= FOOTNOTE_MIN:
            return text
        notes.append(text)
        return f"[{len(notes)}] see below"

    data = [head] + [
        tuple(cell(c) for c in (r.bench, r.metric, r.ours, r.reference, r.ratio, r.target, r.verdict))
        for r in rows
    ]
    widths = [min(CELL_MAX, max(len(row[i]) for row in data)) for i in range(len(head))]
    for i, row in enumerate(data):
        wrapped = [_lines(c, w) for c, w in zip(row, widths, strict=True)]
        for k in range(max(len(x) for x in wrapped)):
            parts = [(x[k] if k < len(x) else "").ljust(w) for x, w in zip(wrapped, widths, strict=True)]
            print("  ".join(parts).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
    for n, text in enumerate(notes, 1):
        print(f"[{n}] {text}")


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


def py_spy(folder: str, pid: int, name: str) -> subprocess.Popen[bytes] | None:
    """`py-spy record` of process `pid` into `folder`/{name}.txt (raw collapsed stacks).

    Off (None) when `folder` is empty: the benches' profile knobs name the folder.
    """
    if not folder:
        return None
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    out = Path(folder) / f"{name}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "50", "--nonblocking",
           "-o", str(out)]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def spy_stop(proc: subprocess.Popen[bytes] | None) -> None:
    """End a `py_spy` recording: SIGINT makes py-spy write its file and exit."""
    if proc is not None:
        proc.send_signal(2)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(30)
