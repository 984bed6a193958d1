"""Waste: bins by fill and prediction, today's collection plan, the trucks on their routes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import tzinfo
from typing import TYPE_CHECKING

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static

from tui.format import fmt_num, fmt_time, fmt_when, is_today
from tui.views.base import (
    Change,
    Command,
    DomainView,
    Host,
    PaletteAction,
    PaletteDevice,
    Request,
    ShowContext,
    Slice,
    Stamps,
    fold_state,
)
from tui.views.waste_readings import BinView, RouteView, TruckView, WastePlanView, WasteSummaryView
from tui.widgets import Column, FilterTable, Row, VirtualTable

WASTE_THRESHOLD = 0.8  # for counting bins above it when the daemon sent no summary

if TYPE_CHECKING:
    from tui.model import SiteModel


@dataclass(frozen=True, slots=True)
class TruckRow:
    """One truck with its route as the routes table shows it."""

    id: str
    online: bool | None
    status: str
    route_id: str | None
    stops_done: int
    stops_total: int
    bins_done: int
    bins_total: int
    load_pct: float | None
    km: float | None
    next_stop: str | None
    next_eta: float | None
    planned_km: float | None

    @property
    def status_word(self) -> str:
        return "offline" if self.online is False else (self.status or "unknown")

    @property
    def progress(self) -> float | None:
        """Share of the route's stops done (None: no route)."""
        return self.stops_done / self.stops_total if self.stops_total else None


def _progress(t: TruckView | None, route: RouteView | None) -> tuple[int, int, int, int]:
    """(stops done, stops, bins done, bins) of a truck on today's route."""
    stops = route.stops if route else []
    if route is not None and t is not None and t.route_id == route.route_id and t.stops_total:
        # the truck's own count of the plan's route: live, but never above its total
        done, total = min(t.stop_index, t.stops_total), t.stops_total
    elif route is not None:
        # the truck still reports an older route (a re-plan): count the current plan's stops
        done, total = sum(1 for x in stops if x.done), len(stops)
    elif t is not None and t.stops_total:
        done, total = min(t.stop_index, t.stops_total), t.stops_total
    else:
        done, total = 0, 0
    own = t is not None and (route is None or t.route_id == route.route_id)
    if own and t is not None and t.bins_total:
        bins_done, bins_total = t.bins_done, t.bins_total
    else:
        bins_done = sum(1 for x in stops if x.done and x.kind == "bin")
        bins_total = len(route.bins) if route else 0
    return done, total, min(bins_done, bins_total), bins_total


# ----- the model slice ---------------------------------------------------------------------------


@dataclass(kw_only=True)
class WasteModel(Slice):
    """Bins, trucks, today's plan and the daemon's waste counters."""

    bins: dict[str, BinView] = field(default_factory=dict)
    trucks: dict[str, TruckView] = field(default_factory=dict)
    waste_plan: WastePlanView | None = None
    waste_summary: WasteSummaryView | None = None
    bin_stamps: Stamps = field(default_factory=Stamps)

    def fold(self, parts: list[str], payload: bytes) -> Change | None:
        """Fold a `waste/...` message (None: not a waste topic)."""
        match parts:
            case ["waste", "bins", bin_id, "state"]:
                known = bin_id in self.bins
                if fold_state(self.bins, bin_id, payload, BinView) is not None:
                    self.bin_stamps.touch(bin_id, self.version + 1)
                elif known:
                    self.bin_stamps.drop(bin_id, self.version + 1)
                return Change.WASTE
            case ["waste", "trucks", truck_id, "state"]:
                fold_state(self.trucks, truck_id, payload, TruckView)
                return Change.WASTE
            case ["waste", "plan"]:
                self.waste_plan = WastePlanView.model_validate_json(payload) if payload else None
                return Change.WASTE
            case ["waste", "summary"]:
                self.waste_summary = WasteSummaryView.model_validate_json(payload) if payload else None
                return Change.WASTE
        return None

    def clock_ts(self) -> float | None:
        """The daemon's clock as last seen (its latest waste or truck timestamp); None before any.

        "Today" on the dashboard is the site's day by the daemon's clock (which may run fast in a
        demo), not the day of the laptop the dashboard runs on.
        """
        seen = [
            x.ts
            for x in (self.waste_summary, self.waste_plan, *self.trucks.values())
            if x is not None and x.ts
        ]
        return max(seen) if seen else None

    def truck_rows(self) -> list[TruckRow]:
        """Every truck (and every route of today's plan without a truck state yet), by id."""
        plan = self.waste_plan
        ids = set(self.trucks) | ({r.truck for r in plan.routes} if plan else set())
        rows = []
        for tid in sorted(ids):
            t = self.trucks.get(tid)
            route = plan.route_of(tid) if plan else None
            nxt = next((x for x in (route.stops if route else []) if not x.done), None)
            done, total, bins_done, bins_total = _progress(t, route)
            rows.append(
                TruckRow(
                    id=tid,
                    online=t.online if t else None,
                    status=t.status if t else "",
                    route_id=(t.route_id if t else None) or (route.route_id if route else None),
                    stops_done=done,
                    stops_total=total,
                    bins_done=bins_done,
                    bins_total=bins_total,
                    load_pct=t.load_pct if t else None,
                    km=t.odometer_km if t else None,
                    next_stop=f"{nxt.kind} {nxt.id}" if nxt else None,
                    next_eta=nxt.eta_ts if nxt else None,
                    planned_km=route.distance_km if route else None,
                )
            )
        return rows

    def bins_since(self, version: int) -> tuple[list[str], list[str]]:
        """Bins changed and bins gone after model version `version`."""
        return self.bin_stamps.since(version)

    def bins_above(self, threshold: float) -> int:
        """Bins at or above a fill (as the daemon's summary does when it has none)."""
        return sum(1 for b in self.bins.values() if b.fill is not None and b.fill >= threshold)


