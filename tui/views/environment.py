"""Environment: the sensors with their recent trend, the rules firing, and the warnings they raised.

A rule proposes or issues a warning; a proposed one waits for an operator (i issues it, x rejects
it), one in force can be withdrawn (w). Stale and implausible sensors are marked loudly, since the
rules ignore them: a flood gauge that went quiet must not look like calm water.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import tzinfo
from typing import TYPE_CHECKING, Literal

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Sparkline, Static

from edge.payloads_safety import EnvWarning, RulesMessage, SensorState
from tui.format import BLOCKS, fmt_time
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
    fold_state,
)
from tui.widgets import Column, FilterTable, Row, VirtualTable

if TYPE_CHECKING:
    from tui.model import SiteModel

HISTORY = 60  # values of each sensor's main metric kept for its sparkline
RESAMPLE_S = 60.0  # an unchanged reading is taken again at most this often (the daemon republishes)
TREND_WIDTH = 16  # the table's sparkline: the latest values
# The metric a sensor is read by, first match wins (the rules' metrics, by profile).
MAIN_METRICS = ("level_cm", "rain_mm_h", "wind_gust_ms", "pm2_5", "no2", "soil_moisture", "wind_speed_ms")
UNITS = {
    "level_cm": "cm",
    "rain_mm_h": "mm/h",
    "wind_gust_ms": "m/s",
    "wind_speed_ms": "m/s",
    "pm2_5": "µg/m³",
    "pm10": "µg/m³",
    "no2": "µg/m³",
    "soil_moisture": "%",
}
LIVE = ("proposed", "issued")
SEVERITY_STYLE = {"extreme": "bold red reverse", "severe": "bold red", "warning": "bold", "info": ""}
_MSG_TYPE = re.compile(rb"<(?:\w+:)?msgType>\s*(\w+)\s*<")

WarningAction = Literal["confirm", "reject", "withdraw"]


def main_metric(values: dict[str, float | bool]) -> str | None:
    """The metric a sensor is read by: a known one, else its first number by name."""
    for name in MAIN_METRICS:
        if isinstance(values.get(name), int | float) and not isinstance(values.get(name), bool):
            return name
    return next(
        (k for k in sorted(values) if isinstance(values[k], int | float) and not isinstance(values[k], bool)),
        None,
    )


# ----- the model slice ---------------------------------------------------------------------------


@dataclass(kw_only=True)
class EnvironmentModel(Slice):
    """Sensors (with a bounded history of their main metric), rules, live warnings, CAP messages."""

    env_sensors: dict[str, SensorState] = field(default_factory=dict)
    env_history: dict[str, deque[float]] = field(default_factory=dict)
    env_sampled: dict[str, float] = field(default_factory=dict)  # ts of each sensor's last value taken
    env_rules: RulesMessage | None = None
    env_warnings: dict[str, EnvWarning] = field(default_factory=dict)
    cap_types: dict[str, str] = field(default_factory=dict)  # warning -> CAP msgType (Alert/Update/Cancel)

    def fold(self, parts: list[str], payload: bytes) -> Change | None:
        """Fold an `environment/...` or `alerts/cap/...` message (None: not one of those)."""
        match parts:
            case ["environment", "sensors", sensor_id, "state"]:
                before = self.env_sensors.get(sensor_id)
                state = fold_state(self.env_sensors, sensor_id, payload, SensorState)
                if state is None:
                    self.env_history.pop(sensor_id, None)
                    self.env_sampled.pop(sensor_id, None)
                else:
                    self._sample(state, before)
                return Change.ENVIRONMENT
            case ["environment", "rules"]:
                self.env_rules = RulesMessage.model_validate_json(payload) if payload else None
                return Change.ENVIRONMENT
            case ["environment", "warnings", warning_id]:
                w = EnvWarning.model_validate_json(payload) if payload else None
                if w is None or w.status not in LIVE:
                    self.env_warnings.pop(warning_id, None)
                else:
                    self.env_warnings[warning_id] = w
                return Change.ENVIRONMENT
            case ["alerts", "cap", warning_id]:
                found = _MSG_TYPE.search(payload) if payload else None
                if found is None:
                    self.cap_types.pop(warning_id, None)
                else:
                    self.cap_types[warning_id] = found.group(1).decode("ascii", "replace")
                return Change.ENVIRONMENT
        return None

    def _sample(self, state: SensorState, before: SensorState | None) -> None:
        """Take the main metric into the history when the reading changed or RESAMPLE_S passed.

        The daemon republishes a sensor's state on every evaluation: taking each would fill the
        history with copies. Implausible readings stay out (the rules ignore them too).
        """
        metric = main_metric(state.values)
        if metric is None or state.status == "implausible":
            return
        last = self.env_sampled.get(state.device_id)
        same = before is not None and before.values == state.values
        if last is not None and (state.ts <= last or (same and state.ts - last < RESAMPLE_S)):
            return
        self.env_sampled[state.device_id] = state.ts
        history = self.env_history.setdefault(state.device_id, deque(maxlen=HISTORY))
        history.append(float(state.values[metric]))

    def firing_rules(self) -> list[tuple[str, str, str, float | None, str | None]]:
        """(rule, group, metric, since, warning) of each rule firing now, longest firing first."""
        rules = self.env_rules.rules if self.env_rules else []
        firing = [(r.id, r.group, r.metric, r.since, r.warning) for r in rules if r.firing]
        return sorted(firing, key=lambda r: (r[3] if r[3] is not None else float("inf"), r[0]))

    def env_warnings_sorted(self) -> list[EnvWarning]:
        """Proposed warnings first (they wait for someone), then those in force; oldest first."""
        return sorted(self.env_warnings.values(), key=lambda w: (LIVE.index(w.status), w.start, w.id))


# ----- tables ------------------------------------------------------------------------------------

SENSOR_COLUMNS = (
    Column("Sensor", 12),
    Column("Group", 12),
    Column("Status", 12),
    Column("Value"),
    Column("Trend", TREND_WIDTH),
    Column("At", 5),
)
WARNING_COLUMNS = (
    Column("Status", 9),
    Column("Severity", 8),
    Column("Warning", 20),
    Column("Text"),
    Column("Until", 5),
    Column("Sensors", 14),
    Column("CAP", 6),
)
STATUS_STYLE = {"stale": "bold yellow reverse", "implausible": "bold red reverse", "unknown": "dim"}


def sensor_status(s: SensorState) -> Text:
    """`ok`, or the reason the rules do not use it, in capitals (and offline)."""
    if not s.online and s.status == "ok":
        return Text("OFFLINE", "bold magenta")
    word = s.status if s.status in ("ok", "unknown") else s.status.upper()
    return Text(word, STATUS_STYLE.get(s.status, ""))


def value_text(s: SensorState) -> str:
    """The main metric's value and unit first (a narrow column keeps those), then its name."""
    metric = main_metric(s.values)
    if metric is None:
        return "-"
    unit = UNITS.get(metric)
    return f"{float(s.values[metric]):.1f}{f' {unit}' if unit else ''}  {metric}"


