"""The shared part of every domain: alarms (open ones, their history, acknowledging one).

Every domain raises alarms through the same topics (`alarms/active/...`, `alarms/events`,
`alarms/history`), so this slice and its view serve them all.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import tzinfo
from typing import TYPE_CHECKING

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical

from edge.payloads import AlarmHistory, AlarmMessage
from tui.format import fmt_time
from tui.screens import FormDialog, FormField
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
)
from tui.widgets import Column, FilterTable, Row

SEVERITIES = ("critical", "major", "minor", "warning")
SEVERITY_STYLE = {"critical": "bold red reverse", "major": "bold red", "minor": "yellow", "warning": "cyan"}
MAX_EVENTS = 200

if TYPE_CHECKING:
    from tui.model import SiteModel


def alarm_event(alarm: AlarmMessage) -> str:
    """What an alarm message says happened: `raised`, `acked` (active and acknowledged) or `cleared`."""
    if not alarm.active:
        return "cleared"
    return "acked" if alarm.acked else "raised"


def alarm_event_ts(alarm: AlarmMessage) -> float:
    """When that happened: the ack's time for an acknowledgement, else the message's."""
    if alarm.active and alarm.acked and alarm.ack_ts is not None:
        return alarm.ack_ts
    return alarm.ts


def severity_rank(severity: str) -> int:
    """0 for the most severe; unknown severities sort last."""
    try:
        return SEVERITIES.index(severity)
    except ValueError:
        return len(SEVERITIES)


# ----- the model slice ---------------------------------------------------------------------------


@dataclass(kw_only=True)
class AlarmsModel(Slice):
    """Open alarms by (device, code) and the latest alarm events, newest first."""

    active_alarms: dict[tuple[str, str], AlarmMessage] = field(default_factory=dict)
    events: deque[AlarmMessage] = field(default_factory=lambda: deque(maxlen=MAX_EVENTS))

    def fold(self, parts: list[str], payload: bytes) -> Change | None:
        """Fold an `alarms/...` message (None: not an alarm topic)."""
        match parts:
            case ["alarms", "events"]:
                alarm = AlarmMessage.model_validate_json(payload)
                if any(e.event_id == alarm.event_id for e in self.events):
                    return Change.IGNORED  # a QoS 1 redelivery of a transition already shown
                self.events.appendleft(alarm)
                key = (alarm.device_id, alarm.code)
                if alarm.active:
                    self.active_alarms[key] = alarm
                else:
                    self.active_alarms.pop(key, None)
                return Change.ALARM
            case ["alarms", "history"]:
                # The daemon's own record (raises, acks, clears) replaces what this client saw
                # live: it also covers the time before the dashboard connected.
                history = AlarmHistory.model_validate_json(payload) if payload else None
                self.events = deque(history.events if history else (), maxlen=MAX_EVENTS)
                return Change.ALARM
            case ["alarms", "active", device_id, code]:
                if not payload:
                    self.active_alarms.pop((device_id, code), None)
                else:
                    alarm = AlarmMessage.model_validate_json(payload)
                    if alarm.active:
                        self.active_alarms[(device_id, code)] = alarm
                    else:
                        self.active_alarms.pop((device_id, code), None)
                return Change.ALARM
        return None

    def alarm_counts(self) -> Counter[str]:
        """Open alarms by severity."""
        return Counter(a.severity for a in self.active_alarms.values())

    def unacked(self) -> int:
        """Open alarms nobody has acknowledged yet."""
        return sum(1 for a in self.active_alarms.values() if not a.acked)

    def alarms_sorted(self) -> list[AlarmMessage]:
        """Open alarms, most severe first, then newest first."""
        return sorted(
            self.active_alarms.values(), key=lambda a: (severity_rank(a.severity), -a.ts, a.device_id)
        )


# ----- tables ------------------------------------------------------------------------------------

ALARM_COLUMNS = (
    Column("Severity", 8),
    Column("Device", 9),
    Column("Code", 16),
    Column("Since", 5),
    Column("Ack", 9),
    Column("Detail / ack comment"),
)
HISTORY_COLUMNS = (
    Column("Time", 8),
    Column("Event", 7),
    Column("Severity", 8),
    Column("Device", 9),
    Column("Code", 16),
    Column("Detail / who and why"),
)
EVENT_WORD = {"raised": ("RAISED", "bold"), "acked": ("acked", ""), "cleared": ("cleared", "dim")}


def alarm_row(a: AlarmMessage, tz: tzinfo | None) -> Row:
    """An open alarm as an alarms table row; an unacknowledged one says so in words."""
    acked = Text(a.acked_by or "?", "dim") if a.acked else Text("UNACKED", "bold")
    note = f"{a.detail} · ack: {a.ack_comment}" if a.acked else a.detail
    return Row(
        key=f"{a.device_id}/{a.code}",
        cells=(
            Text(a.severity, SEVERITY_STYLE.get(a.severity, "")),
            a.device_id,
            a.code,
            fmt_time(a.ts, tz),
            acked,
            note,
        ),
        sort=(float(severity_rank(a.severity)), a.device_id, a.code, a.ts, acked.plain, note or None),
    )


def history_row(index: int, a: AlarmMessage, tz: tzinfo | None) -> Row:
    """One alarm event (raised, acknowledged, cleared) as a history table row."""
    kind = alarm_event(a)
    word, style = EVENT_WORD[kind]
    ts = alarm_event_ts(a)
    note = f"by {a.acked_by}: {a.ack_comment}" if kind == "acked" else a.detail
    return Row(
        key=str(index),
        cells=(
            fmt_time(ts, tz, seconds=True),
            Text(word, style),
            Text(a.severity, SEVERITY_STYLE.get(a.severity, "")),
            a.device_id,
            a.code,
            note,
        ),
        sort=(-ts, kind, float(severity_rank(a.severity)), a.device_id, a.code, note or None),
    )


# ----- the pane ----------------------------------------------------------------------------------


class AlarmsView(DomainView):
    """The Alarms view: open alarms above, the history below; a acknowledges the open alarm."""

    id = "alarms"
    title = "Alarms"
    shows = frozenset({Change.ALARM})
    palette = (
        PaletteAction(
            "Acknowledge an alarm", "the selected open alarm, with a comment (a)", "ack_alarm", "alarms"
        ),
    )

    @classmethod
    def palette_devices(cls, model: SiteModel) -> Iterator[PaletteDevice]:
        for (dev, code), a in model.active_alarms.items():
            yield PaletteDevice(f"Alarm {code} on {dev}", a.severity, cls.id, f"{dev}/{code}")

    tables = ("#alarm-table", "#alarm-history")
    commands = (Command("a", "ack_alarm", "Ack"),)
    slice = AlarmsModel
    css = """
