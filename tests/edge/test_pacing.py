"""The AIMD window that paces a city's plan commands."""

from __future__ import annotations

import pytest

from edge.pacing import Pace


def test_prompt_answers_grow_the_window_to_its_cap() -> None:
    p = Pace(start=100, low=10, high=150, target_s=0.5)
    for i in range(30):
        p.answered(0.01, now=i * 0.01)
    assert p.window == 130
    for i in range(100):
        p.answered(0.01, now=1 + i * 0.01)
    assert p.window == 150


def test_a_burst_of_late_answers_halves_once_per_target() -> None:
    p = Pace(start=400, low=20, high=2000, target_s=0.5)
    for i in range(50):  # 50 late answers within 0.1 s: one congestion
        p.answered(1.5, now=10.0 + i * 0.002)
    assert p.window == 200
    assert p.cuts == 1
    p.congested(now=10.6)  # a failure one target later halves again
    assert p.window == 100
    for k in range(20):
        p.congested(now=20.0 + k)
    assert p.window == 20  # never below the floor


def test_bounds_are_checked() -> None:
    with pytest.raises(ValueError, match="low <= start <= high"):
        Pace(start=10, low=20, high=100)
