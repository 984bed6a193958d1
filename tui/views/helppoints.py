"""Help points: emergency calls from the lamp posts (acknowledge, note, close) and the help points.

A call nobody has seen yet must not wait for the operator to open this view: the fold of a new
open incident raises an `Interrupt` (the app rings, opens this view on the call) and `alert`
keeps a line on every page while any call is unacknowledged. The Map draws each help point over
its post (`map_marks`) and names the calls and the unavailable ones under the district (`map_notes`).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import tzinfo
from typing import TYPE_CHECKING, Literal

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static

from edge.payloads_safety import Escalation, HelpPointState, IncidentMessage
from tui.format import fmt_time
from tui.screens import FormDialog, FormField
from tui.views.base import (
    Change,
    Command,
    DomainView,
    Host,
    Interrupt,
    PaletteAction,
    PaletteDevice,
    Request,
    ShowContext,
    Slice,
    ask_then_send,
    fold_state,
)
from tui.widgets import Column, FilterTable, Row

if TYPE_CHECKING:
    from tui.model import SiteModel

MAX_LOG = 50  # incident events kept for the pane's log
VIEW_ID = "helppoints"
INCIDENT_TABLE = "#incident-table"
STATUS_RANK = {"open": 0, "acknowledged": 1, "closed": 2}

IncidentAction = Literal["ack", "note", "close"]
COMMAND_ACTIONS: dict[str, IncidentAction] = {
    "ack_incident": "ack",
    "note_incident": "note",
    "close_incident": "close",
}


# ----- the model slice ---------------------------------------------------------------------------


@dataclass(kw_only=True)
class HelpPointsModel(Slice):
    """Help points, the calls still open (retained until closed), escalations, the latest events."""

    helppoints: dict[str, HelpPointState] = field(default_factory=dict)
    incidents: dict[str, IncidentMessage] = field(default_factory=dict)
    escalations: dict[str, Escalation] = field(default_factory=dict)
    incident_log: deque[IncidentMessage] = field(default_factory=lambda: deque(maxlen=MAX_LOG))
    seen_incidents: set[str] = field(default_factory=set)  # every call this dashboard has shown

    def fold(self, parts: list[str], payload: bytes) -> Change | None:
        """Fold a `helppoints/...` message (None: not one of its topics)."""
        match parts:
            case ["helppoints", "incidents", incident_id]:
                if not payload:  # closed: the daemon emptied the retained call
                    self.incidents.pop(incident_id, None)
                else:
                    self._take(IncidentMessage.model_validate_json(payload))
                return Change.HELPPOINTS
            case ["helppoints", "events"]:
                inc = IncidentMessage.model_validate_json(payload)
                if inc in self.incident_log:
                    return Change.IGNORED  # a redelivery of a change already shown
                self.incident_log.appendleft(inc)
                self._take(inc)
                return Change.HELPPOINTS
            case ["helppoints", "escalations", target]:
                if payload:
                    self.escalations[target] = Escalation.model_validate_json(payload)
                else:
                    self.escalations.pop(target, None)
                return Change.HELPPOINTS
            case ["helppoints", helppoint, "state"]:
                fold_state(self.helppoints, helppoint, payload, HelpPointState)
                return Change.HELPPOINTS
        return None

    def _take(self, inc: IncidentMessage) -> None:
        """An incident's newest record: kept while not closed; a call never seen before interrupts."""
        new = inc.id not in self.seen_incidents
        self.seen_incidents.add(inc.id)
        if inc.status == "closed":
            self.incidents.pop(inc.id, None)
            return
        self.incidents[inc.id] = inc
        if new and inc.status == "open":
            self.interrupts.append(Interrupt(VIEW_ID, INCIDENT_TABLE, inc.id, call_place(inc)))

    def incidents_sorted(self) -> list[IncidentMessage]:
        """Open calls first, then acknowledged ones; the oldest first within each."""
        return sorted(self.incidents.values(), key=lambda i: (STATUS_RANK[i.status], i.opened_at, i.id))

    def unacked_incidents(self) -> list[IncidentMessage]:
        """Calls nobody has acknowledged yet, oldest first."""
        return [i for i in self.incidents_sorted() if i.status == "open"]


