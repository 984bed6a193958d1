"""Text primitives shared by every view: times in the site's zone, numbers, a sparkline (no model)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime, tzinfo

from rich.text import Text

BLOCKS = "·▁▂▃▄▅▆▇█"


def fmt_time(ts: float | None, tz: tzinfo | None, seconds: bool = False) -> str:
    """Local clock time of an epoch timestamp ('-' for none)."""
    if ts is None or not math.isfinite(ts):
        return "-"
    return datetime.fromtimestamp(ts, tz).strftime("%H:%M:%S" if seconds else "%H:%M")


def fmt_when(ts: float | None, tz: tzinfo | None, now: float) -> str:
    """A time in the site's zone, with its day when it is not today there.

    `14:05` today, `Fri 14:05` within the coming week, `09.12. 14:05` further off or in the
    past: a forecast days ahead must not read as a time today.
    """
    if ts is None or not math.isfinite(ts):
        return "-"
    when, today = datetime.fromtimestamp(ts, tz), datetime.fromtimestamp(now, tz).date()
    days = (when.date() - today).days
    if days == 0:
        return when.strftime("%H:%M")
    if 0 < days < 7:
        return when.strftime("%a %H:%M")
    return when.strftime("%d.%m. %H:%M")


def is_today(ts: float | None, tz: tzinfo | None, now: float) -> bool:
    """Whether `ts` falls on the same calendar day as `now` in the site's zone."""
    if ts is None or not math.isfinite(ts):
        return False
    return datetime.fromtimestamp(ts, tz).date() == datetime.fromtimestamp(now, tz).date()


def fmt_num(value: float | None, digits: int = 0) -> str:
    """A number or '-'."""
    return "-" if value is None else f"{value:.{digits}f}"


def sparkline(values: Sequence[float], width: int, top: float = 1.0) -> Text:
    """Values from 0 to `top` as block heights, the latest at the right; above `top`: `!`."""
    out = Text()
    shown = list(values)[-width:]
    out.append("·" * (width - len(shown)), "dim")
    for v in shown:
        if v > top:
            out.append("!", "bold red")
        else:
            out.append(BLOCKS[max(0, min(len(BLOCKS) - 1, round(v / top * (len(BLOCKS) - 1))))])
    return out
