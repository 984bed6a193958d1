"""Charging: charge points, the feeders they share with the lighting, the charging plan."""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import tzinfo
from functools import partial
from typing import TYPE_CHECKING

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical

from edge.payloads import ChargerState, FeederState, PlanMessage
from tui.format import fmt_num, fmt_time, sparkline
from tui.screens import FormDialog, FormField, parse_duration_min
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
    ask_then_send,
    fold_state,
)
from tui.views.charging_readings import ChargingPlan
from tui.widgets import Column, FilterTable, Row

VOLTS = 230.0  # phase voltage: charging power against a feeder limit assumes three phases
FEEDER_HIGH = 0.9  # a feeder above this fraction of its limit is flagged
FEEDER_SAMPLE_S = 30.0  # one load sample per feeder per this many seconds (clock time) ...
FEEDER_SAMPLES = 40  # ... kept for the load-over-time chart: 20 minutes

if TYPE_CHECKING:
    from tui.model import SiteModel


@dataclass(frozen=True, slots=True)
class ChargerRow:
    """One charge point as the sessions table shows it."""

    id: str
    feeder: str
    online: bool | None
    status: str | None
    car_connected: bool | None
    setpoint_a: float | None
    planned_a: float | None
    power_kw: float | None
    session_id: str | None
    session_kwh: float | None
    needed_kwh: float | None
    departure_ts: float | None
    unmet_kwh: float | None
    alarms: tuple[str, ...]

    @property
    def status_word(self) -> str:
        """The status, with offline first (an offline charger's last status is stale)."""
        if self.online is False:
            return "offline"
        return self.status or "unknown"

    @property
    def charging(self) -> bool:
        return self.online is not False and self.status == "Charging"


@dataclass(frozen=True, slots=True)
class FeederRow:
    """One feeder's load against its limit."""

    id: str
    limit_a: float
    lighting_a: float
    setpoints_a: float
    measured_a: float
    chargers: int
    history: tuple[float, ...] = ()  # load fractions, oldest first, one per FEEDER_SAMPLE_S
    tripped: bool = False

    @property
    def load(self) -> float | None:
        """Lighting plus measured charging current as a fraction of the limit (None: no limit)."""
        if self.limit_a <= 0:
            return None
        return (self.lighting_a + self.measured_a) / self.limit_a

    @property
    def high(self) -> bool:
        load = self.load
        return self.tripped or (load is not None and load > FEEDER_HIGH)


@dataclass(frozen=True, slots=True)
class ChargingSummary:
    """The Overview's charging line."""

    online: int
    offline: int
    unknown: int
    cars: int
    charging: int
    power_kw: float
    limit_a: float
    measured_a: float
    high: tuple[FeederRow, ...]

    @property
    def limit_kw(self) -> float:
        """The feeders' limits as three-phase power."""
        return self.limit_a * 3 * VOLTS / 1000


# ----- the model slice ---------------------------------------------------------------------------