def call_place(inc: IncidentMessage) -> str:
    """Where a call comes from, as the operator tells the crew: street, post, help point."""
    return f"{inc.street}, post {inc.post} (help point {inc.helppoint}, call {inc.id})"


# ----- tables ------------------------------------------------------------------------------------

INCIDENT_COLUMNS = (
    Column("Status", 6),
    Column("Incident", 12),
    Column("Help point", 8),
    Column("Street (post)"),
    Column("Age", 6),
    Column("Presses", 7),
    Column("Acked by", 9),
    Column("Escalated", 9),
)
HELPPOINT_COLUMNS = (
    Column("Help point", 10),
    Column("Available", 11),
    Column("Self-test", 14),
    Column("Battery", 7),
    Column("Street (post)"),
    Column("Call", 16),
)


def fmt_age(seconds: float) -> str:
    """`45 s`, `12 min`, `3 h 05`: how long a call has waited, at a glance."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    return f"{s // 3600} h {s % 3600 // 60:02d}"


def incident_row(inc: IncidentMessage, tz: tzinfo | None, now: float) -> Row:
    """A call as an incidents table row; an unacknowledged one is loud, in words too."""
    status = Text("OPEN", "bold red reverse") if inc.status == "open" else Text("acked")
    if inc.caller_cancelled:  # the caller pressed cancel: still a call until someone closes it
        status.append(" (cancelled)", "dim")
    escalated = Text(fmt_time(inc.escalated_at, tz), "bold red") if inc.escalated_at else Text("-")
    age = now - inc.opened_at
    place = f"{inc.street} ({inc.post})"
    return Row(
        key=inc.id,
        cells=(
            status,
            inc.id,
            inc.helppoint,
            place,
            fmt_age(age),
            str(inc.presses),
            inc.acked_by or "-",
            escalated,
        ),
        sort=(
            float(STATUS_RANK[inc.status]),
            inc.id,
            inc.helppoint,
            place,
            -inc.opened_at,
            float(inc.presses),
            inc.acked_by,
            inc.escalated_at,
        ),
    )


def helppoint_row(hp: HelpPointState) -> Row:
    """A help point as a help points table row: can it take a call, does it work, its open call."""
    available = Text("available") if hp.online else Text("UNAVAILABLE", "bold magenta")
    test = {True: Text("FAILED", "bold red"), False: Text("ok"), None: Text("-")}[hp.selftest_failed]
    if hp.tamper:
        test.append(" TAMPER", "bold red")
    call = Text(hp.incident or "-")
    if hp.pressed:
        call.append(" PRESSED", "bold")
    place = f"{hp.street or '-'} ({hp.post or '-'})"
    return Row(
        key=hp.device_id,
        cells=(
            hp.device_id,
            available,
            test,
            "-" if hp.battery is None else f"{hp.battery:.0f} %",
            place,
            call,
        ),
        sort=(hp.device_id, available.plain, test.plain, hp.battery, place, hp.incident),
    )


def side_text(model: HelpPointsModel, tz: tzinfo | None) -> Text:
    """Escalations in force and the latest changes of calls, under the tables."""
    out = Text()
    for esc in sorted(model.escalations.values(), key=lambda e: e.target):
        if esc.incidents:
            out.append("ESCALATED ", "bold red")
            out.append(
                f"to {esc.target} at {fmt_time(esc.ts, tz)}: {', '.join(i.id for i in esc.incidents)}\n"
            )
    out.append("Latest changes\n", "bold")
    if not model.incident_log:
        out.append("none\n", "italic")
    for inc in list(model.incident_log)[:5]:
        when = inc.closed_at or inc.acked_at or inc.opened_at
        who = inc.closed_by or inc.acked_by or "caller"
        note = f" · {inc.close_comment}" if inc.close_comment else ""
        out.append(f"{fmt_time(when, tz, seconds=True)} {inc.id} {inc.status} by {who}{note}\n")
    return out


def overview_lines(out: Text, model: HelpPointsModel) -> None:
    """The Overview's Help points line: calls open and unacknowledged, help points unavailable."""
    out.append(f"{'Help points':<12}", "bold")
    if not model.helppoints and not model.incidents:
        out.append("no help points reported\n", "italic")
        return
    unacked = len(model.unacked_incidents())
    out.append(f"{len(model.incidents)} call{'s' if len(model.incidents) != 1 else ''} open")
    if unacked:
        out.append(f" ({unacked} NOT ACKNOWLEDGED)", "bold red")
    down = sum(1 for h in model.helppoints.values() if not h.online)
    failed = sum(1 for h in model.helppoints.values() if h.selftest_failed)
    out.append(f" · {len(model.helppoints) - down}/{len(model.helppoints)} available")
    if failed:
        out.append(f" · {failed} self-test FAILED", "bold red")
    out.append("\n")


