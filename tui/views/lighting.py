"""Lighting: lamps and their controllers, the night's plan, overrides (the Lights view's data).

The Map and Plan pages draw from this slice too (`tui.render`).
"""

from __future__ import annotations

import enum
import math
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import tzinfo
from functools import partial
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.widgets import Button, RadioSet

from edge.payloads import ControllerState, LampState, LampTelemetry, PlanMessage
from tui.format import fmt_num
from tui.screens import ChoiceButton, FormDialog, FormField, parse_duration_min
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
    ask_then_send,
    fold_state,
    index_by,
)
from tui.widgets import Column, FilterTable, Row

if TYPE_CHECKING:
    from textual.widget import Widget

    from tui.model import SiteModel


class LampStatus(enum.StrEnum):
    """A lamp's condition in words (the dashboard never relies on colour alone)."""

    ON = "on"
    DIMMED = "dimmed"
    OFF = "off"
    FAILED = "FAILED"
    OFFLINE = "offline"
    UNKNOWN = "unknown"


def lamp_status(state: LampState) -> LampStatus:
    """Offline beats failed beats the level: what an operator must act on comes first."""
    if state.online is False:
        return LampStatus.OFFLINE
    if state.failures:
        return LampStatus.FAILED
    level = state.level_actual if state.level_actual is not None else state.level_cmd
    if level is None:
        return LampStatus.UNKNOWN
    if level <= 0:
        return LampStatus.OFF
    if level < 100:
        return LampStatus.DIMMED
    return LampStatus.ON


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


class PlanGroup(BaseModel):
    """One planning group's level per slot (`plan.groups[]` of a lighting PlanMessage)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str
    levels: list[int]
    energy_kwh: float = 0.0


class LightingPlan(BaseModel):
    """The parts of the lighting plan body the dashboard shows (unknown keys are ignored)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    status: str = ""
    reason: str = ""
    groups: list[PlanGroup] = []
    energy_kwh: float = 0.0
    baseline_static_kwh: float = 0.0
    baseline_dortmund_kwh: float = 0.0
    slot_starts: list[float] = []
    on: float | None = None
    off: float | None = None
    ts: float = 0.0

    def saving(self, baseline_kwh: float) -> float | None:
        """Fraction saved against a baseline (None without one)."""
        if baseline_kwh <= 0:
            return None
        return 1.0 - self.energy_kwh / baseline_kwh


@dataclass(frozen=True, slots=True)
class LampRow:
    """One lamp as the lights table shows it."""

    id: str
    segment: str
    group: str
    level_cmd: float | None
    level_actual: float | None
    power_w: float | None
    hours: float | None
    status: LampStatus
    alarms: tuple[str, ...]
    source: str

    @property
    def lighting_class(self) -> str:
        """`M3 std` from the group id `{segment}:{class}:{std,nd,fs}`."""
        parts = self.group.split(":")
        return " ".join(parts[1:]) if len(parts) >= 3 else self.group


@dataclass(frozen=True, slots=True)
class OnlineCount:
    """Devices of one kind by connectivity."""

    online: int = 0
    offline: int = 0
    unknown: int = 0

    @property
    def total(self) -> int:
        return self.online + self.offline + self.unknown


# ----- the model slice ---------------------------------------------------------------------------


