"""The dashboard's text pages (Overview, Plan, Map) and the command line's ack (Rich `Text`, no Textual).

Every state has a symbol or a word, and colour only repeats it, so the views read the
same on a monochrome terminal. Each domain writes its own Overview lines
(`tui/views/{domain}.py`); the formatting primitives live in `tui.format`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import TYPE_CHECKING

from rich.text import Text

from edge.payloads import Ack
from tui.format import BLOCKS, fmt_num, fmt_time, fmt_when, is_today, sparkline
from tui.inventory import Inventory, Position
from tui.views.alarms import SEVERITIES, SEVERITY_STYLE
from tui.views.base import DomainView
from tui.views.charging import load_bar
from tui.views.helppoints import MAP_LEGEND, MAP_SYMBOL, MapKind, MapMark, map_marks, map_notes
from tui.views.lighting import PRIORITY, STYLE, SYMBOL, LampStatus, LightingPlan
from tui.views.waste import fill_bar, progress_bar

if TYPE_CHECKING:
    from tui.model import SiteModel

__all__ = [
    "BLOCKS",
    "PRIORITY",
    "SEVERITY_STYLE",
    "STYLE",
    "SYMBOL",
    "ack_text",
    "district_lines",
    "district_map",
    "fill_bar",
    "fmt_num",
    "fmt_time",
    "fmt_when",
    "is_today",
    "legend",
    "legend_lines",
    "level_block",
    "load_bar",
    "map_page",
    "overview",
    "plan_chart",
    "progress_bar",
    "segment_lines",
    "segment_map",
    "sparkline",
]


def legend() -> Text:
    """The map's symbols in words."""
    out = Text()
    for status in PRIORITY:
        out.append(SYMBOL[status], STYLE[status])
        out.append(f" {status.value}  ")
    return out


def legend_lines(helppoints: bool, width: int) -> list[Text]:
    """The legend, and the help points' symbols (only when there are some) on the same line if
    it has room, else on the next."""
    lamps = legend()
    if not helppoints:
        return [lamps]
    more = Text()
    for kind, words in MAP_LEGEND.items():
        more.append(*MAP_SYMBOL[kind])
        more.append(f" {words}  ")
    more.rstrip()
    if lamps.cell_len + more.cell_len <= width:
        return [lamps + more]
    return [lamps, more]


# ----- overview --------------------------------------------------------------------------------


def _label(out: Text, name: str) -> None:
    out.append(f"{name:<12}", "bold")


def overview(model: SiteModel, tz: tzinfo | None, views: Sequence[type[DomainView]]) -> Text:
    """The site's health in one screen: status, every view's lines (`tui.views.REGISTRY` order),
    tonight's energy, alarms, messages."""
    out = Text()
    _status_lines(out, model, tz)
    for view in views:
        view.overview_lines(out, model, tz)
    _energy_lines(out, model.plan)
    _alarm_lines(out, model)
    _message_lines(out, model)
    return out


def _status_lines(out: Text, model: SiteModel, tz: tzinfo | None) -> None:
    """The daemon's status and the last lighting plan."""
    d = model.daemon
    _label(out, "Daemon")
    if d is None:
        out.append("no status received yet\n", "italic")
    else:
        out.append("ONLINE" if d.online else "OFFLINE (last will)", "bold green" if d.online else "bold red")
        out.append(f" · {d.site} · version {d.version} · since {fmt_time(d.ts, tz, seconds=True)}\n")

    plan = model.plan
    _label(out, "Last plan")
    if plan is None:
        out.append("none received\n", "italic")
    else:
        out.append(f"{plan.status or '?'} at {fmt_time(plan.ts, tz)}")
        out.append(f" · night {fmt_time(plan.on, tz)} to {fmt_time(plan.off, tz)}")
        out.append(f" · {len(plan.groups)} groups\n")
        if plan.reason:
            out.append(f"{'':12}{plan.reason}\n", "italic")


def _energy_lines(out: Text, plan: LightingPlan | None) -> None:
    """Tonight's planned energy against the baselines."""
    _label(out, "Energy")
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


def _alarm_lines(out: Text, model: SiteModel) -> None:
    """Open alarms by severity, and how many nobody acknowledged."""
    alarms = model.alarm_counts()
    _label(out, "Alarms")
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


def _message_lines(out: Text, model: SiteModel) -> None:
    """Messages received, and the bad payloads among them by topic."""
    _label(out, "Messages")
    out.append(f"{model.messages} received · ")
    bad = model.bad_total
    out.append(f"{bad} bad payload{'s' if bad != 1 else ''}", "bold red" if bad else "")
    if bad:
        out.append(" (" + ", ".join(f"{k} {v}" for k, v in sorted(model.bad_payloads.items())) + ")")
    out.append("\n")


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