# ----- on the district map ----------------------------------------------------------------------

MapKind = Literal["call", "unavailable", "available"]
# kind -> (symbol, style), most urgent first: a cell with several help points shows the first kind.
MAP_SYMBOL: dict[MapKind, tuple[str, str]] = {
    "call": ("H", "bold red reverse"),
    "unavailable": ("!", "bold red"),
    "available": ("+", "bold cyan"),
}
MAP_LEGEND: dict[MapKind, str] = {"available": "help point", "unavailable": "unavailable", "call": "call"}


@dataclass(frozen=True, slots=True)
class MapMark:
    """A help point as the district map draws it: where (its own position, else its call's, else
    the post's in the inventory), what it shows, and how it is named under the map."""

    id: str
    kind: MapKind
    lat: float | None
    lon: float | None
    post: str | None
    place: str  # "Hohe Straße, post L0042"
    unavailable: bool
    call: str | None  # its open call: "inc-0001 NOT ACKNOWLEDGED"


def map_marks(model: HelpPointsModel) -> list[MapMark]:
    """Every help point the model knows (by its state or by a call), in id order."""
    calls: dict[str, IncidentMessage] = {}
    for open_call in model.incidents_sorted():  # open before acknowledged: the first one wins
        calls.setdefault(open_call.helppoint, open_call)
    marks = []
    for hid in sorted(model.helppoints.keys() | calls.keys()):
        hp, inc = model.helppoints.get(hid), calls.get(hid)
        unavailable = hp is not None and not hp.online
        call = None
        if inc is not None:
            call = f"{inc.id} {'NOT ACKNOWLEDGED' if inc.status == 'open' else 'acknowledged'}"
        elif hp is not None and hp.incident:  # its state names a call not received yet
            call = hp.incident
        lat, lon = (hp.lat, hp.lon) if hp is not None else (None, None)
        if (lat is None or lon is None) and inc is not None:
            lat, lon = inc.lat, inc.lon
        post = (hp.post if hp is not None else None) or (inc.post if inc is not None else None)
        street = (hp.street if hp is not None else None) or (inc.street if inc is not None else None)
        kind: MapKind = "call" if call else "unavailable" if unavailable else "available"
        place = f"{street or '-'}, post {post or '-'}"
        marks.append(MapMark(hid, kind, lat, lon, post, place, unavailable, call))
    return marks


def map_notes(marks: list[MapMark], width: int) -> list[Text]:
    """The lines under the map: the calls, then the help points unavailable, each listed while
    the line has room (then how many more), so the map keeps its height."""
    out = []
    calls = [(m.id, f"{m.place}; {m.call}") for m in marks if m.call]
    down = [(m.id, m.place) for m in marks if m.unavailable]
    for head, style, items in (
        ("emergency call: ", "bold red", calls),
        ("help point unavailable: ", "bold red", down),
    ):
        if items:
            out.append(_listed(head, style, [f"{i} ({p})" for i, p in items], width))
    return out