@dataclass(kw_only=True)
class ChargingModel(Slice):
    """Charge points, feeders (with a short load history) and the charging plan."""

    chargers: dict[str, ChargerState] = field(default_factory=dict)
    feeders: dict[str, FeederState] = field(default_factory=dict)
    feeder_history: dict[str, deque[tuple[float, float]]] = field(default_factory=dict)
    charging_plan: ChargingPlan | None = None

    def fold(self, parts: list[str], payload: bytes) -> Change | None:
        """Fold a `chargers/...` or `feeders/...` message (None: not one of those)."""
        match parts:
            case ["chargers", dev_id, "state"]:
                fold_state(self.chargers, dev_id, payload, ChargerState)
                return Change.CHARGING
            case ["feeders", feeder_id, "state"]:
                if (f := fold_state(self.feeders, feeder_id, payload, FeederState)) is not None:
                    self._sample_feeder(f)
                return Change.CHARGING
        return None

    def fold_plan(self, domain: str, msg: PlanMessage) -> Change | None:
        """Take the charging plan out of a `plans/{domain}` message (None: another domain's)."""
        if domain != "charging":
            return None
        self.charging_plan = ChargingPlan.model_validate({**msg.plan, "ts": msg.ts})
        return Change.CHARGING

    def charger_rows(self) -> list[ChargerRow]:
        """Every charge point with its session and the plan's current, sorted by id."""
        plan = self.charging_plan
        rows = []
        for cid in sorted(self.chargers):
            c = self.chargers[cid]
            planned = c.planned_a
            unmet = None
            if plan is not None and c.car_connected:
                sid = c.session_id or cid
                if planned is None:
                    planned = plan.current_at(sid, c.ts)
                sp = plan.session(sid)
                unmet = sp.unmet_kwh if sp is not None else None
            rows.append(
                ChargerRow(
                    id=cid,
                    feeder=c.feeder,
                    online=c.online,
                    status=c.status,
                    car_connected=c.car_connected,
                    setpoint_a=c.current_limit_a,
                    planned_a=planned,
                    power_kw=c.power_kw,
                    session_id=c.session_id,
                    session_kwh=c.session_energy_kwh,
                    needed_kwh=c.energy_needed_kwh,
                    departure_ts=c.departure_ts,
                    unmet_kwh=unmet,
                    alarms=tuple(c.alarms),
                )
            )
        return rows

    def _sample_feeder(self, f: FeederState) -> None:
        """Keep one load sample per FEEDER_SAMPLE_S of the feeder's own clock (it reports on change)."""
        samples = self.feeder_history.setdefault(f.feeder, deque(maxlen=FEEDER_SAMPLES))
        if f.limit_a <= 0:
            return
        load = (f.lighting_a + f.measured_a) / f.limit_a
        if samples and f.ts - samples[-1][0] < FEEDER_SAMPLE_S:
            if f.ts >= samples[-1][0]:
                samples[-1] = (samples[-1][0], max(samples[-1][1], load))  # the slot's peak
            return
        samples.append((f.ts, load))

    def feeder_rows(self) -> list[FeederRow]:
        """Every feeder's load (and its recent history), sorted by id."""
        return [
            FeederRow(
                id=f.feeder,
                limit_a=f.limit_a,
                lighting_a=f.lighting_a,
                setpoints_a=f.setpoints_a,
                measured_a=f.measured_a,
                chargers=f.chargers,
                history=tuple(load for _, load in self.feeder_history.get(f.feeder, ())),
                tripped=f.tripped,
            )
            for _, f in sorted(self.feeders.items())
        ]

    def charging_summary(self) -> ChargingSummary:
        """Charge points by connectivity, cars, power against the feeders' limits."""
        rows = self.charger_rows()
        online = Counter(r.online for r in rows)
        feeders = self.feeder_rows()
        return ChargingSummary(
            online=online[True],
            offline=online[False],
            unknown=online[None],
            cars=sum(1 for r in rows if r.car_connected and r.online is not False),
            charging=sum(1 for r in rows if r.charging),
            power_kw=sum(r.power_kw or 0.0 for r in rows if r.online is not False),
            limit_a=sum(f.limit_a for f in feeders),
            measured_a=sum(f.measured_a for f in feeders),
            high=tuple(f for f in feeders if f.high),
        )


# ----- tables ------------------------------------------------------------------------------------

FEEDER_COLUMNS = (
    Column("Feeder", 10),
    Column("Limit A", 7),
    Column("Light A", 7),
    Column("Setp. A", 7),
    Column("Meas. A", 7),
    Column("Load", 22),
    Column("Points", 6),
    Column("Load, last 20 min (one block per 30 s; ! over the limit)"),
)
SESSION_COLUMNS = (
    Column("Charger", 8),
    Column("Status", 13),
    Column("Car", 3),
    Column("Set A", 5),
    Column("Plan A", 6),
    Column("kW", 5),
    Column("Sess kWh", 8),
    Column("Need kWh", 8),
    Column("Departs", 7),
    Column("Feeder", 10),
    Column("Alarms"),
)
CHARGER_STYLE = {"offline": "bold magenta", "Faulted": "bold red reverse", "Charging": "bold green"}


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


def describe_charger(r: ChargerRow) -> str:
    """`Charging, car connected, 11.0 kW, feeder feeder-1` in one phrase."""
    car = {True: "car connected", False: "no car", None: "car unknown"}[r.car_connected]
    parts = [r.status_word, car]
    if r.power_kw is not None:
        parts.append(f"{r.power_kw:.1f} kW")
    parts.append(f"feeder {r.feeder}")
    return ", ".join(parts)


