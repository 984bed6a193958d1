"""The operator dashboard (Textual): a client of the MQTT API, for one site.

Data flows one way: the MQTT worker (`tui.client`) posts `MqttEvent` messages up to the
app, the app folds them into its `SiteModel` and hands the visible view plain rows or a
render function (attributes down). Commands go through a `Requester` (the client, or a
fake in tests) in a worker, after a confirmation dialog; the answer lands on the command
line above the footer.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Mapping
from datetime import tzinfo
from typing import ClassVar, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from rich.text import Text
from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.command import Provider
from textual.containers import Vertical
from textual.css.query import NoMatches
from textual.message import Message
from textual.timer import Timer
from textual.widgets import ContentSwitcher, Footer, Static

from edge.payloads import Ack, AlarmMessage, DisplayState, ParkingState
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
from tui.model import (
    FEEDER_SAMPLES,
    ActiveWarning,
    BinView,
    Change,
    ChargerRow,
    FeederRow,
    LampRow,
    Recommendation,
    SiteModel,
    TruckRow,
    WastePlanView,
    alarm_event,
    alarm_event_ts,
    severity_rank,
    shown_text,
)
from tui.palette import DashboardCommands
from tui.screens import (
    AckDialog,
    AlarmAckForm,
    ChargerLimitForm,
    ConfirmDialog,
    DisplayMessageForm,
    HelpScreen,
    LimitDialog,
    MessageDialog,
    Override,
    OverrideDialog,
    Target,
)
from tui.widgets import Banner, Column, FilterTable, Row, TextView, VirtualTable

DEFAULT_SITE_TZ = "Europe/Berlin"  # the default of a site's `timezone` (edge/settings.py)

Role = Literal["operator", "viewer"]
VIEWS: tuple[tuple[str, str], ...] = (
    ("overview", "Overview"),
    ("lights", "Lights"),
    ("map", "Map"),
    ("plan", "Plan"),
    ("alarms", "Alarms"),
    ("charging", "Charging"),
    ("displays", "Displays"),
    ("waste", "Waste"),
)
# Which views show what a kind of change touches.
SHOWS: dict[str, frozenset[Change]] = {
    "overview": frozenset(Change) - {Change.IGNORED},
    "lights": frozenset({Change.LAMP}),
    "map": frozenset({Change.LAMP}),
    "plan": frozenset({Change.PLAN}),
    "alarms": frozenset({Change.ALARM}),
    "charging": frozenset({Change.CHARGING}),
    "displays": frozenset({Change.DISPLAYS}),
    "waste": frozenset({Change.WASTE}),
}
DISPLAY_ACTIONS = frozenset({"display_message", "clear_display"})
CHARGER_ACTIONS = frozenset({"pause_charger", "limit_charger", "release_charger"})
LAMP_ACTIONS = frozenset({"override", "resume"})
ALARM_ACTIONS = frozenset({"ack_alarm"})
WASTE_ACTIONS = frozenset({"force_bin", "exclude_bin", "auto_bin"})
COMMAND_ACTIONS = (
    frozenset({"replan"}) | LAMP_ACTIONS | CHARGER_ACTIONS | DISPLAY_ACTIONS | ALARM_ACTIONS | WASTE_ACTIONS
)
TABLE_VIEWS = ("lights", "alarms", "charging", "displays", "waste")
NARROW = 110  # below this many columns the title names only the current view
REFRESH_S = 0.2  # at most this often the visible view is redrawn from the model
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
DISPLAY_COLUMNS = (
    Column("Display", 8),
    Column("Online", 7),
    Column("Bright", 6),
    Column("Pixel faults", 6),
    Column("Shows now"),
)
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
PARKING_COLUMNS = (
    Column("Car park", 10),
    Column("Name", 18),
    Column("Free/cap.", 9),
    Column("Open", 6),
    Column("Number"),
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
    COMMANDS: ClassVar[set[type[Provider] | Callable[[], type[Provider]]]] = App.COMMANDS | {
        DashboardCommands
    }
    CSS = """
    Screen { layout: vertical; }
    #title { height: 1; background: $primary-background; }
    ContentSwitcher { height: 1fr; }
    #lights, #alarms, #charging, #displays { height: 1fr; }
    #display-table { height: 2fr; }
    #parking-table { height: 1fr; }
    #warnings { height: auto; max-height: 6; border-top: solid $secondary; }
    #feeder-table { height: 1fr; }
    #session-table { height: 2fr; }
    #alarm-table { height: 1fr; }
    #alarm-history { height: 1fr; border-top: solid $secondary; }
    #waste { height: 1fr; }
    #waste-summary { height: auto; }
    #bin-table { height: 2fr; }
    #truck-table { height: 1fr; min-height: 7; border-top: solid $secondary; }
    #route { height: auto; max-height: 2; }
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
        Binding("p", "pause_charger", "Pause"),
        Binding("l", "limit_charger", "Limit"),
        Binding("u", "release_charger", "Release"),
        Binding("m", "display_message", "Message"),
        Binding("c", "clear_display", "Clear msg"),
        Binding("a", "ack_alarm", "Ack"),
        Binding("f", "force_bin", "Force"),
        Binding("x", "exclude_bin", "Exclude"),
        Binding("n", "auto_bin", "Automatic"),
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
        self._tz = tz
        self.client = client or (DashboardClient(broker_url, site) if connect else None)
        self.requester: Requester = requester or self.client or _Offline()
        self.connect = connect
        self.connected = False
        self.last_ack: Ack | None = None
        self.last_error: RequestError | None = None
        self.view = "overview"
        self._pending: set[Change] = set()
        self._refresh_timer: Timer | None = None
        self._last_refresh = 0.0
        self._lights_seen = -1
        self._bins_seen = -1

    @property
    def tz(self) -> tzinfo:
        """The zone every time is shown in: the site's (from the daemon's status), not this machine's.

        An explicit `tz` wins; before the status arrives, the sites' default zone is used.
        """
        if self._tz is not None:
            return self._tz
        name = (self.model.daemon.timezone if self.model.daemon else None) or DEFAULT_SITE_TZ
        return _zone(name)

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
                yield FilterTable(ALARM_COLUMNS, "open alarms", id="alarm-table", hint="e.g. 'major unacked'")
                yield FilterTable(
                    HISTORY_COLUMNS, "alarm events", id="alarm-history", hint="e.g. 'acked alice'"
                )
            with Vertical(id="charging"):
                yield FilterTable(FEEDER_COLUMNS, "feeders", id="feeder-table", hint="e.g. 'feeder-2 !'")
                yield FilterTable(
                    SESSION_COLUMNS, "charge points", id="session-table", hint="e.g. 'feeder-2 charging'"
                )
            with Vertical(id="displays"):
                yield FilterTable(DISPLAY_COLUMNS, "displays", id="display-table", hint="e.g. 'offline'")
                yield FilterTable(PARKING_COLUMNS, "car parks", id="parking-table", hint="e.g. 'STALE'")
                yield Static("", id="warnings")
            with Vertical(id="waste"):
                yield Static("", id="waste-summary")
                yield FilterTable(BIN_COLUMNS, "bins", id="bin-table", hint="e.g. 'mandatory z3'")
                yield FilterTable(TRUCK_COLUMNS, "trucks", id="truck-table", hint="e.g. 'collecting'")
                yield Static("", id="route")
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
        """The site, the views by key, the role; on a narrow terminal only the current view is named."""
        narrow = self.size.width < NARROW
        out = Text()
        out.append(f" {self.site} ", "bold reverse")
        for i, (vid, name) in enumerate(VIEWS):
            if vid == getattr(self, "view", "overview"):
                out.append(" ")
                out.append(f"[{i + 1} {name}]", "bold reverse")
            else:
                out.append(f" {i + 1}" if narrow else f" {i + 1} {name}")
        out.append(" │ ")
        out.append(self.role if self.role == "operator" else "viewer (read-only)", "italic")
        return out

    def on_resize(self) -> None:
        self.query_one("#title", Static).update(self._title_text())

    # ----- data in -----------------------------------------------------------------------------

    def on_mqtt_event(self, message: MqttEvent) -> None:
        """Fold a batch into the model; the screen follows at most every REFRESH_S (coalesced)."""
        ev = message.event
        try:
            banner = self.query_one(Banner)
        except NoMatches:
            return  # shutting down: the screen is gone, and so is anyone to show it to
        if isinstance(ev, Received):
            self._pending |= self.model.apply_all(ev.messages)
            self._schedule_refresh()
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

    def _schedule_refresh(self) -> None:
        """Refresh now, or once REFRESH_S after the last refresh: a burst of batches costs one redraw."""
        if self._refresh_timer is not None:
            return
        wait = self._last_refresh + REFRESH_S - time.monotonic()
        if wait <= 0:
            self._flush_refresh()
        else:
            self._refresh_timer = self.set_timer(wait, self._flush_refresh, name="refresh")

    def _flush_refresh(self) -> None:
        self._refresh_timer = None
        changes, self._pending = self._pending, set()
        self._last_refresh = time.monotonic()
        # A timer that fires while the app shuts down finds nothing left to draw on.
        with contextlib.suppress(NoMatches):
            self._refresh_view(changes)

    def _refresh_view(self, changes: set[Change] | None = None, *, force: bool = False) -> None:
        """Hand the visible view fresh data if what changed is something it shows."""
        view = self.view
        if not force and (changes is None or not (changes & SHOWS[view])):
            return
        model, tz = self.model, self.tz
        if view == "overview":
            self.query_one("#overview", TextView).show(lambda w, h: render.overview(model, tz))
        elif view == "lights":
            # Only the lamps that changed since the table last looked: 5,000 rows are not rebuilt.
            changed, gone = model.lamps_since(self._lights_seen)
            self._lights_seen = model.version
            self._table("lights").update([lamp_row(model.lamp_row(k)) for k in changed], gone)
        elif view == "map":
            self.query_one("#map", TextView).show(self._map_renderer())
        elif view == "plan":
            self.query_one("#plan", TextView).show(lambda w, h: render.plan_chart(model.plan, w, tz))
        elif view == "alarms":
            self._table("alarms").show([alarm_row(a, tz) for a in model.alarms_sorted()])
            self._history_table.show([history_row(i, a, tz) for i, a in enumerate(model.events)])
        elif view == "charging":
            self._feeder_table.show([feeder_row(f) for f in model.feeder_rows()])
            self._table("charging").show([charger_row(r, tz) for r in model.charger_rows()])
        elif view == "displays":
            self._table("displays").show(
                [display_row(d, model.guidance_for(d.device_id)) for _, d in sorted(model.displays.items())]
            )
            self._parking_table.show([parking_row(p) for _, p in sorted(model.parking.items())])
            self.query_one("#warnings", Static).update(warnings_text(model.warnings_sorted(), tz))
        elif view == "waste":
            summary = Text()
            now = model.clock_ts() or time.time()
            render.waste_lines(summary, model, tz, now)
            self.query_one("#waste-summary", Static).update(summary)
            changed, gone = model.bins_since(self._bins_seen)
            self._bins_seen = model.version
            self._table("waste").update([bin_row(model.bins[k], tz, now) for k in changed], gone)
            self._truck_table.show([truck_row(r, tz) for r in model.truck_rows()])
            self._show_route()

    def _show_route(self) -> None:
        """The stops of the truck under the cursor in the routes table."""
        self.query_one("#route", Static).update(
            route_text(self.model.waste_plan, self._truck_table.selected_key, self.tz)
        )

    def on_virtual_table_cursor_moved(self, event: VirtualTable.CursorMoved) -> None:
        if self.view == "waste" and self._truck_table.table is event.table:
            self._show_route()

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

    # ----- navigation --------------------------------------------------------------------------

    def action_view(self, view: str) -> None:
        """Show one of the views."""
        self.view = view
        self.query_one(ContentSwitcher).current = view
        self.query_one("#title", Static).update(self._title_text())
        self._refresh_view(force=True)
        self.refresh_bindings()
        if view in TABLE_VIEWS:
            self._table(view).table.focus()
        else:
            self.query_one(f"#{view}", TextView).focus()

    def _table(self, view: str) -> FilterTable:
        """The table of a view (on the Charging view: the sessions table)."""
        wid = {
            "lights": "#lights",
            "alarms": "#alarm-table",
            "charging": "#session-table",
            "displays": "#display-table",
            "waste": "#bin-table",
        }[view]
        return self.query_one(wid, FilterTable)

    @property
    def _feeder_table(self) -> FilterTable:
        return self.query_one("#feeder-table", FilterTable)

    @property
    def _parking_table(self) -> FilterTable:
        return self.query_one("#parking-table", FilterTable)

    @property
    def _truck_table(self) -> FilterTable:
        return self.query_one("#truck-table", FilterTable)

    @property
    def _history_table(self) -> FilterTable:
        return self.query_one("#alarm-history", FilterTable)

    def _active_table(self) -> FilterTable:
        """The table the keys act on: on the Charging and Displays views, whichever has the focus."""
        if self.view == "charging" and self._feeder_table.has_focus_within:
            return self._feeder_table
        if self.view == "displays" and self._parking_table.has_focus_within:
            return self._parking_table
        if self.view == "alarms" and self._history_table.has_focus_within:
            return self._history_table
        if self.view == "waste" and self._truck_table.has_focus_within:
            return self._truck_table
        return self._table(self.view)

    # ----- the command palette -----------------------------------------------------------------

    def palette_run(self, action: str, view: str | None) -> None:
        """Run an action chosen in the palette, on the view it acts on."""
        if view is not None and view != self.view:
            self.action_view(view)
        if self.check_action(action, ()):
            getattr(self, f"action_{action}")()

    def palette_select(self, where: str, key: str) -> None:
        """Open a device's view with the cursor on it (chosen in the palette)."""
        view = "waste" if where == "trucks" else where
        self.action_view(view)
        table = self._truck_table if where == "trucks" else self._table(view)
        if not table.select(key):
            self._say(Text(f"{key}: not in the table (any more)", "italic"))

    def action_help(self) -> None:
        self.push_screen(HelpScreen(self.role))

    def action_filter(self) -> None:
        if self.view not in TABLE_VIEWS:
            self.action_view("lights")
        self._active_table().filter_input.focus()

    def action_sort(self) -> None:
        if self.view in TABLE_VIEWS:
            self._active_table().next_sort()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """A viewer does not see (or run) the command actions."""
        if action in COMMAND_ACTIONS and self.role != "operator":
            return False
        if action in CHARGER_ACTIONS and self.view != "charging":
            return False
        if action in DISPLAY_ACTIONS and self.view != "displays":
            return False
        if action in ALARM_ACTIONS and self.view != "alarms":
            return False
        if action in WASTE_ACTIONS and self.view != "waste":
            return False
        if action in LAMP_ACTIONS and self.view in ("charging", "displays", "waste"):
            return False  # those views act on their own devices; lamps from the other views
        if action == "replan" and self.view in ("charging", "displays"):
            return False  # R re-plans the lighting, or the waste collection on the Waste view
        if action in ("sort",) and self.view not in TABLE_VIEWS:
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
        if self.view == "waste":
            topic = f"{self.model.base}/cmd/waste/replan"
            what = (
                "Re-plan today's waste collection now.\n"
                "The daemon plans again from the trucks' positions, keeping what is done; "
                "forced and excluded bins stay so.\n"
                f"Request: {topic}"
            )
            self._confirm_then_send(what, topic, {"action": "replan"}, "re-plan waste")
            return
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

    # charge points --------------------------------------------------------------------------

    def _selected_charger(self) -> ChargerRow | None:
        rows = {r.id: r for r in self.model.charger_rows()}
        cid = self._table("charging").selected_key
        if cid is None or cid not in rows:
            self._say(Text("No charge point selected: nothing to do.", "italic"))
            return None
        return rows[cid]

    def _charger_topic(self, cid: str) -> str:
        return f"{self.model.base}/cmd/chargers/{cid}"

    def action_pause_charger(self) -> None:
        row = self._selected_charger()
        if row is None:
            return
        topic = self._charger_topic(row.id)
        what = (
            f"Pause charge point {row.id} ({describe_charger(row)}) until you release it (u).\n"
            "The car stops charging; the plan gives its share to the other cars.\n"
            f"Request: {topic}"
        )
        payload: dict[str, object] = {"action": "pause", "reason": "operator dashboard"}
        self._confirm_then_send(what, topic, payload, f"pause {row.id}")

    def action_limit_charger(self) -> None:
        row = self._selected_charger()
        if row is None:
            return
        self.push_screen(LimitDialog(row.id, describe_charger(row)), self._limited)

    def _limited(self, form: ChargerLimitForm | None) -> None:
        if form is None:
            self._say(Text("limit: cancelled, nothing sent", "dim"))
            return
        topic = self._charger_topic(form.charger)
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
        self._confirm_then_send(what, topic, payload, f"limit {form.charger} to {form.current_a:g} A")

    def action_release_charger(self) -> None:
        row = self._selected_charger()
        if row is None:
            return
        topic = self._charger_topic(row.id)
        what = (
            f"Release charge point {row.id} ({describe_charger(row)}).\n"
            "Any operator pause or limit ends now and the charging plan takes over.\n"
            f"Request: {topic}"
        )
        payload: dict[str, object] = {"action": "release", "reason": "operator dashboard"}
        self._confirm_then_send(what, topic, payload, f"release {row.id}")

    # displays ---------------------------------------------------------------------------------

    def _selected_display(self) -> DisplayState | None:
        did = self._table("displays").selected_key
        if did is None or did not in self.model.displays:
            self._say(Text("No display selected: nothing to do.", "italic"))
            return None
        return self.model.displays[did]

    def _display_topic(self, did: str) -> str:
        return f"{self.model.base}/cmd/displays/{did}"

    def action_display_message(self) -> None:
        d = self._selected_display()
        if d is None:
            return
        self.push_screen(MessageDialog(d.device_id, describe_display(d)), self._messaged)

    def _messaged(self, form: DisplayMessageForm | None) -> None:
        if form is None:
            self._say(Text("message: cancelled, nothing sent", "dim"))
            return
        topic = self._display_topic(form.display)
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
        self._confirm_then_send(what, topic, payload, f"message on {form.display}")

    def action_clear_display(self) -> None:
        d = self._selected_display()
        if d is None:
            return
        topic = self._display_topic(d.device_id)
        what = (
            f"Clear the operator message on display {d.device_id}.\n"
            "It goes back to warnings or guidance (or blank).\n"
            f"Request: {topic}"
        )
        self._confirm_then_send(what, topic, {"action": "clear"}, f"clear {d.device_id}")

    # waste ------------------------------------------------------------------------------------

    def _selected_bin(self) -> BinView | None:
        bid = self._table("waste").selected_key
        if bid is None or bid not in self.model.bins:
            self._say(Text("No bin selected: nothing to do.", "italic"))
            return None
        return self.model.bins[bid]

    def _bin_command(self, action: str, what: str, short: str) -> None:
        b = self._selected_bin()
        if b is None:
            return
        topic = f"{self.model.base}/cmd/waste/bins/{b.id}"
        text = f"{what.format(bin=b.id)}\nNow: {describe_bin(b, self.tz, self.model.clock_ts())}.\nRequest: {topic}"
        payload: dict[str, object] = {"action": action, "reason": "operator dashboard"}
        self._confirm_then_send(text, topic, payload, f"{short} {b.id}")

    def action_force_bin(self) -> None:
        self._bin_command(
            "force",
            "Force bin {bin} into today's collection plan.\n"
            "The daemon re-plans today's routes with it as a mandatory stop, or refuses "
            "(an excluded bin: set it back to automatic first).",
            "force",
        )

    def action_exclude_bin(self) -> None:
        self._bin_command(
            "exclude",
            "Exclude bin {bin} from every collection plan until you set it back to automatic (n).\n"
            "Its fill is still watched and its alarms still raised.",
            "exclude",
        )

    def action_auto_bin(self) -> None:
        self._bin_command(
            "clear",
            "Set bin {bin} back to automatic: planned by its fill and prediction, no longer forced or excluded.",
            "automatic",
        )

    # alarms -----------------------------------------------------------------------------------

    def action_ack_alarm(self) -> None:
        key = self._table("alarms").selected_key
        alarm = next((a for a in self.model.alarms_sorted() if f"{a.device_id}/{a.code}" == key), None)
        if alarm is None:
            self._say(Text("No open alarm selected: nothing to acknowledge.", "italic"))
            return
        detail = f"{alarm.severity}, since {render.fmt_time(alarm.ts, self.tz)}: {alarm.detail or '-'}"
        if alarm.acked:
            detail += f"\nAlready acknowledged by {alarm.acked_by}: {alarm.ack_comment}"
        self.push_screen(AckDialog(alarm.device_id, alarm.code, detail), self._acked)

    def _acked(self, form: AlarmAckForm | None) -> None:
        if form is None:
            self._say(Text("ack: cancelled, nothing sent", "dim"))
            return
        topic = f"{self.model.base}/cmd/alarms/ack"
        payload: dict[str, object] = {
            "action": "ack",
            "device": form.device,
            "code": form.code,
            "comment": form.comment,
            "by": self.operator_name,
        }
        what = (
            f"Acknowledge {form.code} on {form.device} as {self.operator_name}:\n  {form.comment}\n"
            "The alarm stays open until its cause clears; everyone sees who acknowledged it and why.\n"
            f"Request: {topic}"
        )
        self._confirm_then_send(what, topic, payload, f"ack {form.code} on {form.device}")

    @property
    def operator_name(self) -> str:
        """Who the daemon records for an ack: the broker account, else this dashboard's client id."""
        if self.client is not None:
            return self.client.url.username or self.client.client_id
        return "dashboard"

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
    lighting_class = r.lighting_class
    return Row(
        key=r.id,
        cells=(
            r.id,
            r.segment,
            lighting_class,
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
            lighting_class,
            r.level_cmd,
            r.level_actual,
            r.power_w,
            r.hours,
            float(render.PRIORITY.index(r.status)),
            " ".join(r.alarms) or None,
        ),
    )