def trend(values: deque[float] | None, width: int = TREND_WIDTH) -> Text:
    """The latest values as blocks scaled from their own minimum to maximum."""
    shown = list(values or ())[-width:]
    out = Text("·" * (width - len(shown)), "dim")
    if shown:
        low, span = min(shown), (max(shown) - min(shown)) or 1.0
        # from the lowest block up (the dot is for no value), so the minimum still shows
        out.append("".join(BLOCKS[1 + round((v - low) / span * (len(BLOCKS) - 2))] for v in shown))
    return out


def sensor_row(s: SensorState, history: deque[float] | None, tz: tzinfo | None) -> Row:
    """A sensor as a sensors table row; stale and implausible ones are marked in words."""
    status = sensor_status(s)
    metric = main_metric(s.values)
    value = value_text(s)
    return Row(
        key=s.device_id,
        cells=(s.device_id, s.group, status, value, trend(history), fmt_time(s.ts, tz)),
        sort=(
            s.device_id,
            s.group,
            status.plain,
            float(s.values[metric]) if metric is not None else None,
            None,
            s.ts,
        ),
    )


def warning_row(w: EnvWarning, cap: str | None, tz: tzinfo | None) -> Row:
    """A live warning as a warnings table row; a proposed one says it waits for a decision."""
    status = Text("PROPOSED", "bold yellow reverse") if w.status == "proposed" else Text("issued", "bold")
    text = " / ".join(w.lines)
    return Row(
        key=w.id,
        cells=(
            status,
            Text(w.severity, SEVERITY_STYLE.get(w.severity, "")),
            w.id,
            text,
            fmt_time(w.end, tz),
            ", ".join(w.sensors),
            cap or "-",
        ),
        sort=(status.plain, w.severity, w.id, text, w.end, ", ".join(w.sensors), cap),
    )