def feeder_row(f: FeederRow) -> Row:
    """A feeder as a feeders table row."""
    load = f.load
    return Row(
        key=f.id,
        cells=(
            f"{f.id} TRIPPED" if f.tripped else f.id,
            fmt_num(f.limit_a, 1),
            fmt_num(f.lighting_a, 1),
            fmt_num(f.setpoints_a, 1),
            fmt_num(f.measured_a, 1),
            load_bar(load),
            str(f.chargers),
            sparkline(f.history, FEEDER_SAMPLES),
        ),
        sort=(
            f.id,
            f.limit_a,
            f.lighting_a,
            f.setpoints_a,
            f.measured_a,
            load,
            float(f.chargers),
            max(f.history, default=None),
        ),
    )


def charger_row(r: ChargerRow, tz: tzinfo | None) -> Row:
    """A charge point as a sessions table row."""
    word = r.status_word
    car = {True: "yes", False: "no", None: "-"}[r.car_connected]
    return Row(
        key=r.id,
        cells=(
            r.id,
            Text(word, CHARGER_STYLE.get(word, "")),
            car,
            fmt_num(r.setpoint_a, 1),
            fmt_num(r.planned_a, 1),
            fmt_num(r.power_kw, 1),
            fmt_num(r.session_kwh, 1),
            fmt_num(r.needed_kwh, 1),
            fmt_time(r.departure_ts, tz),
            r.feeder,
            " ".join(r.alarms),
        ),
        sort=(
            r.id,
            word,
            car,
            r.setpoint_a,
            r.planned_a,
            r.power_kw,
            r.session_kwh,
            r.needed_kwh,
            r.departure_ts,
            r.feeder,
            " ".join(r.alarms) or None,
        ),
    )


def overview_lines(out: Text, model: ChargingModel) -> None:
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


# ----- the pane ----------------------------------------------------------------------------------


class ChargingView(DomainView):
    """The Charging view: feeders above, charge points below; p, l and u act on the charge point."""

    id = "charging"
    title = "Charging"
    shows = frozenset({Change.CHARGING})
    palette = (
        PaletteAction(
            "Pause a charge point", "the selected one, until released (p)", "pause_charger", "charging"
        ),
        PaletteAction("Limit a charge point", "to a current in A (l)", "limit_charger", "charging"),
        PaletteAction(
            "Release a charge point", "back to the charging plan (u)", "release_charger", "charging"
        ),
    )

    @classmethod
    def overview_lines(cls, out: Text, model: SiteModel, tz: tzinfo | None) -> None:
        overview_lines(out, model)

    @classmethod
    def palette_devices(cls, model: SiteModel) -> Iterator[PaletteDevice]:
        for cid, c in model.chargers.items():
            yield PaletteDevice(f"Charge point {cid}", f"feeder {c.feeder}", cls.id, cid)

    tables = ("#session-table", "#feeder-table")
    commands = (
        Command("p", "pause_charger", "Pause"),
        Command("l", "limit_charger", "Limit"),
        Command("u", "release_charger", "Release"),
    )
    exclusive = True
    slice = ChargingModel
    css = """
#charging { height: 1fr; }
#feeder-table { height: 1fr; }
#session-table { height: 2fr; }
"""

    def compose(self) -> ComposeResult:
        with Vertical(id="charging"):
            yield FilterTable(FEEDER_COLUMNS, "feeders", id="feeder-table", hint="e.g. 'feeder-2 !'")
            yield FilterTable(
                SESSION_COLUMNS, "charge points", id="session-table", hint="e.g. 'feeder-2 charging'"
            )

    def show(self, ctx: ShowContext) -> None:
        """Hand both tables their rows."""
        model, root = ctx.model, ctx.root
        root.query_one("#feeder-table", FilterTable).show([feeder_row(f) for f in model.feeder_rows()])
        root.query_one("#session-table", FilterTable).show(
            [charger_row(r, ctx.tz) for r in model.charger_rows()]
        )

    def command(self, action: str, host: Host) -> None:
        row = selected_charger(host.model, host.selected(self.tables[0]))
        if row is None:
            host.say(Text("No charge point selected: nothing to do.", "italic"))
            return
        base = host.model.base
        if action in ("pause_charger", "release_charger"):
            host.confirm_then_send(charger_request(base, action.removesuffix("_charger"), row))
        else:
            ask_then_send(
                host, LimitDialog(row.id, describe_charger(row)), partial(limit_request, base), "limit"
            )


