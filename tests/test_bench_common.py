"""The bench table stays readable: long cells wrap at `CELL_MAX`, very long ones become footnotes."""

from __future__ import annotations

import pytest

from bench.common import CELL_MAX, FOOTNOTE_MIN, Row, median, median_spread, print_table


def test_long_cells_wrap_and_very_long_ones_move_under_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    note = "pytest rc 1: " + "x" * (FOOTNOTE_MIN + 10)
    metric = "kreuzviertel 28 d 2 s, product, site settings: missed mandatory / unplanned unloads"
    print_table(
        [Row("waste", metric, "1 / 2 / 0", verdict="ok"), Row("fuzz", "runs", "0 / 3", note, verdict="FAIL")]
    )
    lines = capsys.readouterr().out.splitlines()
    table = [line for line in lines if not line.startswith("[1] ")]
    assert max(len(line) for line in table) < 7 * (CELL_MAX + 2)
    assert all(len(cell) <= CELL_MAX for line in table for cell in line.split("  "))
    at = table[0].index("metric")
    assert " ".join(line[at : at + CELL_MAX].strip() for line in table[2:4]) == metric
    assert "[1] see below" in "\n".join(table)
    assert lines[-1] == f"[1] {note}"


def test_median_spread_names_the_runs() -> None:
    assert median_spread([3.0, 1.0, 2.0]) == "2.0 [1.0-3.0] n=3"
    assert median_spread([]) == "no runs"
    assert median([4.0, 1.0, 2.0]) == 2.0