def rules_text(model: EnvironmentModel, tz: tzinfo | None) -> Text:
    """The rules firing now, each with the warning it raised."""
    total = len(model.env_rules.rules) if model.env_rules else 0
    firing = model.firing_rules()
    out = Text("Rules firing: ", "bold")
    if not firing:
        out.append(f"none (of {total})", "italic")
    for i, (rule, group, metric, since, warning) in enumerate(firing):
        out.append(", " if i else "")
        out.append(rule, "bold red")
        out.append(
            f" ({group} {metric}, since {fmt_time(since, tz)}" + (f" → {warning})" if warning else ")")
        )
    return out


def detail_text(model: EnvironmentModel, sensor_id: str | None) -> Text:
    """The selected sensor's main metric over its history: name, range, latest."""
    s = model.env_sensors.get(sensor_id or "")
    if s is None:
        return Text("no sensor selected", "italic")
    history = list(model.env_history.get(s.device_id, ()))
    out = Text(f"{s.device_id} ", "bold")
    out.append(f"{main_metric(s.values) or '-'}, last {len(history)}: ")
    if history:
        out.append(f"{min(history):.1f}..{max(history):.1f}, now {history[-1]:.1f}")
    return out


def overview_lines(out: Text, model: EnvironmentModel) -> None:
    """The Overview's Environment line: sensors usable, rules firing, warnings proposed and in force."""
    out.append(f"{'Environment':<12}", "bold")
    if not model.env_sensors and not model.env_warnings:
        out.append("no sensors reported\n", "italic")
        return
    bad = sum(1 for s in model.env_sensors.values() if s.status in ("stale", "implausible"))
    out.append(f"{len(model.env_sensors) - bad}/{len(model.env_sensors)} sensors usable")
    if bad:
        out.append(f" ({bad} STALE/IMPLAUSIBLE)", "bold yellow")
    out.append(f" · {len(model.firing_rules())} rules firing")
    proposed = sum(1 for w in model.env_warnings.values() if w.status == "proposed")
    issued = len(model.env_warnings) - proposed
    out.append(f" · {issued} warnings issued")
    if proposed:
        out.append(f" · {proposed} PROPOSED (decide on the Environment view)", "bold yellow")
    out.append("\n")


# ----- the pane ----------------------------------------------------------------------------------