# ----- the limit form ----------------------------------------------------------------------------

MAX_LIMIT_A = 1000.0


def parse_amps(text: str) -> float:
    """A charging current in A from the form; ValueError says what is wrong.

    Only nonsense is refused here: the daemon's interlock decides what a feeder allows
    (it clamps, turns 0-6 A into 0, or refuses with its reason).
    """
    try:
        amps = float(text.strip().upper().rstrip("A").strip())
    except ValueError:
        raise ValueError("current: enter amperes, e.g. 16") from None
    if not math.isfinite(amps) or not 0 <= amps <= MAX_LIMIT_A:
        raise ValueError(f"current: from 0 to {MAX_LIMIT_A:g} A")
    return amps


@dataclass(frozen=True, slots=True)
class ChargerLimitForm:
    """What the operator filled in to limit a charge point."""

    charger: str
    current_a: float
    duration_s: float | None = None


class LimitDialog(FormDialog[ChargerLimitForm]):
    """Ask for the current (A) and an optional duration to limit one charge point."""

    FIELDS = (
        FormField("amps", "Current (A):", "e.g. 10 (0-6 A becomes 0)"),
        FormField("duration", "Duration (minutes):", "empty: until released"),
    )
    SET_LABEL = "Limit…"

    def __init__(self, charger: str, detail: str = "") -> None:
        super().__init__(f"Limit charge point {charger}", detail)
        self._charger = charger

    def parse(self, values: dict[str, str]) -> ChargerLimitForm:
        amps = parse_amps(values["amps"])
        return ChargerLimitForm(self._charger, amps, parse_duration_min(values["duration"]))


# ----- commands ----------------------------------------------------------------------------------


def selected_charger(model: ChargingModel, cid: str | None) -> ChargerRow | None:
    """The charge point under the cursor, if the site still has it."""
    return next((r for r in model.charger_rows() if r.id == cid), None) if cid is not None else None


def _topic(base: str, cid: str) -> str:
    return f"{base}/cmd/chargers/{cid}"


CHARGER_COMMANDS: dict[str, str] = {
    "pause": (
        "Pause charge point {id} ({row}) until you release it (u).\n"
        "The car stops charging; the plan gives its share to the other cars."
    ),
    "release": (
        "Release charge point {id} ({row}).\n"
        "Any operator pause or limit ends now and the charging plan takes over."
    ),
}


def charger_request(base: str, action: str, row: ChargerRow) -> Request:
    """Pause a charge point until released, or release it to the plan (`action` a key of CHARGER_COMMANDS)."""
    topic = _topic(base, row.id)
    what = f"{CHARGER_COMMANDS[action].format(id=row.id, row=describe_charger(row))}\nRequest: {topic}"
    payload: dict[str, object] = {"action": action, "reason": "operator dashboard"}
    return Request(what, topic, payload, f"{action} {row.id}")


def limit_request(base: str, form: ChargerLimitForm) -> Request:
    """Limit a charge point to a current (for a while), as filled in on the limit form."""
    topic = _topic(base, form.charger)
    payload: dict[str, object] = {
        "action": "limit",
        "current_a": form.current_a,
        "reason": "operator dashboard",
    }
    if form.duration_s is not None:
        payload["duration_s"] = form.duration_s
        until = f"for {form.duration_s / 60:g} min"
    else:
        until = "until you release it (u)"
    what = (
        f"Limit charge point {form.charger} to {form.current_a:g} A {until}.\n"
        "The feeder interlock still applies: the daemon may clamp the current to what the "
        "feeder has left, or refuse it; 0-6 A becomes 0 (IEC 61851).\n"
        f"Request: {topic}"
    )
    return Request(what, topic, payload, f"limit {form.charger} to {form.current_a:g} A")