HELPPOINT_ROWS = 2  # the calls' line and the unavailable help points' line under the map


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


def _joined(lines: Sequence[Text]) -> Text:
    out = Text()
    for line in lines:
        out.append_text(line)
        out.append("\n")
    return out


def district_map(
    statuses: Mapping[str, LampStatus],
    positions: Mapping[str, Position],
    width: int,
    height: int,
) -> Text:
    """Lamps at their positions, one character per cell (north up), fitted to the area."""
    if not positions:
        return Text("The inventory has no lamp positions.", "italic")
    return _joined(district_lines(statuses, positions, width, height))


@dataclass(frozen=True, slots=True)
class _Grid:
    """The map's projection for one area size: north up, a cell twice as high as wide."""

    lat1: float  # the northern edge
    lon0: float  # the western edge
    kx: float  # km per degree of longitude here
    ky: float
    cell_km: float
    rows: int
    cols: int

    def cell(self, lat: float, lon: float) -> tuple[int, int]:
        """The (row, col) a position falls in, unclamped."""
        c = round((lon - self.lon0) * self.kx / self.cell_km)
        r = round((self.lat1 - lat) * self.ky / (2 * self.cell_km))
        return r, c

    def clamp(self, rc: tuple[int, int]) -> tuple[int, int]:
        return min(max(rc[0], 0), self.rows - 1), min(max(rc[1], 0), self.cols - 1)


@functools.lru_cache(maxsize=4)
def _cells(
    positions: _Frozen, width: int, height: int
) -> tuple[_Grid, tuple[tuple[tuple[int, int], tuple[str, ...]], ...]]:
    """(the projection, ((row, col), lamp ids) per occupied cell): where each lamp falls, for one area size."""
    placed = positions.items
    width, height = max(width, 4), max(height, 2)
    lat0, lat1 = min(p.lat for _, p in placed), max(p.lat for _, p in placed)
    lon0, lon1 = min(p.lon for _, p in placed), max(p.lon for _, p in placed)
    ky = 111.32  # km per degree of latitude
    kx = ky * math.cos(math.radians((lat0 + lat1) / 2))
    w_km, h_km = max((lon1 - lon0) * kx, 1e-6), max((lat1 - lat0) * ky, 1e-6)
    # A terminal cell is about twice as high as it is wide.
    cell_km = max(w_km / (width - 1), h_km / (2 * (height - 1)), 1e-9)
    cols = min(width, int(w_km / cell_km) + 1)
    rows = min(height, int(h_km / (2 * cell_km)) + 1)
    grid = _Grid(lat1, lon0, kx, ky, cell_km, rows, cols)
    cells: dict[tuple[int, int], list[str]] = {}
    for lid, p in placed:
        cells.setdefault(grid.clamp(grid.cell(p.lat, p.lon)), []).append(lid)
    return grid, tuple((rc, tuple(ids)) for rc, ids in cells.items())


class _Frozen:
    """Positions as a hashable value, by identity of the mapping (an inventory is loaded once)."""

    def __init__(self, positions: Mapping[str, Position]) -> None:
        self.items = tuple(positions.items())
        self._id = id(positions)

    def __hash__(self) -> int:
        return self._id

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Frozen) and other._id == self._id and other.items == self.items


_frozen: dict[int, _Frozen] = {}


def _freeze(positions: Mapping[str, Position]) -> _Frozen:
    frozen = _frozen.get(id(positions))
    if frozen is None or len(frozen.items) != len(positions):
        frozen = _frozen[id(positions)] = _Frozen(positions)
    return frozen


def district_lines(
    statuses: Mapping[str, LampStatus],
    positions: Mapping[str, Position],
    width: int,
    height: int,
    marks: Sequence[MapMark] = (),
) -> list[Text]:
    """The district map as lines, the help points `marks` over the lamps; where each lamp falls
    is worked out once per area size (the few help points are placed on every drawing)."""
    grid, cells = _cells(_freeze(positions), width, height)
    worst: dict[tuple[int, int], LampStatus] = {}
    unknown = LampStatus.UNKNOWN
    for rc, ids in cells:
        worst[rc] = _worst([statuses.get(lid, unknown) for lid in ids])
    on_map, _ = _place(marks, positions, grid)
    cols = max((c for _, c in [*worst, *on_map]), default=0) + 1
    by_row: dict[int, list[tuple[int, MapKind]]] = {}
    for (r, c), kind in sorted(on_map.items()):
        by_row.setdefault(r, []).append((c, kind))
    lines = []
    for r in range(grid.rows):
        line = Text()
        row = [worst.get((r, c)) for c in range(cols)]
        start = 0
        for c, kind in by_row.get(r, ()):
            _symbols(line, row[start:c])
            line.append(*MAP_SYMBOL[kind])
            start = c + 1
        _symbols(line, row[start:])
        lines.append(line)
    return lines


