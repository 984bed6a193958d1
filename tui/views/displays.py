"""Displays: what each sign shows, the car parks it guides to, the warnings in force."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import tzinfo
from functools import partial
from typing import TYPE_CHECKING

import orjson
from pydantic import BaseModel, ConfigDict
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static

from edge.payloads import DisplayState, ParkingState
from tui.format import fmt_num, fmt_time
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
from tui.widgets import Column, FilterTable, Row

WARNING_SEVERITIES = ("extreme", "severe", "warning", "info")

if TYPE_CHECKING:
    from tui.model import SiteModel


class Recommendation(BaseModel):
    """One sign's guidance: which car park it sends its approach to (`guidance.recommendations[]`)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    sign_id: str
    car_park: str | None = None
    free: int | None = None
    minutes: float | None = None
    hint: str = ""


class GuidancePlan(BaseModel):
    """The retained `guidance` topic (unknown keys are ignored)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    recommendations: list[Recommendation] = []


class ActiveWarning(BaseModel):
    """One warning in force (an element of the retained `warnings/active` list)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str
    severity: str
    lines: list[str] = []
    displays: list[str] = []
    start: float | None = None
    end: float | None = None


def shown_text(shown: str) -> str:
    """What a display shows as one line: its lines joined by ` / ` (empty: blank)."""
    lines = [ln.strip() for ln in shown.replace("\r", "").split("\n") if ln.strip()]
    return " / ".join(lines)


@dataclass(frozen=True, slots=True)
class DisplaysSummary:
    """The Overview's displays line."""

    online: int
    total: int
    warnings: int
    car_parks: int
    stale: int


# ----- the model slice ---------------------------------------------------------------------------


@dataclass(kw_only=True)
class DisplaysModel(Slice):
    """Displays, car parks, the guidance behind the signs and the warnings in force."""

    displays: dict[str, DisplayState] = field(default_factory=dict)
    parking: dict[str, ParkingState] = field(default_factory=dict)
    guidance: GuidancePlan | None = None
    warnings: list[ActiveWarning] = field(default_factory=list)

    def fold(self, parts: list[str], payload: bytes) -> Change | None:
        """Fold a displays, parking, guidance or warnings message (None: not one of those)."""
        match parts:
            case ["displays", dev_id, "state"]:
                fold_state(self.displays, dev_id, payload, DisplayState)
                return Change.DISPLAYS
            case ["parking", park_id, "state"]:
                fold_state(self.parking, park_id, payload, ParkingState)
                return Change.DISPLAYS
            case ["guidance"]:
                self.guidance = GuidancePlan.model_validate_json(payload) if payload else None
                return Change.DISPLAYS
            case ["warnings", "active"]:
                raw = orjson.loads(payload) if payload else []
                if not isinstance(raw, list):
                    raise TypeError("warnings/active: expected a list")
                self.warnings = [ActiveWarning.model_validate(w) for w in raw]
                return Change.DISPLAYS
        return None

    def warnings_sorted(self) -> list[ActiveWarning]:
        """Warnings in force, most severe first, then by end."""

        def rank(w: ActiveWarning) -> int:
            sev = w.severity
            return WARNING_SEVERITIES.index(sev) if sev in WARNING_SEVERITIES else len(WARNING_SEVERITIES)

        return sorted(self.warnings, key=lambda w: (rank(w), w.end or 0.0, w.id))

    def guidance_for(self, sign_id: str) -> Recommendation | None:
        """The guidance recommendation for one sign (None: no guidance for it)."""
        if self.guidance is None:
            return None
        return next((r for r in self.guidance.recommendations if r.sign_id == sign_id), None)

    def displays_summary(self) -> DisplaysSummary:
        """Displays by connectivity, warnings in force, car parks whose number is stale."""
        return DisplaysSummary(
            online=sum(1 for d in self.displays.values() if d.online),
            total=len(self.displays),
            warnings=len(self.warnings),
            car_parks=len(self.parking),
            stale=sum(1 for p in self.parking.values() if not p.fresh),
        )


# ----- tables ------------------------------------------------------------------------------------

