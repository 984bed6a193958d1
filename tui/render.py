"""Pure text rendering of the model for the dashboard's views (Rich `Text`, no Textual).

Every state has a symbol or a word, and colour only repeats it, so the views read the
same on a monochrome terminal.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, tzinfo

from rich.text import Text

from edge.payloads import Ack
from tui.inventory import Position
from tui.model import FEEDER_HIGH, SEVERITIES, LampStatus, LightingPlan, SiteModel

SYMBOL: dict[LampStatus, str] = {
    LampStatus.ON: "●",
    LampStatus.DIMMED: "◐",
    LampStatus.OFF: "○",
    LampStatus.FAILED: "X",
    LampStatus.OFFLINE: "?",
    LampStatus.UNKNOWN: "·",
}
STYLE: dict[LampStatus, str] = {
    LampStatus.ON: "bold yellow",
    LampStatus.DIMMED: "yellow",
    LampStatus.OFF: "dim",
    LampStatus.FAILED: "bold red reverse",
    LampStatus.OFFLINE: "bold magenta",
    LampStatus.UNKNOWN: "dim",
}
# What a map cell shows when several lamps share it: what needs attention first.
PRIORITY = (
    LampStatus.FAILED,
    LampStatus.OFFLINE,
    LampStatus.ON,
    LampStatus.DIMMED,
    LampStatus.OFF,
    LampStatus.UNKNOWN,
)
SEVERITY_STYLE = {"critical": "bold red reverse", "major": "bold red", "minor": "yellow", "warning": "cyan"}
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


def legend() -> Text:
    """The map's symbols in words."""
    out = Text()
    for status in PRIORITY:
        out.append(SYMBOL[status], STYLE[status])
        out.append(f" {status.value}  ")
    return out


# ----- overview --------------------------------------------------------------------------------


def overview(model: SiteModel, tz: tzinfo | None) -> Text:
    """The site's health in one screen."""
    out = Text()

    def label(name: str) -> None:
        out.append(f"{name:<12}", "bold")

    d = model.daemon
    label("Daemon")
    if d is None:
        out.append("no status received yet\n", "italic")
    else:
        out.append("ONLINE" if d.online else "OFFLINE (last will)", "bold green" if d.online else "bold red")
        out.append(f" · {d.site} · version {d.version} · since {fmt_time(d.ts, tz, seconds=True)}\n")

    plan = model.plan
    label("Last plan")
    if plan is None:
        out.append("none received\n", "italic")
    else:
        out.append(f"{plan.status or '?'} at {fmt_time(plan.ts, tz)}")
        out.append(f" · night {fmt_time(plan.on, tz)} to {fmt_time(plan.off, tz)}")
        out.append(f" · {len(plan.groups)} groups\n")
        if plan.reason:
            out.append(f"{'':12}{plan.reason}\n", "italic")

    counts = model.online_counts()
    label("Devices")
    first = True
    for kind, c in counts.items():
        if not first:
            out.append(" · ")
        first = False
        out.append(f"{kind} {c.online} online, ")
        out.append(f"{c.offline} offline", "bold red" if c.offline else "")
        if c.unknown:
            out.append(f", {c.unknown} unknown")
    out.append("\n")

    lamps = model.lamp_counts()
    label("Lamps")
    for i, status in enumerate(
        (LampStatus.ON, LampStatus.DIMMED, LampStatus.OFF, LampStatus.FAILED, LampStatus.OFFLINE)
    ):
        if i:
            out.append(" · ")
        n = lamps[status]
        out.append(f"{SYMBOL[status]} {status.value} {n}", STYLE[status] if n else "")
    if lamps[LampStatus.UNKNOWN]:
        out.append(f" · unknown {lamps[LampStatus.UNKNOWN]}")
    out.append("\n")
    label("Power now")
    out.append(f"{model.total_power_w() / 1000:.1f} kW reported by {len(model.lamps)} lamps\n")

    charging_lines(out, model)
    displays_lines(out, model)
    waste_lines(out, model, tz)

    label("Energy")
    if plan is None:
        out.append("tonight: no plan yet\n", "italic")
    else:
        out.append(f"tonight {plan.energy_kwh:.1f} kWh planned\n", "bold")
        for name, base in (
            ("undimmed", plan.baseline_static_kwh),
            ("Dortmund", plan.baseline_dortmund_kwh),
        ):
            saving = plan.saving(base)
            pct = "-" if saving is None else f"{-saving * 100:+.0f} %"
            out.append(f"{'':12}vs {name:<9}{base:8.1f} kWh  ({pct})\n")

    alarms = model.alarm_counts()
    label("Alarms")
    total = sum(alarms.values())
    for i, sev in enumerate(SEVERITIES):
        if i:
            out.append(" · ")
        n = alarms[sev]
        out.append(f"{sev} {n}", SEVERITY_STYLE[sev] if n else "")
    others = total - sum(alarms[s] for s in SEVERITIES)
    if others:
        out.append(f" · other {others}")
    out.append(f"   (open: {total}")
    unacked = model.unacked()
    out.append(f", {unacked} unacked" if unacked else "", "bold" if unacked else "")
    out.append(")\n")

    label("Messages")
    out.append(f"{model.messages} received · ")
    bad = model.bad_total
    out.append(f"{bad} bad payload{'s' if bad != 1 else ''}", "bold red" if bad else "")
    if bad:
        out.append(" (" + ", ".join(f"{k} {v}" for k, v in sorted(model.bad_payloads.items())) + ")")
    out.append("\n")
    return out