@dataclass(kw_only=True)
class LightingModel(Slice):
    """Lamps (state and telemetry), their controllers and tonight's plan."""

    lamps: dict[str, LampState] = field(default_factory=dict)
    telemetry: dict[str, LampTelemetry] = field(default_factory=dict)
    controllers: dict[str, ControllerState] = field(default_factory=dict)
    plan: LightingPlan | None = None
    # The model version at which each lamp last changed (or went), so a big table can take
    # just the lamps that changed since it last looked.
    lamp_stamps: Stamps = field(default_factory=Stamps)

    # Kept as lamps come and go, so the Overview and the Map cost nothing per lamp per refresh.
    lamp_status_of: dict[str, LampStatus] = field(default_factory=dict)
    _status_counts: Counter[LampStatus] = field(default_factory=Counter)
    _online: Counter[bool | None] = field(default_factory=Counter)
    _power_w: float = 0.0
    _by_segment: dict[str, list[str]] | None = None  # None: to be rebuilt (a lamp came, went or moved)
    _by_group: dict[str, list[str]] | None = None

    def fold(self, parts: list[str], payload: bytes) -> Change | None:
        """Fold a `lights/...` or `controllers/...` message (None: not one of those)."""
        match parts:
            case ["lights", lamp_id, "state"]:
                old = self.lamps.get(lamp_id)
                new = fold_state(self.lamps, lamp_id, payload, LampState)
                self._count(lamp_id, old, new)
                if new is not None:
                    self.lamp_stamps.touch(lamp_id, self.version + 1)
                elif old is not None:
                    self.lamp_stamps.drop(lamp_id, self.version + 1)
                return Change.LAMP
            case ["lights", lamp_id, "telemetry"]:
                tel = LampTelemetry.model_validate_json(payload)
                old_tel = self.telemetry.get(lamp_id)
                self.telemetry[lamp_id] = tel
                state = self.lamps.get(lamp_id)
                if state is not None and _shown_differs(
                    old_tel, tel, power_from_state=state.power_w is not None
                ):
                    self.lamp_stamps.touch(lamp_id, self.version + 1)
                    return Change.LAMP
                return Change.IGNORED  # nothing a view shows changed (the hours to the hour, the power)
            case ["controllers", dev_id, "state"]:
                fold_state(self.controllers, dev_id, payload, ControllerState)
                return Change.CONTROLLER
        return None

    def _count(self, lamp_id: str, old: LampState | None, new: LampState | None) -> None:
        """Move a lamp's share of the aggregates from its old state to its new one."""
        if old is not None:
            self._status_counts[self.lamp_status_of.pop(lamp_id)] -= 1
            self._online[old.online] -= 1
            self._power_w -= old.power_w or 0.0
        if new is not None:
            status = self.lamp_status_of[lamp_id] = lamp_status(new)
            self._status_counts[status] += 1
            self._online[new.online] += 1
            self._power_w += new.power_w or 0.0
        if old is None or new is None or old.segment != new.segment:
            self._by_segment = None
        if old is None or new is None or old.group != new.group:
            self._by_group = None
        self._power_w = self._power_w if self.lamps else 0.0  # no float drift once the site is empty

    def fold_plan(self, domain: str, msg: PlanMessage) -> Change | None:
        """Take the lighting plan out of a `plans/{domain}` message (None: another domain's)."""
        if domain != "lighting":
            return None
        self.plan = LightingPlan.model_validate({**msg.plan, "ts": msg.ts})
        return Change.PLAN

    def lamp_rows(self) -> list[LampRow]:
        """Every lamp with its telemetry, sorted by id."""
        return [self.lamp_row(lamp_id) for lamp_id in sorted(self.lamps)]

    def lamp_row(self, lamp_id: str) -> LampRow:
        """One lamp with its telemetry (KeyError for an unknown lamp)."""
        s = self.lamps[lamp_id]
        tel = self.telemetry.get(lamp_id)
        return LampRow(
            id=lamp_id,
            segment=s.segment,
            group=s.group,
            level_cmd=s.level_cmd,
            level_actual=s.level_actual,
            power_w=s.power_w if s.power_w is not None else (tel.power_w if tel else None),
            hours=tel.hours if tel else None,
            status=lamp_status(s),
            alarms=tuple(s.alarms),
            source=s.source,
        )

    def lamps_since(self, version: int) -> tuple[list[str], list[str]]:
        """Lamps changed and lamps gone after model version `version`."""
        return self.lamp_stamps.since(version)

    def statuses(self) -> Mapping[str, LampStatus]:
        """Each lamp's status by id (kept up to date as lamps change: do not modify)."""
        return self.lamp_status_of

    def lamp_counts(self) -> Counter[LampStatus]:
        """Lamps by status."""
        return +self._status_counts

    def online_counts(self) -> dict[str, OnlineCount]:
        """Lamps and controllers by connectivity."""
        c = self._online
        out = {"lamps": OnlineCount(online=c[True], offline=c[False], unknown=c[None])}
        ctl = Counter(s.online for s in self.controllers.values())
        out["controllers"] = OnlineCount(online=ctl[True], offline=ctl[False], unknown=ctl[None])
        return out

    def segments(self) -> Mapping[str, Sequence[str]]:
        """Lamp ids per road segment (from the lamps' own state), each in id order."""
        if self._by_segment is None:
            self._by_segment = index_by(self.lamps, lambda s: s.segment)
        return self._by_segment

    def groups(self) -> Mapping[str, Sequence[str]]:
        """Lamp ids per planning group, each in id order."""
        if self._by_group is None:
            self._by_group = index_by(self.lamps, lambda s: s.group)
        return self._by_group

    def total_power_w(self) -> float:
        """Sum of the lamps' reported power."""
        return self._power_w


def _shown_differs(old: LampTelemetry | None, new: LampTelemetry, *, power_from_state: bool) -> bool:
    """Whether the lights table would show a lamp's new telemetry differently: its hours (to the
    hour), its power unless the state's power is shown."""
    if old is None:
        return True
    hours = None if old.hours is None else round(old.hours), None if new.hours is None else round(new.hours)
    return hours[0] != hours[1] or (not power_from_state and old.power_w != new.power_w)