DISPLAY_COLUMNS = (
    Column("Display", 8),
    Column("Online", 7),
    Column("Bright", 6),
    Column("Pixel faults", 6),
    Column("Shows now"),
)
PARKING_COLUMNS = (
    Column("Car park", 10),
    Column("Name", 18),
    Column("Free/cap.", 9),
    Column("Open", 6),
    Column("Number"),
)


def online_word(online: bool | None) -> Text:
    if online is None:
        return Text("unknown")
    return Text("online") if online else Text("OFFLINE", "bold magenta")


def describe_display(d: DisplayState) -> str:
    """`online, shows: P1 FREI 42` in one phrase."""
    word = {True: "online", False: "OFFLINE", None: "online unknown"}[d.online]
    return f"{word}, shows: {shown_text(d.shown) or '(blank)'}"


def display_row(d: DisplayState, rec: Recommendation | None) -> Row:
    """A display as a displays table row (with the guidance behind it, if any)."""
    shows = Text(shown_text(d.shown) or "(blank)", "" if d.shown.strip() else "dim")
    if rec is not None and rec.car_park:
        shows.append(f"  [guides to {rec.car_park}]", "dim")
    faults = d.pixel_faults
    return Row(
        key=d.device_id,
        cells=(
            d.device_id,
            online_word(d.online),
            "-" if d.brightness is None else f"{d.brightness:.0f} %",
            Text(fmt_num(faults), "bold red" if faults else ""),
            shows,
        ),
        sort=(
            d.device_id,
            {True: "online", False: "OFFLINE", None: "unknown"}[d.online],
            d.brightness,
            None if faults is None else float(faults),
            shown_text(d.shown) or None,
        ),
    )


def parking_row(p: ParkingState) -> Row:
    """A car park as a car parks table row; a stale number says so in words."""
    free = "-" if p.free is None else str(p.free)
    opened = {True: "open", False: "CLOSED", None: "-"}[p.open]
    return Row(
        key=p.car_park,
        cells=(
            p.car_park,
            p.name,
            f"{free}/{p.capacity}",
            opened,
            Text("fresh") if p.fresh else Text("STALE (not shown)", "bold red"),
        ),
        sort=(
            p.car_park,
            p.name,
            None if p.free is None else float(p.free),
            opened,
            "fresh" if p.fresh else "STALE",
        ),
    )


def warnings_text(warnings: list[ActiveWarning], tz: tzinfo | None) -> Text:
    """The warnings in force: severity, lines, until when."""
    out = Text("Active warnings\n", "bold")
    if not warnings:
        out.append("none\n", "italic")
    for w in warnings:
        style = (
            "bold red" if w.severity in ("extreme", "severe") else "bold" if w.severity == "warning" else ""
        )
        out.append(f"{w.severity.upper():<8}", style)
        out.append(f" {' / '.join(w.lines)}  until {fmt_time(w.end, tz)}")
        where = ", ".join(w.displays) if w.displays else "area/all"
        out.append(f"  ({w.id}; {where})\n", "dim")
    return out


def overview_lines(out: Text, model: DisplaysModel) -> None:
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


# ----- the pane ----------------------------------------------------------------------------------