def charging_lines(out: Text, model: SiteModel) -> None:
    """The Overview's Charging line: points, cars, power against the limits, feeders near theirs."""
    out.append(f"{'Charging':<12}", "bold")
    if not model.chargers and not model.feeders:
        out.append("no charge points or feeders reported\n", "italic")
        return
    c = model.charging_summary()
    out.append(f"points {c.online} online, ")
    out.append(f"{c.offline} offline", "bold red" if c.offline else "")
    if c.unknown:
        out.append(f", {c.unknown} unknown")
    out.append(f" · {c.cars} car{'s' if c.cars != 1 else ''} connected · {c.charging} charging\n")
    out.append(f"{'':12}{c.power_kw:.1f} kW now of {c.limit_kw:.0f} kW feeder limits")
    out.append(f" ({c.measured_a:.0f} of {c.limit_a:.0f} A)\n")
    if c.high:
        out.append(f"{'':12}")
        out.append("ABOVE 90 %", "bold red reverse")
        high = ", ".join(f"{f.id} at {(f.load or 0) * 100:.1f} % of {f.limit_a:g} A" for f in c.high)
        out.append(f" {high}\n", "bold")


def displays_lines(out: Text, model: SiteModel) -> None:
    """The Overview's Displays line: displays online, warnings in force, stale car parks."""
    out.append(f"{'Displays':<12}", "bold")
    if not model.displays and not model.parking and not model.warnings:
        out.append("no displays or car parks reported\n", "italic")
        return
    d = model.displays_summary()
    out.append(f"{d.online}/{d.total} online · ")
    out.append(f"{d.warnings} warning{'s' if d.warnings != 1 else ''} active", "bold" if d.warnings else "")
    out.append(f" · car parks {d.car_parks}, ")
    out.append(f"{d.stale} STALE" if d.stale else "all fresh", "bold red" if d.stale else "")
    out.append("\n")


WASTE_THRESHOLD = 0.8  # for counting bins above it when the daemon sent no summary


def waste_lines(out: Text, model: SiteModel, tz: tzinfo | None, now: float | None = None) -> None:
    """The Overview's Waste lines: bins above the threshold, trucks on route, today's plan.

    A plan made on another day (yesterday's, still retained after midnight) says so.
    """
    now = now if now is not None else (model.clock_ts() or time.time())
    out.append(f"{'Waste':<12}", "bold")
    summary = model.waste_summary
    if summary is None and not model.bins and not model.trucks:
        out.append("no bins or trucks reported\n", "italic")
        return
    if summary is not None:
        above, alarms, bins, reporting = (
            summary.above_threshold,
            summary.alarms,
            summary.bins,
            summary.reporting,
        )
        on_route, trucks = summary.trucks_on_route, summary.trucks
    else:
        above, bins = model.bins_above(WASTE_THRESHOLD), len(model.bins)
        alarms = sum(1 for b in model.bins.values() if b.alarms)
        reporting = sum(1 for b in model.bins.values() if b.status == "ok")
        on_route, trucks = sum(1 for t in model.trucks.values() if t.on_route), len(model.trucks)
    out.append(f"bins {bins}, ")
    out.append(f"{above} above threshold", "bold" if above else "")
    out.append(", ")
    out.append(f"{alarms} with alarms", "bold red" if alarms else "")
    out.append(f" · trucks {on_route}/{trucks} on route\n")
    plan = model.waste_plan
    out.append(f"{'':12}")
    if plan is None:
        out.append("no collection plan yet\n", "italic")
    else:
        out.append(f"plan {plan.status or '?'} {fmt_when(plan.made_ts, tz, now)} ({plan.reason or '-'})")
        if plan.made_ts is not None and not is_today(plan.made_ts, tz, now):
            out.append(" NOT TODAY'S", "bold")
        out.append(f" · {plan.mandatory} mandatory, {plan.optional} optional · {plan.distance_km:.1f} km\n")
    out.append(f"{'':12}{reporting} reporting")
    if summary is not None:
        out.append(f" · {summary.emptied_today} emptied today")
        if summary.overflows_today:
            out.append(" · ")
            out.append(f"{summary.overflows_today} OVERFLOWED", "bold red")
    if plan is not None and plan.dropped:
        out.append(" · ")
        out.append(f"{len(plan.dropped)} left out", "bold")
    out.append("\n")


