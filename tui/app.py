"""The operator dashboard (Textual): a client of the MQTT API, for one site.

Data flows one way: the MQTT worker (`tui.client`) posts `MqttEvent` messages up to the
app, the app folds them into its `SiteModel` and hands the visible view plain rows or a
render function (attributes down). Commands go through a `Requester` (the client, or a
fake in tests) in a worker, after a confirmation dialog; the answer lands on the command
line above the footer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import tzinfo
from typing import ClassVar, Literal

from rich.text import Text
from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import ContentSwitcher, Footer, Static

from edge.payloads import Ack, AlarmMessage
from tui import render
from tui.client import (
    ClientEvent,
    Connected,
    DashboardClient,
    Disconnected,
    Received,
    Requester,
    RequestError,
)
from tui.inventory import Inventory
from tui.model import Change, LampRow, SiteModel, severity_rank
from tui.screens import ConfirmDialog, HelpScreen, Override, OverrideDialog, Target
from tui.widgets import Banner, Column, FilterTable, Row, TextView

Role = Literal["operator", "viewer"]
VIEWS: tuple[tuple[str, str], ...] = (
    ("overview", "Overview"),
    ("lights", "Lights"),
    ("map", "Map"),
    ("plan", "Plan"),
    ("alarms", "Alarms"),
)
# Which views show what a kind of change touches.
SHOWS: dict[str, frozenset[Change]] = {
    "overview": frozenset(Change) - {Change.IGNORED},
    "lights": frozenset({Change.LAMP}),
    "map": frozenset({Change.LAMP}),
    "plan": frozenset({Change.PLAN}),
    "alarms": frozenset({Change.ALARM}),
}
COMMAND_ACTIONS = frozenset({"override", "resume", "replan"})
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
ALARM_COLUMNS = (
    Column("Severity", 8),
    Column("Device", 9),
    Column("Code", 16),
    Column("Since", 8),
    Column("Detail"),
)


class MqttEvent(Message):
    """Something the MQTT worker saw: a connection change or a batch of messages."""

    def __init__(self, event: ClientEvent) -> None:
        super().__init__()
        self.event = event


class _Offline:
    """The requester of an app that was started without a broker connection."""

    async def request(self, topic: str, payload: Mapping[str, object]) -> Ack:
        raise RequestError("disconnected", "no broker connection")


class DashboardApp(App[int]):
    """The DOS Edge operator dashboard; see the module docstring."""

    TITLE = "DOS Edge"
    CSS = """
    Screen { layout: vertical; }
    #title { height: 1; background: $primary-background; }
    ContentSwitcher { height: 1fr; }
    #lights, #alarms { height: 1fr; }
    #events { height: 6; border-top: solid $secondary; }
    #command { height: auto; max-height: 3; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        *(Binding(str(i + 1), f"view('{vid}')", name, show=False) for i, (vid, name) in enumerate(VIEWS)),
        Binding("question_mark,f1", "help", "Help", key_display="?"),
        Binding("slash", "filter", "Filter", key_display="/"),
        Binding("s", "sort", "Sort"),
        Binding("o", "override", "Override"),
        Binding("r", "resume", "Resume"),
        Binding("R", "replan", "Re-plan"),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(
        self,
        broker_url: str,
        site: str,
        role: Role = "operator",
        *,
        inventory: Inventory | None = None,
        model: SiteModel | None = None,
        requester: Requester | None = None,
        client: DashboardClient | None = None,
        connect: bool = True,
        tz: tzinfo | None = None,
    ) -> None:
        super().__init__()
        self.broker_url = broker_url
        self.site = site
        self.role: Role = role
        self.inventory = inventory
        self.model = model or SiteModel(site)
        self.tz = tz
        self.client = client or (DashboardClient(broker_url, site) if connect else None)
        self.requester: Requester = requester or self.client or _Offline()
        self.connect = connect
        self.connected = False
        self.last_ack: Ack | None = None
        self.last_error: RequestError | None = None
        self.view = "overview"

    # ----- layout ------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Static(self._title_text(), id="title")
        yield Banner(id="banner")
        with ContentSwitcher(initial="overview"):
            yield TextView(id="overview")
            yield FilterTable(LAMP_COLUMNS, "lamps", id="lights")
            yield TextView(id="map")
            yield TextView(id="plan")
            with Vertical(id="alarms"):
                yield FilterTable(ALARM_COLUMNS, "open alarms", id="alarm-table")
                yield Static("", id="events")
        yield Static("", id="command")
        yield Footer()

    def on_mount(self) -> None:
        if self.connect and self.client is not None:
            self.query_one(Banner).message = f"connecting to {self.client.url.safe()} …"
            self._mqtt_worker(self.client)
        self._refresh_view(force=True)

    @work(name="mqtt", group="mqtt", exclusive=True, exit_on_error=False)
    async def _mqtt_worker(self, client: DashboardClient) -> None:
        """The only place the dashboard reads from the network."""

        def sink(event: ClientEvent) -> None:
            self.post_message(MqttEvent(event))

        await client.run(sink)

    def _title_text(self) -> Text:
        out = Text()
        out.append(f" {self.site} ", "bold reverse")
        out.append(" ")
        for i, (vid, name) in enumerate(VIEWS):
            if vid == getattr(self, "view", "overview"):
                out.append(f"[{i + 1} {name}]", "bold reverse")
            else:
                out.append(f" {i + 1} {name} ")
        out.append(" │ ")
        out.append(self.role if self.role == "operator" else "viewer (read-only)", "italic")
        return out

    # ----- data in -----------------------------------------------------------------------------

    def on_mqtt_event(self, message: MqttEvent) -> None:
        ev = message.event
        banner = self.query_one(Banner)
        if isinstance(ev, Received):
            changes = self.model.apply_all(ev.messages)
            self._refresh_view(changes)
        elif isinstance(ev, Connected):
            self.connected = True
            banner.message = ""
        elif isinstance(ev, Disconnected):
            self.connected = False
            url = self.client.url.safe() if self.client else self.broker_url
            banner.message = (
                f"DISCONNECTED from {url} — reconnecting (attempt {ev.attempt}, "
                f"next in {ev.retry_in_s:.0f} s): {ev.reason}"
            )

    def _refresh_view(self, changes: set[Change] | None = None, *, force: bool = False) -> None:
        """Hand the visible view fresh data if what changed is something it shows."""
        view = self.view
        if not force and (changes is None or not (changes & SHOWS[view])):
            return
        model, tz = self.model, self.tz
        if view == "overview":
            self.query_one("#overview", TextView).show(lambda w, h: render.overview(model, tz))
        elif view == "lights":
            self._table("lights").show([lamp_row(r) for r in model.lamp_rows()])
        elif view == "map":
            self.query_one("#map", TextView).show(self._map_renderer())
        elif view == "plan":
            self.query_one("#plan", TextView).show(lambda w, h: render.plan_chart(model.plan, w, tz))
        elif view == "alarms":
            self._table("alarms").show([alarm_row(a, tz) for a in model.alarms_sorted()])
            self.query_one("#events", Static).update(self._events_text())

    def _map_renderer(self) -> Callable[[int, int], Text]:
        model, inv = self.model, self.inventory
        statuses = model.statuses()

        def draw(width: int, height: int) -> Text:
            out = render.legend()
            out.append("\n")
            if inv is None:
                out.append("No inventory (--inventory FILE): lamps by segment, in id order.\n", "italic")
                out.append_text(render.segment_map(model.segments(), statuses, width))
            else:
                out.append_text(render.district_map(statuses, inv.positions, width, max(4, height - 3)))
                unplaced = len(set(statuses) - set(inv.positions))
                if unplaced:
                    out.append(f"{unplaced} lamp(s) not in the inventory are not drawn.\n", "italic")
            return out

        return draw

    def _events_text(self) -> Text:
        out = Text("Recent alarm events\n", "bold")
        for ev in list(self.model.events)[:5]:
            out.append(render.fmt_time(ev.ts, self.tz, seconds=True) + " ")
            out.append("RAISED " if ev.active else "cleared", "bold" if ev.active else "dim")
            out.append(f" {ev.severity:<8} {ev.device_id} {ev.code} {ev.detail}\n")
        return out

    # ----- navigation --------------------------------------------------------------------------

    def action_view(self, view: str) -> None:
        """Show one of the views."""
        self.view = view
        self.query_one(ContentSwitcher).current = view
        self.query_one("#title", Static).update(self._title_text())
        self._refresh_view(force=True)
        if view in ("lights", "alarms"):
            self._table(view).table.focus()
        else:
            self.query_one(f"#{view}", TextView).focus()

    def _table(self, view: str) -> FilterTable:
        return self.query_one("#lights" if view == "lights" else "#alarm-table", FilterTable)

    def action_help(self) -> None:
        self.push_screen(HelpScreen(self.role))

    def action_filter(self) -> None:
        if self.view not in ("lights", "alarms"):
            self.action_view("lights")
        self._table(self.view).filter_input.focus()

    def action_sort(self) -> None:
        if self.view in ("lights", "alarms"):
            self._table(self.view).next_sort()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """A viewer does not see (or run) the command actions."""
        if action in COMMAND_ACTIONS and self.role != "operator":
            return False
        if action in ("sort",) and self.view not in ("lights", "alarms"):
            return None
        return True

    # ----- commands ----------------------------------------------------------------------------

    def _targets(self) -> list[Target]:
        lamp_id = self._table("lights").selected_key
        if lamp_id is None or lamp_id not in self.model.lamps:
            lamp_id = min(self.model.lamps, default=None)
        if lamp_id is None:
            return []
        state = self.model.lamps[lamp_id]
        segs, groups = self.model.segments(), self.model.groups()
        return [
            Target("lights", lamp_id),
            Target("segments", state.segment, len(segs.get(state.segment, ()))),
            Target("groups", state.group, len(groups.get(state.group, ()))),
        ]

    def action_override(self, resume: bool = False) -> None:
        targets = self._targets()
        if not targets:
            self._say(Text("No lamps known yet: nothing to override.", "italic"))
            return
        self.push_screen(OverrideDialog(targets, resume=resume), self._overridden)

    def action_resume(self) -> None:
        self.action_override(resume=True)

    def action_replan(self) -> None:
        what = (
            "Re-plan tonight's lighting now.\n"
            "The daemon computes a new plan from the current time and applies it; "
            "operator overrides stay in force until they end.\n"
            f"Request: {self.model.base}/cmd/lighting/replan"
        )
        self._confirm_then_send(
            what, f"{self.model.base}/cmd/lighting/replan", {"action": "replan"}, "re-plan"
        )

    def _overridden(self, result: Override | None) -> None:
        if result is None:
            return
        t = result.target
        topic = f"{self.model.base}/cmd/{t.scope}/{t.name}"
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
        self._confirm_then_send(f"{what}\nRequest: {topic}", topic, payload, short)

    def _confirm_then_send(self, what: str, topic: str, payload: dict[str, object], short: str) -> None:
        def answered(yes: bool | None) -> None:
            if yes:
                self._say(Text(f"… {short}: sent, waiting for the answer", "italic"))
                self._send(topic, payload, short)
            else:
                self._say(Text(f"{short}: cancelled, nothing sent", "dim"))

        self.push_screen(ConfirmDialog(what), answered)

    @work(group="commands", exit_on_error=False)
    async def _send(self, topic: str, payload: dict[str, object], short: str) -> None:
        """Send one request and show its answer (runs as a worker: network I/O)."""
        try:
            ack = await self.requester.request(topic, payload)
        except RequestError as exc:
            self.last_error = exc
            line = Text()
            line.append(" NO ANSWER ", "bold red reverse")
            line.append(f" {short}: {exc}")
            self._say(line)
            return
        self.last_ack = ack
        line = Text(f"{short}: ")
        line.append_text(render.ack_text(ack))
        self._say(line)
        if not ack.ok:
            self.bell()

    def _say(self, text: Text) -> None:
        self.query_one("#command", Static).update(text)