# ----- tables ------------------------------------------------------------------------------------

BIN_COLUMNS = (
    Column("Bin", 7),
    Column("Zone", 6),
    Column("Kind", 11),
    Column("Fill", 13),
    Column("%/h", 4),
    Column("Full at", 12),
    Column("Today", 16),
    Column("Status", 6),
    Column("Batt", 4),
    Column("Alarms"),
)
TRUCK_COLUMNS = (
    Column("Truck", 10),
    Column("Status", 10),
    Column("Route", 10),
    Column("Stops done", 18),
    Column("Bins", 7),
    Column("Load", 5),
    Column("km", 5),
    Column("Next stop", 14),
    Column("ETA"),
)
PLAN_WORD = {"mandatory": "mandatory", "optional": "optional", "none": "-"}
TRUCK_STYLE = {"offline": "bold magenta", "broken": "bold red reverse", "collecting": "bold"}


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


def describe_bin(b: BinView, tz: tzinfo | None, now: float | None = None) -> str:
    """`zone z3, 64 % full, full at 14:20, today: none` in one phrase."""
    fill = "never heard" if b.fill is None else f"{b.fill * 100:.0f} % full"
    parts = [f"zone {b.zone or '-'}", fill]
    if b.full_ts is not None:
        parts.append(f"full at {fmt_when(b.full_ts, tz, time.time() if now is None else now)}")
    flags = " FORCED" if b.forced else " EXCLUDED" if b.excluded else ""
    parts.append(f"today: {PLAN_WORD.get(b.plan, b.plan)}{flags}")
    if b.alarms:
        parts.append("alarms " + " ".join(b.alarms))
    return ", ".join(parts)


def bin_row(b: BinView, tz: tzinfo | None, now: float | None = None) -> Row:
    """A bin as a bins table row: fill and prediction, today's plan, what is wrong."""
    today = Text(PLAN_WORD.get(b.plan, b.plan), "bold" if b.plan == "mandatory" else "")
    if b.forced:
        today.append(" FORCED", "bold")
    elif b.excluded:
        today.append(" EXCLUDED", "bold")
    full_at = (
        "-"
        if b.full_ts is None
        else (
            "FULL"
            if b.fill is not None and b.fill >= 1
            else fmt_when(b.full_ts, tz, time.time() if now is None else now)
        )
    )
    status = Text(b.status, "" if b.status == "ok" else "bold red")
    alarms = Text(" ".join(b.alarms), "bold red" if "fire" in b.alarms else "bold" if b.alarms else "")
    return Row(
        key=b.id,
        cells=(
            b.id,
            b.zone,
            b.kind,
            fill_bar(b.fill),
            fmt_num(None if b.rate_per_h is None else b.rate_per_h * 100, 1),
            full_at,
            today,
            status,
            fmt_num(b.battery),
            alarms,
        ),
        sort=(
            b.id,
            b.zone,
            b.kind,
            b.fill,
            b.rate_per_h,
            b.full_ts,
            f"{'0' if b.forced else '1' if b.plan == 'mandatory' else '2' if b.plan == 'optional' else '3'}{b.plan}",
            b.status,
            b.battery,
            " ".join(b.alarms) or None,
        ),
    )