def fill_bar(fill: float | None, width: int = 5) -> Text:
    """`[####..]  67 %`: a fill level in blocks and words (no colour needed)."""
    if fill is None:
        return Text("never heard", "dim")
    n = max(0, min(width, round(fill * width)))
    style = "bold red" if fill >= 1.0 else "bold" if fill >= WASTE_THRESHOLD else ""
    return Text(f"[{'#' * n}{'.' * (width - n)}] {fill * 100:3.0f} %", style)


def progress_bar(done: int, total: int, width: int = 10) -> Text:
    """`[####......] 4/10`: stops of a route done."""
    if total <= 0:
        return Text("no route", "dim")
    n = max(0, min(width, round(width * done / total)))
    return Text(f"[{'#' * n}{'.' * (width - n)}] {done}/{total}")


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


def load_bar(load: float | None, width: int = 10) -> Text:
    """`[#######...]  72.0 %`: a bar of `#` that reads without colour; `!` marks a feeder above 90 %."""
    if load is None:
        return Text("-")
    filled = max(0, min(width, round(load * width)))
    high = load > FEEDER_HIGH
    style = "bold red" if load >= 1 else "yellow" if high else ""
    out = Text("[")
    out.append("#" * filled, style)
    out.append("." * (width - filled), "dim")
    out.append(f"] {load * 100:5.1f} %{' !' if high else ''}", "bold" if high else "")
    return out


# ----- plan ------------------------------------------------------------------------------------


def level_block(level: int) -> str:
    """One character for a level: '·' off, then eighths up to '█' at 100 %."""
    if level <= 0:
        return BLOCKS[0]
    return BLOCKS[max(1, min(8, math.ceil(level / 12.5)))]