# ----- the table ---------------------------------------------------------------------------------

LAMP_COLUMNS = (
    Column("Lamp", 7),
    Column("Segment", 16),
    Column("Class", 7),
    Column("Cmd%", 4),
    Column("Act%", 4),
    Column("W", 5),
    Column("Hours", 6),
    Column("Status", 9),
    Column("Alarms"),
)


# One cell per status, shared by every row (the table copies a cell before it draws it).
STATUS_TEXT = {s: Text(f"{SYMBOL[s]} {s.value}", STYLE[s]) for s in LampStatus}


def lamp_row(r: LampRow) -> Row:
    """A lamp as a lights table row."""
    status = STATUS_TEXT[r.status]
    lighting_class = r.lighting_class
    return Row(
        key=r.id,
        cells=(
            r.id,
            r.segment,
            lighting_class,
            fmt_num(r.level_cmd),
            fmt_num(r.level_actual),
            fmt_num(r.power_w),
            fmt_num(r.hours),
            status,
            " ".join(r.alarms),
        ),
        sort=(
            r.id,
            r.segment,
            lighting_class,
            r.level_cmd,
            r.level_actual,
            r.power_w,
            r.hours,
            float(PRIORITY.index(r.status)),
            " ".join(r.alarms) or None,
        ),
    )


# ----- the pane ----------------------------------------------------------------------------------


def overview_lines(out: Text, model: LightingModel) -> None:
    """The Overview's lighting lines: devices by connectivity, lamps by status, the power they report."""
    counts = model.online_counts()
    out.append(f"{'Devices':<12}", "bold")
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
    out.append(f"{'Lamps':<12}", "bold")
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
    out.append(f"{'Power now':<12}", "bold")
    out.append(f"{model.total_power_w() / 1000:.1f} kW reported by {len(model.lamps)} lamps\n")


class LightsView(DomainView):
    """The Lights view: one table of every lamp; its override, resume and re-plan work site-wide.

    The table is fed only the lamps that changed since it last looked: 5,000 rows are not rebuilt.
    """

    id = "lights"
    title = "Lights"
    shows = frozenset({Change.LAMP})
    tables = ("#lights",)
    palette = (
        PaletteAction(
            "Override a lamp, segment or group", "set a level for a while (o)", "override", "lights"
        ),
        PaletteAction("Resume the schedule", "for a lamp, segment or group (r)", "resume", "lights"),
    )

    @classmethod
    def overview_lines(cls, out: Text, model: SiteModel, tz: tzinfo | None) -> None:
        overview_lines(out, model)

    @classmethod
    def palette_devices(cls, model: SiteModel) -> Iterator[PaletteDevice]:
        for lamp_id, s in model.lamps.items():
            yield PaletteDevice(f"Lamp {lamp_id}", f"{s.segment} · {s.group}", cls.id, lamp_id)

    commands = (
        Command("o", "override", "Override", site_wide=True),
        Command("r", "resume", "Resume", site_wide=True),
        Command("R", "replan", "Re-plan", site_wide=True),
    )
    slice = LightingModel
    css = "#lights { height: 1fr; }"

    def __init__(self) -> None:
        self.seen = -1

    def compose(self) -> ComposeResult:
        yield FilterTable(LAMP_COLUMNS, "lamps", id="lights")

    def show(self, ctx: ShowContext) -> None:
        model = ctx.model
        changed, gone = model.lamps_since(self.seen)
        self.seen = model.version
        ctx.root.query_one("#lights", FilterTable).update(
            [lamp_row(model.lamp_row(k)) for k in changed], gone
        )

    def command(self, action: str, host: Host) -> None:
        base = host.model.base
        if action == "replan":
            host.confirm_then_send(replan_request(base))
            return
        found = targets(host.model, host.selected(self.tables[0]))
        if not found:
            host.say(Text("No lamps known yet: nothing to override.", "italic"))
            return
        ask_then_send(
            host,
            OverrideDialog(found, resume=action == "resume"),
            partial(override_request, base),
            "override",
        )


# ----- the override form -------------------------------------------------------------------------

Scope = Literal["lights", "segments", "groups"]
SCOPE_WORD: dict[Scope, str] = {"lights": "lamp", "segments": "segment", "groups": "group"}


@dataclass(frozen=True, slots=True)
class Target:
    """What a lighting command addresses: one lamp, a road segment or a planning group."""

    scope: Scope
    name: str
    lamps: int = 1

    def describe(self) -> str:
        word = SCOPE_WORD[self.scope]
        if self.scope == "lights":
            return f"{word} {self.name}"
        return f"{word} {self.name} ({self.lamps} lamp{'s' if self.lamps != 1 else ''})"