def _listed(head: str, style: str, items: list[str], width: int) -> Text:
    """`head` then as many `items` as fit in `width`, and `+N more` (see the Help points view)."""
    line = Text(head, style)
    for n, item in enumerate(items):
        rest = len(items) - n - 1
        more = f", +{rest} more" if rest else ""
        sep = ", " if n else ""
        if n and line.cell_len + len(sep) + len(item) + len(more) > width:
            line.append(f", +{len(items) - n} more")
            break
        line.append(sep + item)
    line.truncate(width, overflow="ellipsis")  # one call too long for the line: cut, not wrapped
    return line


# ----- the pane ----------------------------------------------------------------------------------


class HelpPointsView(DomainView):
    """The Help points view: calls (a acknowledge, n note, c close), then the help points."""

    id = VIEW_ID
    title = "Help points"
    shows = frozenset({Change.HELPPOINTS})
    palette = (
        PaletteAction("Acknowledge an emergency call", "the selected call (a)", "ack_incident", VIEW_ID),
        PaletteAction("Add a note to an emergency call", "the selected call (n)", "note_incident", VIEW_ID),
        PaletteAction("Close an emergency call", "with what happened (c)", "close_incident", VIEW_ID),
    )
    tables = (INCIDENT_TABLE, "#helppoint-table")
    commands = (
        Command("a", "ack_incident", "Ack call"),
        Command("n", "note_incident", "Note"),
        Command("c", "close_incident", "Close call"),
    )
    exclusive = True
    ticks = True
    slice = HelpPointsModel
    css = """
#helppoints { height: 1fr; }
#incident-table { height: 1fr; min-height: 6; }
#helppoint-table { height: 1fr; border-top: solid $secondary; }
#incident-log { height: auto; max-height: 8; border-top: solid $secondary; }
"""

    def __init__(self) -> None:
        self.clock: Callable[[], float] = time.time  # the age of a call is wall-clock time

    @classmethod
    def overview_lines(cls, out: Text, model: SiteModel, tz: tzinfo | None) -> None:
        overview_lines(out, model)

    @classmethod
    def palette_devices(cls, model: SiteModel) -> Iterator[PaletteDevice]:
        for inc in model.incidents_sorted():
            yield PaletteDevice(f"Call {inc.id}", f"{inc.street}, post {inc.post}", cls.id, inc.id)
        for hid, hp in model.helppoints.items():
            yield PaletteDevice(
                f"Help point {hid}",
                f"{hp.street or '-'}, post {hp.post or '-'}",
                cls.id,
                hid,
                "#helppoint-table",
            )

    @classmethod
    def alert(cls, model: SiteModel, tz: tzinfo | None) -> Text | None:
        unacked = model.unacked_incidents()
        if not unacked:
            return None
        first = unacked[0]
        out = Text("EMERGENCY CALL ", "bold")
        out.append(f"at {call_place(first)}, since {fmt_time(first.opened_at, tz)}")
        if len(unacked) > 1:
            out.append(f" (+{len(unacked) - 1} more)")
        out.append(" — not acknowledged: press a on the Help points view")
        return out

    def compose(self) -> ComposeResult:
        with Vertical(id=self.id):
            yield FilterTable(INCIDENT_COLUMNS, "calls", id="incident-table", hint="e.g. 'open'")
            yield FilterTable(
                HELPPOINT_COLUMNS, "help points", id="helppoint-table", hint="e.g. 'unavailable'"
            )
            yield Static("", id="incident-log")

    def show(self, ctx: ShowContext) -> None:
        """Hand both tables their rows and the log its lines."""
        model, root, tz = ctx.model, ctx.root, ctx.tz
        now = self.clock()
        root.query_one(INCIDENT_TABLE, FilterTable).show(
            [incident_row(i, tz, now) for i in model.incidents_sorted()]
        )
        root.query_one("#helppoint-table", FilterTable).show(
            [helppoint_row(h) for _, h in sorted(model.helppoints.items())]
        )
        root.query_one("#incident-log", Static).update(side_text(model, tz))

    def command(self, action: str, host: Host) -> None:
        inc = host.model.incidents.get(host.selected(self.tables[0]) or "")
        if inc is None:
            host.say(Text("No call selected: nothing to do.", "italic"))
            return
        kind = COMMAND_ACTIONS[action]
        if kind == "ack" and inc.status != "open":
            host.say(Text(f"{inc.id} is already acknowledged by {inc.acked_by}: add a note (n).", "italic"))
            return
        base, by = host.model.base, host.operator_name
        ask_then_send(
            host,
            DIALOGS[kind](kind, inc, host.tz),
            lambda comment: incident_request(base, kind, inc, comment, by),
            ACTION_WORDS[kind][1],
        )