def route_text(plan: WastePlanView | None, truck: str | None, tz: tzinfo | None) -> Text:
    """One truck's stops in today's plan: done ones ticked, the next one marked, ETAs after it."""
    out = Text()
    route = plan.route_of(truck) if plan is not None and truck is not None else None
    if route is None:
        out.append(f"{truck}: no route in today's plan" if truck else "no truck selected", "italic")
        return out
    out.append(f"{truck} {route.route_id} ({route.distance_km:.1f} km): ", "bold")
    next_seen = False
    for stop in route.stops:
        name = (
            stop.id if stop.kind == "bin" else f"{stop.kind} {stop.id}" if stop.id != stop.kind else stop.kind
        )
        if stop.done:
            out.append(f"✓{name} ", "dim")
        elif not next_seen:
            next_seen = True
            out.append(f"→ {name} {fmt_time(stop.eta_ts, tz)}", "bold reverse")
            out.append(" ")
        else:
            out.append(f"· {name} {fmt_time(stop.eta_ts, tz)} ")
    return out


def truck_row(r: TruckRow, tz: tzinfo | None) -> Row:
    """A truck as a routes table row: its route's progress."""
    word = r.status_word
    return Row(
        key=r.id,
        cells=(
            r.id,
            Text(word, TRUCK_STYLE.get(word, "")),
            r.route_id or "-",
            progress_bar(r.stops_done, r.stops_total),
            f"{r.bins_done}/{r.bins_total}" if r.bins_total else "-",
            "-" if r.load_pct is None else f"{r.load_pct:.0f} %",
            fmt_num(r.km, 1),
            r.next_stop or "-",
            fmt_time(r.next_eta, tz),
        ),
        sort=(
            r.id,
            word,
            r.route_id,
            r.progress,
            float(r.bins_done),
            r.load_pct,
            r.km,
            r.next_stop,
            r.next_eta,
        ),
    )


def overview_lines(out: Text, model: WasteModel, tz: tzinfo | None, now: float | None = None) -> None:
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


# ----- the pane ----------------------------------------------------------------------------------

BIN_ACTIONS = {"force_bin": "force", "exclude_bin": "exclude", "auto_bin": "clear"}