class DisplaysView(DomainView):
    """The Displays view: displays, car parks, the warnings in force; m and c act on the display."""

    id = "displays"
    title = "Displays"
    shows = frozenset({Change.DISPLAYS})
    palette = (
        PaletteAction(
            "Put a message on a display", "up to 3 lines, for a while (m)", "display_message", "displays"
        ),
        PaletteAction(
            "Clear a display's message", "back to warnings or guidance (c)", "clear_display", "displays"
        ),
    )

    @classmethod
    def overview_lines(cls, out: Text, model: SiteModel, tz: tzinfo | None) -> None:
        overview_lines(out, model)

    @classmethod
    def palette_devices(cls, model: SiteModel) -> Iterator[PaletteDevice]:
        for did in model.displays:
            yield PaletteDevice(f"Display {did}", "what it shows now", cls.id, did)

    tables = ("#display-table", "#parking-table")
    commands = (
        Command("m", "display_message", "Message"),
        Command("c", "clear_display", "Clear msg"),
    )
    exclusive = True
    slice = DisplaysModel
    css = """
#displays { height: 1fr; }
#display-table { height: 2fr; }
#parking-table { height: 1fr; }
#warnings { height: auto; max-height: 6; border-top: solid $secondary; }
"""

    def compose(self) -> ComposeResult:
        with Vertical(id="displays"):
            yield FilterTable(DISPLAY_COLUMNS, "displays", id="display-table", hint="e.g. 'offline'")
            yield FilterTable(PARKING_COLUMNS, "car parks", id="parking-table", hint="e.g. 'STALE'")
            yield Static("", id="warnings")

    def show(self, ctx: ShowContext) -> None:
        """Hand both tables their rows and the warnings line its text."""
        model, root = ctx.model, ctx.root
        root.query_one("#display-table", FilterTable).show(
            [display_row(d, model.guidance_for(d.device_id)) for _, d in sorted(model.displays.items())]
        )
        root.query_one("#parking-table", FilterTable).show(
            [parking_row(p) for _, p in sorted(model.parking.items())]
        )
        root.query_one("#warnings", Static).update(warnings_text(model.warnings_sorted(), ctx.tz))

    def command(self, action: str, host: Host) -> None:
        did = host.selected(self.tables[0])
        if did is None or did not in host.model.displays:
            host.say(Text("No display selected: nothing to do.", "italic"))
            return
        d, base = host.model.displays[did], host.model.base
        if action == "clear_display":
            host.confirm_then_send(clear_request(base, d))
            return
        ask_then_send(
            host, MessageDialog(d.device_id, describe_display(d)), partial(message_request, base), "message"
        )


# ----- the message form --------------------------------------------------------------------------

MAX_LINE = 40


@dataclass(frozen=True, slots=True)
class DisplayMessageForm:
    """What the operator filled in to put a message on a display."""

    display: str
    lines: tuple[str, ...]
    duration_s: float | None = None


def parse_lines(texts: Sequence[str]) -> tuple[str, ...]:
    """The message lines from the form (empty lines dropped); ValueError says what is wrong."""
    lines = tuple(t.strip() for t in texts if t.strip())
    if not lines:
        raise ValueError("message: enter at least one line")
    for i, line in enumerate(lines, 1):
        if len(line) > MAX_LINE:
            raise ValueError(f"line {i}: at most {MAX_LINE} characters")
    return lines


class MessageDialog(FormDialog[DisplayMessageForm]):
    """Ask for up to three lines and a duration for one display."""

    FIELDS = (
        *(FormField(f"line{i}", f"Line {i}:", f"up to {MAX_LINE} characters") for i in range(1, 4)),
        FormField("duration", "Duration (minutes):", "empty: 60 min"),
    )
    SET_LABEL = "Show…"

    def __init__(self, display: str, detail: str = "") -> None:
        super().__init__(f"Message on display {display}", detail)
        self._display = display

    def parse(self, values: dict[str, str]) -> DisplayMessageForm:
        lines = parse_lines([values[f"line{i}"] for i in range(1, 4)])
        return DisplayMessageForm(self._display, lines, parse_duration_min(values["duration"]))


# ----- commands ----------------------------------------------------------------------------------


def _topic(base: str, did: str) -> str:
    return f"{base}/cmd/displays/{did}"


def message_request(base: str, form: DisplayMessageForm) -> Request:
    """Put an operator message on a display, as filled in on the message form."""
    topic = _topic(base, form.display)
    payload: dict[str, object] = {"action": "message", "lines": list(form.lines)}
    if form.duration_s is not None:
        payload["duration_s"] = form.duration_s
        until = f"for {form.duration_s / 60:g} min"
    else:
        until = "for 60 min (the daemon's default)"
    text = " / ".join(form.lines)
    what = (
        f"Show on display {form.display} {until}:\n  {text}\n"
        "An operator message outranks warnings and guidance until it ends or you clear it (c).\n"
        f"Request: {topic}"
    )
    return Request(what, topic, payload, f"message on {form.display}")


def clear_request(base: str, d: DisplayState) -> Request:
    """End the operator message on a display."""
    topic = _topic(base, d.device_id)
    what = (
        f"Clear the operator message on display {d.device_id}.\n"
        "It goes back to warnings or guidance (or blank).\n"
        f"Request: {topic}"
    )
    return Request(what, topic, {"action": "clear"}, f"clear {d.device_id}")