def plan_chart(plan: LightingPlan | None, width: int, tz: tzinfo | None) -> Text:
    """The night's levels per group as rows of block characters, fitted to `width`."""
    out = Text()
    if plan is None:
        out.append("No lighting plan received yet.", "italic")
        return out
    n = max((len(g.levels) for g in plan.groups), default=len(plan.slot_starts))
    out.append("Lighting plan ", "bold")
    out.append(f"{plan.status or '?'} · made {fmt_time(plan.ts, tz)}")
    out.append(f" · night {fmt_time(plan.on, tz)} to {fmt_time(plan.off, tz)} · {n} slots\n")
    if plan.reason:
        out.append(plan.reason + "\n", "italic")
    out.append(f"Energy {plan.energy_kwh:.1f} kWh")
    for name, base in (("undimmed", plan.baseline_static_kwh), ("Dortmund", plan.baseline_dortmund_kwh)):
        saving = plan.saving(base)
        if saving is not None:
            out.append(f" · {name} {base:.1f} kWh ({-saving * 100:+.0f} %)")
    out.append("\n")
    out.append("Levels: · off ▁ ≤12 ▂ ≤25 ▃ ≤37 ▄ ≤50 ▅ ≤62 ▆ ≤75 ▇ ≤87 █ 100 %", "dim")
    out.append("\n")
    if not plan.groups:
        out.append("The plan has no groups.", "italic")
        return out
    name_w = min(max(len(g.id) for g in plan.groups), 30, max(8, width // 3))
    kwh_w = 7
    avail = max(4, width - name_w - kwh_w - 2)
    per = max(1, math.ceil(n / avail))  # slots per column
    cols = math.ceil(n / per)

    axis = [" "] * cols
    last_end = -1
    for c in range(cols):
        i = c * per
        if i >= len(plan.slot_starts):
            break
        when = datetime.fromtimestamp(plan.slot_starts[i], tz)
        prev = datetime.fromtimestamp(plan.slot_starts[i - per], tz) if i >= per else None
        if (prev is None or prev.hour != when.hour) and c > last_end and c + 2 <= cols:
            axis[c : c + 2] = list(f"{when.hour:02d}")
            last_end = c + 2
    out.append(f"{'group':<{name_w}} ", "bold")
    out.append("".join(axis), "dim")
    out.append(f" {'kWh':>{kwh_w - 1}}\n", "bold")
    for g in plan.groups:
        name = g.id if len(g.id) <= name_w else "…" + g.id[-(name_w - 1) :]
        out.append(f"{name:<{name_w}} ")
        bar = "".join(level_block(max(g.levels[c * per : (c + 1) * per], default=0)) for c in range(cols))
        out.append(bar, "yellow")
        out.append(f" {g.energy_kwh:>{kwh_w - 1}.1f}\n")
    return out


# ----- map -------------------------------------------------------------------------------------


def _symbols(out: Text, statuses: Sequence[LampStatus | None]) -> None:
    """Append one symbol per status (None: blank), one span per run of equal statuses."""
    i = 0
    while i < len(statuses):
        s = statuses[i]
        j = i + 1
        while j < len(statuses) and statuses[j] is s:
            j += 1
        if s is None:
            out.append(" " * (j - i))
        else:
            out.append(SYMBOL[s] * (j - i), STYLE[s])
        i = j


def _worst(statuses: Sequence[LampStatus]) -> LampStatus:
    return min(statuses, key=PRIORITY.index)


def district_map(
    statuses: Mapping[str, LampStatus],
    positions: Mapping[str, Position],
    width: int,
    height: int,
) -> Text:
    """Lamps at their positions, one character per cell (north up), fitted to the area."""
    placed = dict(positions)
    out = Text()
    if not placed:
        out.append("The inventory has no lamp positions.", "italic")
        return out
    width, height = max(width, 4), max(height, 2)
    lat0 = min(p.lat for p in placed.values())
    lat1 = max(p.lat for p in placed.values())
    lon0 = min(p.lon for p in placed.values())
    lon1 = max(p.lon for p in placed.values())
    ky = 111.32  # km per degree of latitude
    kx = ky * math.cos(math.radians((lat0 + lat1) / 2))
    w_km, h_km = max((lon1 - lon0) * kx, 1e-6), max((lat1 - lat0) * ky, 1e-6)
    # A terminal cell is about twice as high as it is wide.
    cell_km = max(w_km / (width - 1), h_km / (2 * (height - 1)), 1e-9)
    cols = min(width, int(w_km / cell_km) + 1)
    rows = min(height, int(h_km / (2 * cell_km)) + 1)
    grid: dict[tuple[int, int], list[LampStatus]] = {}
    for lid, p in placed.items():
        c = round((p.lon - lon0) * kx / cell_km)
        r = round((lat1 - p.lat) * ky / (2 * cell_km))
        c, r = min(max(c, 0), cols - 1), min(max(r, 0), rows - 1)
        grid.setdefault((r, c), []).append(statuses.get(lid, LampStatus.UNKNOWN))
    for r in range(rows):
        line = [grid.get((r, c)) for c in range(cols)]
        _symbols(out, [_worst(cell) if cell else None for cell in line])
        out.append("\n")
    return out


def segment_map(
    segments: Mapping[str, Sequence[str]], statuses: Mapping[str, LampStatus], width: int
) -> Text:
    """Without positions: one line (or more) of lamp symbols per road segment."""
    out = Text()
    if not segments:
        out.append("No lamps received yet.", "italic")
        return out
    name_w = min(max(len(s) for s in segments) + 5, max(10, width // 3))
    avail = max(4, width - name_w - 1)
    for seg in sorted(segments):
        lamps = segments[seg]
        head = f"{seg} ({len(lamps)})"
        head = head if len(head) <= name_w else head[: name_w - 1] + "…"
        for start in range(0, len(lamps), avail):
            out.append(f"{head if start == 0 else '':<{name_w}} ", "bold" if start == 0 else "")
            _symbols(out, [statuses.get(lid, LampStatus.UNKNOWN) for lid in lamps[start : start + avail]])
            out.append("\n")
    return out


# ----- commands --------------------------------------------------------------------------------


def ack_text(ack: Ack) -> Text:
    """An ack in one line, word first (OK / REFUSED / FAILED / PARTIAL)."""
    word = {
        "confirmed": "OK",
        "accepted": "OK",
        "clamped": "OK (clamped)",
        "partial": "PARTIAL",
        "refused": "REFUSED",
        "failed": "FAILED",
    }[ack.status]
    out = Text()
    out.append(f" {word} ", "bold reverse" if ack.ok else "bold red reverse")
    out.append(f" {ack.status}")
    if ack.counts:
        out.append(" · " + ", ".join(f"{k} {v}" for k, v in sorted(ack.counts.items())))
    if ack.reason:
        out.append(" · reason: ")
        out.append(ack.reason, "bold")
    return out