@functools.cache
def _zone(name: str) -> tzinfo:
    """A zone by IANA name; an unknown name falls back to the sites' default (never this machine's)."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo(DEFAULT_SITE_TZ)


def alarm_row(a: AlarmMessage, tz: tzinfo | None) -> Row:
    """An open alarm as an alarms table row; an unacknowledged one says so in words."""
    acked = Text(a.acked_by or "?", "dim") if a.acked else Text("UNACKED", "bold")
    note = f"{a.detail} · ack: {a.ack_comment}" if a.acked else a.detail
    return Row(
        key=f"{a.device_id}/{a.code}",
        cells=(
            Text(a.severity, render.SEVERITY_STYLE.get(a.severity, "")),
            a.device_id,
            a.code,
            render.fmt_time(a.ts, tz),
            acked,
            note,
        ),
        sort=(float(severity_rank(a.severity)), a.device_id, a.code, a.ts, acked.plain, note or None),
    )


EVENT_WORD = {"raised": ("RAISED", "bold"), "acked": ("acked", ""), "cleared": ("cleared", "dim")}


def history_row(index: int, a: AlarmMessage, tz: tzinfo | None) -> Row:
    """One alarm event (raised, acknowledged, cleared) as a history table row."""
    kind = alarm_event(a)
    word, style = EVENT_WORD[kind]
    ts = alarm_event_ts(a)
    note = f"by {a.acked_by}: {a.ack_comment}" if kind == "acked" else a.detail
    return Row(
        key=str(index),
        cells=(
            render.fmt_time(ts, tz, seconds=True),
            Text(word, style),
            Text(a.severity, render.SEVERITY_STYLE.get(a.severity, "")),
            a.device_id,
            a.code,
            note,
        ),
        sort=(-ts, kind, float(severity_rank(a.severity)), a.device_id, a.code, note or None),
    )


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
            render.fmt_num(f.limit_a, 1),
            render.fmt_num(f.lighting_a, 1),
            render.fmt_num(f.setpoints_a, 1),
            render.fmt_num(f.measured_a, 1),
            render.load_bar(load),
            str(f.chargers),
            render.sparkline(f.history, FEEDER_SAMPLES),
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


CHARGER_STYLE = {"offline": "bold magenta", "Faulted": "bold red reverse", "Charging": "bold green"}


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
            render.fmt_num(r.setpoint_a, 1),
            render.fmt_num(r.planned_a, 1),
            render.fmt_num(r.power_kw, 1),
            render.fmt_num(r.session_kwh, 1),
            render.fmt_num(r.needed_kwh, 1),
            render.fmt_time(r.departure_ts, tz),
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
            Text(render.fmt_num(faults), "bold red" if faults else ""),
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


PLAN_WORD = {"mandatory": "mandatory", "optional": "optional", "none": "-"}


def describe_bin(b: BinView, tz: tzinfo | None, now: float | None = None) -> str:
    """`zone z3, 64 % full, full at 14:20, today: none` in one phrase."""
    fill = "never heard" if b.fill is None else f"{b.fill * 100:.0f} % full"
    parts = [f"zone {b.zone or '-'}", fill]
    if b.full_ts is not None:
        parts.append(f"full at {render.fmt_when(b.full_ts, tz, time.time() if now is None else now)}")
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
            else render.fmt_when(b.full_ts, tz, time.time() if now is None else now)
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
            render.fill_bar(b.fill),
            render.fmt_num(None if b.rate_per_h is None else b.rate_per_h * 100, 1),
            full_at,
            today,
            status,
            render.fmt_num(b.battery),
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
            out.append(f"→ {name} {render.fmt_time(stop.eta_ts, tz)}", "bold reverse")
            out.append(" ")
        else:
            out.append(f"· {name} {render.fmt_time(stop.eta_ts, tz)} ")
    return out


TRUCK_STYLE = {"offline": "bold magenta", "broken": "bold red reverse", "collecting": "bold"}


def truck_row(r: TruckRow, tz: tzinfo | None) -> Row:
    """A truck as a routes table row: its route's progress."""
    word = r.status_word
    return Row(
        key=r.id,
        cells=(
            r.id,
            Text(word, TRUCK_STYLE.get(word, "")),
            r.route_id or "-",
            render.progress_bar(r.stops_done, r.stops_total),
            f"{r.bins_done}/{r.bins_total}" if r.bins_total else "-",
            "-" if r.load_pct is None else f"{r.load_pct:.0f} %",
            render.fmt_num(r.km, 1),
            r.next_stop or "-",
            render.fmt_time(r.next_eta, tz),
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
        out.append(f" {' / '.join(w.lines)}  until {render.fmt_time(w.end, tz)}")
        where = ", ".join(w.displays) if w.displays else "area/all"
        out.append(f"  ({w.id}; {where})\n", "dim")
    return out