# ----- the comment form --------------------------------------------------------------------------

MAX_COMMENT = 500
# action -> (what the form asks, the command's short name, what the daemon then does)
ACTION_WORDS: dict[IncidentAction, tuple[str, str, str]] = {
    "ack": (
        "Acknowledge",
        "ack call",
        "The escalation stops; the lamps stay at 100 % until the call is closed.",
    ),
    "note": ("Add a note to", "note", "The note goes into the call's record."),
    "close": (
        "Close",
        "close call",
        "The lamps around the post go back to their plan and the display notice ends.",
    ),
}


def parse_incident_comment(action: IncidentAction, text: str) -> str:
    """The comment from the form: optional for an ack (speed first), required for a note or close."""
    comment = " ".join(text.split())
    if not comment and action != "ack":
        raise ValueError("comment: say what happened" if action == "close" else "comment: enter the note")
    if len(comment) > MAX_COMMENT:
        raise ValueError(f"comment: at most {MAX_COMMENT} characters")
    return comment


def incident_detail(inc: IncidentMessage, tz: tzinfo | None) -> str:
    """What the form shows about the call."""
    detail = f"{inc.street}, post {inc.post}; {inc.status} since {fmt_time(inc.opened_at, tz)}"
    detail += f", {inc.presses} press{'es' if inc.presses != 1 else ''}"
    if inc.acked_by:
        detail += f"\nAcknowledged by {inc.acked_by}"
    if inc.notes:
        last = inc.notes[-1]
        detail += f"\nLast note ({last.by}): {last.text}"
    return detail


class IncidentDialog(FormDialog[str]):
    """Ask for the comment of an ack (may stay empty), a note or a close (both need one)."""

    DEFAULT_CSS = """
    IncidentDialog .field Label { width: 10; }
    """
    FIELDS = (FormField("comment", "Comment:", "e.g. police on the way"),)

    def __init__(self, action: IncidentAction, inc: IncidentMessage, tz: tzinfo | None) -> None:
        super().__init__(f"{ACTION_WORDS[action][0]} call {inc.id}", incident_detail(inc, tz))
        self._action = action

    def parse(self, values: dict[str, str]) -> str:
        return parse_incident_comment(self._action, values["comment"])


class AckCallDialog(IncidentDialog):
    SET_LABEL = "Acknowledge…"


class NoteCallDialog(IncidentDialog):
    SET_LABEL = "Add note…"


class CloseCallDialog(IncidentDialog):
    SET_LABEL = "Close…"


DIALOGS: dict[IncidentAction, type[IncidentDialog]] = {
    "ack": AckCallDialog,
    "note": NoteCallDialog,
    "close": CloseCallDialog,
}


# ----- commands ----------------------------------------------------------------------------------


def incident_request(
    base: str, action: IncidentAction, inc: IncidentMessage, comment: str, by: str
) -> Request:
    """Acknowledge, note or close one call, recorded as `by`."""
    topic = f"{base}/cmd/helppoints/incidents/{inc.id}"
    payload: dict[str, object] = {"action": action, "comment": comment, "by": by}
    verb, short, effect = ACTION_WORDS[action]
    what = (
        f"{verb} emergency call {inc.id} at {inc.street}, post {inc.post} as {by}:\n"
        f"  {comment or '(no comment)'}\n{effect}\nRequest: {topic}"
    )
    return Request(what, topic, payload, f"{short} {inc.id}")