def mark_position(mark: MapMark, positions: Mapping[str, Position]) -> tuple[float, float] | None:
    """Where a help point stands: its own position, else its post's in the inventory."""
    if mark.lat is not None and mark.lon is not None:
        return mark.lat, mark.lon
    post = positions.get(mark.post or "")
    return None if post is None else (post.lat, post.lon)


def _place(
    marks: Sequence[MapMark], positions: Mapping[str, Position], grid: _Grid
) -> tuple[dict[tuple[int, int], MapKind], int]:
    """The cell of each help point on the map, a cell with several showing the most urgent, and
    how many are left out (no position, or more than a cell off the lamps' area)."""
    out: dict[tuple[int, int], MapKind] = {}
    rank = list(MAP_SYMBOL)
    missed = 0
    for mark in marks:
        where = mark_position(mark, positions)
        r, c = grid.cell(*where) if where is not None else (-2, -2)
        if not (-1 <= r <= grid.rows and -1 <= c <= grid.cols):
            missed += 1
            continue
        rc = grid.clamp((r, c))
        if rc not in out or rank.index(mark.kind) < rank.index(out[rc]):
            out[rc] = mark.kind
    return out, missed


def helppoints_off_map(
    marks: Sequence[MapMark], positions: Mapping[str, Position], width: int, height: int
) -> int:
    """How many help points `district_lines` (same area) leaves out."""
    if not marks:
        return 0
    return _place(marks, positions, _cells(_freeze(positions), width, height)[0])[1]


def segment_map(
    segments: Mapping[str, Sequence[str]], statuses: Mapping[str, LampStatus], width: int
) -> Text:
    """Without positions: one line (or more) of lamp symbols per road segment."""
    if not segments:
        return Text("No lamps received yet.", "italic")
    return _joined(segment_lines(segments, statuses, width))


def segment_lines(
    segments: Mapping[str, Sequence[str]], statuses: Mapping[str, LampStatus], width: int
) -> list[Text]:
    """The segment map as lines."""
    name_w = min(max(len(s) for s in segments) + 5, max(10, width // 3))
    avail = max(4, width - name_w - 1)
    unknown = LampStatus.UNKNOWN
    lines = []
    for seg in sorted(segments):
        lamps = segments[seg]
        head = f"{seg} ({len(lamps)})"
        head = head if len(head) <= name_w else head[: name_w - 1] + "…"
        for start in range(0, len(lamps), avail):
            line = Text()
            line.append(f"{head if start == 0 else '':<{name_w}} ", "bold" if start == 0 else "")
            _symbols(line, [statuses.get(lid, unknown) for lid in lamps[start : start + avail]])
            lines.append(line)
    return lines


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


def map_page(model: SiteModel, inventory: Inventory | None) -> Callable[[int, int], list[Text]]:
    """The Map page as lines, drawn to the view's size: the district if there is an inventory, else
    by segment; the help points' calls and unavailable ones listed (and drawn, on the district)."""
    statuses = model.statuses()
    marks = map_marks(model)

    def draw(width: int, height: int) -> list[Text]:
        lines = legend_lines(bool(marks), width)
        notes = map_notes(marks, width)
        if inventory is None:
            lines.append(Text("No inventory (--inventory FILE): lamps by segment, in id order.", "italic"))
            lines += notes  # above the segments, which may run for pages
            segments = model.segments()
            lines += (
                segment_lines(segments, statuses, width)
                if segments
                else [Text("No lamps received yet.", "italic")]
            )
        elif not inventory.positions:
            lines.append(Text("The inventory has no lamp positions.", "italic"))
            lines += notes
        else:
            # Room for the notes whenever there are help points, so the lamps' cells (worked out
            # per area size) are not worked out again each time a help point comes or goes.
            area = max(4, height - 2 - len(lines) - (HELPPOINT_ROWS if marks else 0))
            lines += district_lines(statuses, inventory.positions, width, area, marks)
            lines += notes
            unplaced = sum(1 for lid in statuses if lid not in inventory.positions)
            if unplaced:
                lines.append(Text(f"{unplaced} lamp(s) not in the inventory are not drawn.", "italic"))
            off = helppoints_off_map(marks, inventory.positions, width, area)
            if off:
                lines.append(Text(f"{off} help point(s) not within the map are not drawn.", "italic"))
        return lines

    return draw