#alarms { height: 1fr; }
#alarm-table { height: 1fr; }
#alarm-history { height: 1fr; border-top: solid $secondary; }
"""

    def compose(self) -> ComposeResult:
        with Vertical(id="alarms"):
            yield FilterTable(ALARM_COLUMNS, "open alarms", id="alarm-table", hint="e.g. 'major unacked'")
            yield FilterTable(HISTORY_COLUMNS, "alarm events", id="alarm-history", hint="e.g. 'acked alice'")

    def show(self, ctx: ShowContext) -> None:
        """Hand both tables their rows."""
        model, root, tz = ctx.model, ctx.root, ctx.tz
        root.query_one("#alarm-table", FilterTable).show([alarm_row(a, tz) for a in model.alarms_sorted()])
        root.query_one("#alarm-history", FilterTable).show(
            [history_row(i, a, tz) for i, a in enumerate(model.events)]
        )

    def command(self, action: str, host: Host) -> None:
        alarm = selected_alarm(host.model, host.selected(self.tables[0]))
        if alarm is None:
            host.say(Text("No open alarm selected: nothing to acknowledge.", "italic"))
            return

        ask_then_send(
            host,
            AckDialog(alarm.device_id, alarm.code, ack_detail(alarm, host.tz)),
            lambda form: ack_request(
                host.model.base, form.device, form.code, form.comment, host.operator_name
            ),
            "ack",
        )


# ----- the ack form ------------------------------------------------------------------------------

MAX_COMMENT = 500


@dataclass(frozen=True, slots=True)
class AlarmAckForm:
    """What the operator filled in to acknowledge an alarm."""

    device: str
    code: str
    comment: str


def parse_comment(text: str) -> str:
    """The ack comment from the form; ValueError says what is wrong."""
    comment = " ".join(text.split())
    if not comment:
        raise ValueError("comment: say what is being done about it")
    if len(comment) > MAX_COMMENT:
        raise ValueError(f"comment: at most {MAX_COMMENT} characters")
    return comment


class AckDialog(FormDialog[AlarmAckForm]):
    """Ask for the comment that goes with acknowledging one alarm."""

    DEFAULT_CSS = """
    AckDialog .field Label { width: 10; }
    """
    FIELDS = (FormField("comment", "Comment:", "what is being done, e.g. crew sent"),)
    SET_LABEL = "Acknowledge…"

    def __init__(self, device: str, code: str, detail: str = "") -> None:
        super().__init__(f"Acknowledge {code} on {device}", detail)
        self._device = device
        self._code = code

    def parse(self, values: dict[str, str]) -> AlarmAckForm:
        return AlarmAckForm(self._device, self._code, parse_comment(values["comment"]))


# ----- commands ----------------------------------------------------------------------------------


def selected_alarm(model: AlarmsModel, key: str | None) -> AlarmMessage | None:
    """The open alarm under the cursor (`device/code`), if it is still open."""
    return next((a for a in model.alarms_sorted() if f"{a.device_id}/{a.code}" == key), None)


def ack_detail(alarm: AlarmMessage, tz: tzinfo | None) -> str:
    """What the ack form shows about the alarm."""
    detail = f"{alarm.severity}, since {fmt_time(alarm.ts, tz)}: {alarm.detail or '-'}"
    if alarm.acked:
        detail += f"\nAlready acknowledged by {alarm.acked_by}: {alarm.ack_comment}"
    return detail


def ack_request(base: str, device: str, code: str, comment: str, by: str) -> Request:
    """Acknowledge one alarm with a comment, recorded as `by`."""
    topic = f"{base}/cmd/alarms/ack"
    payload: dict[str, object] = {
        "action": "ack",
        "device": device,
        "code": code,
        "comment": comment,
        "by": by,
    }
    what = (
        f"Acknowledge {code} on {device} as {by}:\n  {comment}\n"
        "The alarm stays open until its cause clears; everyone sees who acknowledged it and why.\n"
        f"Request: {topic}"
    )
    return Request(what, topic, payload, f"ack {code} on {device}")