class EnvironmentView(DomainView):
    """The Environment view: live warnings (i issue, x reject, w withdraw), rules firing, sensors."""

    id = "environment"
    title = "Environment"
    shows = frozenset({Change.ENVIRONMENT})
    palette = (
        PaletteAction(
            "Issue a proposed warning", "confirm the selected one (i)", "confirm_warning", "environment"
        ),
        PaletteAction("Reject a proposed warning", "the selected one (x)", "reject_warning", "environment"),
        PaletteAction(
            "Withdraw a warning in force", "the selected one (w)", "withdraw_warning", "environment"
        ),
    )
    tables = ("#env-warning-table", "#sensor-table")
    commands = (
        Command("i", "confirm_warning", "Issue"),
        Command("x", "reject_warning", "Reject"),
        Command("w", "withdraw_warning", "Withdraw"),
    )
    exclusive = True
    slice = EnvironmentModel
    css = """
#environment { height: 1fr; }
#env-warning-table { height: 1fr; min-height: 5; }
#env-rules { height: auto; max-height: 3; border-top: solid $secondary; }
#sensor-table { height: 2fr; border-top: solid $secondary; }
#sensor-detail { height: 3; }
#sensor-detail Static { width: 40; }
#sensor-spark { width: 1fr; height: 3; }
"""

    @classmethod
    def overview_lines(cls, out: Text, model: SiteModel, tz: tzinfo | None) -> None:
        overview_lines(out, model)

    @classmethod
    def palette_devices(cls, model: SiteModel) -> Iterator[PaletteDevice]:
        for sid, s in model.env_sensors.items():
            yield PaletteDevice(f"Sensor {sid}", f"{s.group} · {s.status}", cls.id, sid, "#sensor-table")
        for wid in model.env_warnings:
            yield PaletteDevice(f"Warning {wid}", "proposed or in force", cls.id, wid)

    def compose(self) -> ComposeResult:
        with Vertical(id=self.id):
            yield FilterTable(WARNING_COLUMNS, "warnings", id="env-warning-table", hint="e.g. 'proposed'")
            yield Static("", id="env-rules")
            yield FilterTable(SENSOR_COLUMNS, "sensors", id="sensor-table", hint="e.g. 'stale'")
            with Horizontal(id="sensor-detail"):
                yield Static("", id="sensor-caption")
                yield Sparkline([], id="sensor-spark")

    def show(self, ctx: ShowContext) -> None:
        """Hand both tables their rows, the rules their line, the selected sensor its sparkline."""
        model, root, tz = ctx.model, ctx.root, ctx.tz
        root.query_one("#env-warning-table", FilterTable).show(
            [warning_row(w, model.cap_types.get(w.id), tz) for w in model.env_warnings_sorted()]
        )
        root.query_one("#env-rules", Static).update(rules_text(model, tz))
        root.query_one("#sensor-table", FilterTable).show(
            [sensor_row(s, model.env_history.get(k), tz) for k, s in sorted(model.env_sensors.items())]
        )
        self._detail(ctx)

    def cursor_moved(self, ctx: ShowContext, table: VirtualTable) -> None:
        if table.parent is ctx.root.query_one("#sensor-table", FilterTable):
            self._detail(ctx)

    def _detail(self, ctx: ShowContext) -> None:
        sensor_id = ctx.root.query_one("#sensor-table", FilterTable).selected_key
        ctx.root.query_one("#sensor-caption", Static).update(detail_text(ctx.model, sensor_id))
        ctx.root.query_one("#sensor-spark", Sparkline).data = list(
            ctx.model.env_history.get(sensor_id or "", ())
        )

    def command(self, action: str, host: Host) -> None:
        w = host.model.env_warnings.get(host.selected(self.tables[0]) or "")
        if w is None:
            host.say(Text("No warning selected: nothing to do.", "italic"))
            return
        kind = WARNING_ACTIONS[action]
        allowed = "issued" if kind == "withdraw" else "proposed"
        if w.status != allowed:
            other = "withdraw it (w)" if w.status == "issued" else "issue (i) or reject (x) it"
            host.say(Text(f"{w.id} is {w.status}: {other}.", "italic"))
            return
        host.confirm_then_send(warning_request(host.model.base, kind, w, host.operator_name))


# ----- commands ----------------------------------------------------------------------------------

WARNING_ACTIONS: dict[str, WarningAction] = {
    "confirm_warning": "confirm",
    "reject_warning": "reject",
    "withdraw_warning": "withdraw",
}
EFFECT = {
    "confirm": "Issue the proposed warning {id}: it goes on the displays (and lamps) and out as CAP.",
    "reject": "Reject the proposed warning {id}: it is not shown anywhere and no CAP alert goes out.",
    "withdraw": "Withdraw the warning {id}: the displays and lamps let it go, CAP sends a Cancel.",
}


def warning_request(base: str, action: WarningAction, w: EnvWarning, by: str) -> Request:
    """Confirm, reject or withdraw one warning, recorded as `by`."""
    topic = f"{base}/cmd/environment/warnings/{w.id}"
    payload: dict[str, object] = {"action": action, "comment": "operator dashboard", "by": by}
    what = (
        f"{EFFECT[action].format(id=w.id)}\n  {w.severity.upper()}: {' / '.join(w.lines)}"
        f" (rule {w.rule}, value {w.value:g})\nRequest: {topic}"
    )
    return Request(what, topic, payload, f"{action} {w.id}")