@dataclass(frozen=True, slots=True)
class Override:
    """What the operator filled in: set a level (for a while) or resume the schedule."""

    target: Target
    action: Literal["set_level", "resume_schedule"]
    level: float | None = None
    duration_s: float | None = None


def parse_level(text: str) -> float:
    """A level 0..100 from the form; ValueError says what is wrong."""
    try:
        level = float(text.strip().rstrip("%"))
    except ValueError:
        raise ValueError("level: enter a number from 0 to 100") from None
    if not math.isfinite(level) or not 0 <= level <= 100:
        raise ValueError("level: must be from 0 to 100")
    return level


class OverrideDialog(FormDialog[Override]):
    """Choose the target, a level and a duration (or resume the schedule)."""

    DEFAULT_CSS = """
    OverrideDialog RadioSet { width: 100%; height: auto; }
    OverrideDialog .field Input { border: none; height: 1; padding: 0; width: 12; }
    """
    FIELDS = (
        FormField("level", "Level 0-100 %:", "e.g. 40"),
        FormField("duration", "Duration (minutes):", "empty: until resumed"),
    )
    SET_LABEL = "Set level…"

    def __init__(self, targets: Sequence[Target], *, resume: bool = False) -> None:
        super().__init__("Lighting override")
        self._targets = tuple(targets)
        self._resume = resume

    def compose_choices(self) -> ComposeResult:
        with RadioSet(id="target"):
            for i, t in enumerate(self._targets):
                yield ChoiceButton(t.describe(), value=i == 0, id=f"scope-{t.scope}")

    def compose_buttons(self) -> ComposeResult:
        yield Button("Resume schedule…", id="resume")

    def initial_focus(self) -> Widget:
        return self.query_one("#resume", Button) if self._resume else super().initial_focus()

    @property
    def target(self) -> Target:
        index = self.query_one(RadioSet).pressed_index
        return self._targets[index if index >= 0 else 0]

    def parse(self, values: dict[str, str]) -> Override:
        level = parse_level(values["level"])
        return Override(self.target, "set_level", level, parse_duration_min(values["duration"]))

    @on(Button.Pressed, "#resume")
    def _resume_pressed(self) -> None:
        self.dismiss(Override(self.target, "resume_schedule"))


# ----- commands ----------------------------------------------------------------------------------


def targets(model: LightingModel, selected: str | None) -> list[Target]:
    """What an override can address: the selected lamp (else the first), its segment, its group."""
    lamp_id = selected
    if lamp_id is None or lamp_id not in model.lamps:
        lamp_id = min(model.lamps, default=None)
    if lamp_id is None:
        return []
    state = model.lamps[lamp_id]
    segs, groups = model.segments(), model.groups()
    return [
        Target("lights", lamp_id),
        Target("segments", state.segment, len(segs.get(state.segment, ()))),
        Target("groups", state.group, len(groups.get(state.group, ()))),
    ]


def override_request(base: str, result: Override) -> Request:
    """Set a level (for a while) or resume the schedule, as filled in on the override form."""
    t = result.target
    topic = f"{base}/cmd/{t.scope}/{t.name}"
    payload: dict[str, object]
    if result.action == "resume_schedule":
        payload = {"action": "resume_schedule", "reason": "operator dashboard"}
        what = f"Resume the schedule for {t.describe()}.\nAny operator override ends now and the plan takes over."
        short = f"resume {t.describe()}"
    else:
        level = result.level if result.level is not None else 0.0
        payload = {"action": "set_level", "level": level, "reason": "operator dashboard"}
        if result.duration_s is not None:
            payload["duration_s"] = result.duration_s
            until = f"for {result.duration_s / 60:g} min, then the plan takes over again"
        else:
            until = "until you resume the schedule (r)"
        what = (
            f"Set {t.describe()} to {level:g} % {until}.\n"
            "Lighting floors still apply: the daemon may clamp the level or refuse it."
        )
        short = f"set {t.describe()} to {level:g} %"
    return Request(f"{what}\nRequest: {topic}", topic, payload, short)


def replan_request(base: str) -> Request:
    """Re-plan tonight's lighting now."""
    topic = f"{base}/cmd/lighting/replan"
    what = (
        "Re-plan tonight's lighting now.\n"
        "The daemon computes a new plan from the current time and applies it; "
        "operator overrides stay in force until they end.\n"
        f"Request: {topic}"
    )
    return Request(what, topic, {"action": "replan"}, "re-plan")