def lamp_row(r: LampRow) -> Row:
    """A lamp as a lights table row."""
    status = Text(f"{render.SYMBOL[r.status]} {r.status.value}", render.STYLE[r.status])
    return Row(
        key=r.id,
        cells=(
            r.id,
            r.segment,
            r.lighting_class,
            render.fmt_num(r.level_cmd),
            render.fmt_num(r.level_actual),
            render.fmt_num(r.power_w),
            render.fmt_num(r.hours),
            status,
            " ".join(r.alarms),
        ),
        sort=(
            r.id,
            r.segment,
            r.lighting_class,
            r.level_cmd,
            r.level_actual,
            r.power_w,
            r.hours,
            float(render.PRIORITY.index(r.status)),
            " ".join(r.alarms) or None,
        ),
    )


def alarm_row(a: AlarmMessage, tz: tzinfo | None) -> Row:
    """An open alarm as an alarms table row."""
    return Row(
        key=f"{a.device_id}/{a.code}",
        cells=(
            Text(a.severity, render.SEVERITY_STYLE.get(a.severity, "")),
            a.device_id,
            a.code,
            render.fmt_time(a.ts, tz),
            a.detail,
        ),
        sort=(float(severity_rank(a.severity)), a.device_id, a.code, a.ts, a.detail or None),
    )