class WasteView(DomainView):
    """The Waste view: the day's summary, bins, trucks, the selected truck's route.

    The bins table gets only the bins that changed since it last looked. R re-plans the
    collection here (the lighting elsewhere); f, x and n act on the bin under the cursor.
    """

    id = "waste"
    title = "Waste"
    shows = frozenset({Change.WASTE})
    palette = (
        PaletteAction(
            "Force a bin into today's plan", "the selected bin: collect it today (f)", "force_bin", "waste"
        ),
        PaletteAction(
            "Exclude a bin", "from every plan until set back to automatic (x)", "exclude_bin", "waste"
        ),
        PaletteAction(
            "Set a bin back to automatic", "planned by its fill and prediction (n)", "auto_bin", "waste"
        ),
        PaletteAction("Re-plan today's waste collection", "plan the routes again now (R)", "replan", "waste"),
    )

    @classmethod
    def overview_lines(cls, out: Text, model: SiteModel, tz: tzinfo | None) -> None:
        overview_lines(out, model, tz)

    @classmethod
    def palette_devices(cls, model: SiteModel) -> Iterator[PaletteDevice]:
        for bid, b in model.bins.items():
            yield PaletteDevice(f"Bin {bid}", f"zone {b.zone or '-'} · {b.kind}", cls.id, bid)
        for tid in model.trucks:
            yield PaletteDevice(f"Truck {tid}", "its route's progress", cls.id, tid, "#truck-table")

    tables = ("#bin-table", "#truck-table")
    commands = (
        Command("R", "replan", "Re-plan"),
        Command("f", "force_bin", "Force"),
        Command("x", "exclude_bin", "Exclude"),
        Command("n", "auto_bin", "Automatic"),
    )
    exclusive = True
    slice = WasteModel
    css = """
#waste { height: 1fr; }
#waste-summary { height: auto; }
#bin-table { height: 2fr; }
#truck-table { height: 1fr; min-height: 7; border-top: solid $secondary; }
#route { height: auto; max-height: 2; }
"""

    def __init__(self) -> None:
        self.seen = -1

    def compose(self) -> ComposeResult:
        with Vertical(id="waste"):
            yield Static("", id="waste-summary")
            yield FilterTable(BIN_COLUMNS, "bins", id="bin-table", hint="e.g. 'mandatory z3'")
            yield FilterTable(TRUCK_COLUMNS, "trucks", id="truck-table", hint="e.g. 'collecting'")
            yield Static("", id="route")

    def show(self, ctx: ShowContext) -> None:
        model, root, tz = ctx.model, ctx.root, ctx.tz
        summary = Text()
        now = model.clock_ts() or time.time()
        overview_lines(summary, model, tz, now)
        root.query_one("#waste-summary", Static).update(summary)
        changed, gone = model.bins_since(self.seen)
        self.seen = model.version
        root.query_one("#bin-table", FilterTable).update(
            [bin_row(model.bins[k], tz, now) for k in changed], gone
        )
        root.query_one("#truck-table", FilterTable).show([truck_row(r, tz) for r in model.truck_rows()])
        self._show_route(ctx)

    def cursor_moved(self, ctx: ShowContext, table: VirtualTable) -> None:
        if ctx.root.query_one("#truck-table", FilterTable).table is table:
            self._show_route(ctx)

    def _show_route(self, ctx: ShowContext) -> None:
        """The stops of the truck under the cursor in the routes table."""
        truck = ctx.root.query_one("#truck-table", FilterTable).selected_key
        ctx.root.query_one("#route", Static).update(route_text(ctx.model.waste_plan, truck, ctx.tz))

    def command(self, action: str, host: Host) -> None:
        model = host.model
        if action == "replan":
            host.confirm_then_send(replan_request(model.base))
            return
        bid = host.selected(self.tables[0])
        if bid is None or bid not in model.bins:
            host.say(Text("No bin selected: nothing to do.", "italic"))
            return
        b, now = model.bins[bid], model.clock_ts()
        host.confirm_then_send(bin_request(model.base, BIN_ACTIONS[action], b, host.tz, now))


# ----- commands ----------------------------------------------------------------------------------

# What each bin command does, in words ({bin} is the bin's id): action -> (what, short).
BIN_COMMANDS: dict[str, tuple[str, str]] = {
    "force": (
        "Force bin {bin} into today's collection plan.\n"
        "The daemon re-plans today's routes with it as a mandatory stop, or refuses "
        "(an excluded bin: set it back to automatic first).",
        "force",
    ),
    "exclude": (
        "Exclude bin {bin} from every collection plan until you set it back to automatic (n).\n"
        "Its fill is still watched and its alarms still raised.",
        "exclude",
    ),
    "clear": (
        "Set bin {bin} back to automatic: planned by its fill and prediction, no longer forced or excluded.",
        "automatic",
    ),
}


def bin_request(base: str, action: str, b: BinView, tz: tzinfo | None, now: float | None) -> Request:
    """Force, exclude or set a bin back to automatic (`action` a key of BIN_COMMANDS)."""
    what, short = BIN_COMMANDS[action]
    topic = f"{base}/cmd/waste/bins/{b.id}"
    text = f"{what.format(bin=b.id)}\nNow: {describe_bin(b, tz, now)}.\nRequest: {topic}"
    payload: dict[str, object] = {"action": action, "reason": "operator dashboard"}
    return Request(text, topic, payload, f"{short} {b.id}")


def replan_request(base: str) -> Request:
    """Re-plan today's waste collection now."""
    topic = f"{base}/cmd/waste/replan"
    what = (
        "Re-plan today's waste collection now.\n"
        "The daemon plans again from the trucks' positions, keeping what is done; "
        "forced and excluded bins stay so.\n"
        f"Request: {topic}"
    )
    return Request(what, topic, {"action": "replan"}, "re-plan waste")
