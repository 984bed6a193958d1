"""The operator dashboard (Textual): a client of the MQTT API, for one site.

Data flows one way: the MQTT worker (`tui.client`) posts `MqttEvent` messages up to the
app, the app folds them into its `SiteModel` and hands the visible view plain rows or a
render function (attributes down). Each domain's view (`tui/views/{domain}.py`) lays out its
pane, turns its slice of the model into rows, and words its commands as `Request`s; this
class only routes: keys to views, changes to the visible view, requests through the
confirmation dialog to a `Requester` (the client, or a fake in tests) in a worker. The answer
lands on the command line above the footer.
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
from textual.css.query import NoMatches
from textual.message import Message
from textual.timer import Timer
from textual.widgets import ContentSwitcher, Footer, Static

from edge.payloads import Ack, DisplayState
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
from tui.model import SiteModel
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
)
from tui.views import SHOWS, VIEWS, alarms, charging, displays, lighting, waste
from tui.views.base import Change, Request
from tui.widgets import Banner, FilterTable, TextView, VirtualTable

DEFAULT_SITE_TZ = "Europe/Berlin"  # the default of a site's `timezone` (edge/settings.py)

Role = Literal["operator", "viewer"]
DISPLAY_ACTIONS = frozenset({"display_message", "clear_display"})
CHARGER_ACTIONS = frozenset({"pause_charger", "limit_charger", "release_charger"})
LAMP_ACTIONS = frozenset({"override", "resume"})
ALARM_ACTIONS = frozenset({"ack_alarm"})
WASTE_ACTIONS = frozenset({"force_bin", "exclude_bin", "auto_bin"})
COMMAND_ACTIONS = (
    frozenset({"replan"}) | LAMP_ACTIONS | CHARGER_ACTIONS | DISPLAY_ACTIONS | ALARM_ACTIONS | WASTE_ACTIONS
)
# The table the keys act on in each table view; the second table of a view, when it has the focus.
TABLES = {
    "lights": "#lights",
    "alarms": "#alarm-table",
    "charging": "#session-table",
    "displays": "#display-table",
    "waste": "#bin-table",
}
SECOND_TABLES = {
    "alarms": "#alarm-history",
    "charging": "#feeder-table",
    "displays": "#parking-table",
    "waste": "#truck-table",
}
TABLE_VIEWS = tuple(TABLES)
NARROW = 110  # below this many columns the title names only the current view
REFRESH_S = 0.2  # at most this often the visible view is redrawn from the model


# The panes' sizes (each view module lays out its own pane; the ids are theirs).
LAYOUT_CSS = """
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

KEYS: list[BindingType] = [
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
    CSS = LAYOUT_CSS
    BINDINGS: ClassVar[list[BindingType]] = KEYS

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
        self._lights = lighting.LightsFeed()
        self._waste = waste.WasteFeed()

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
            yield from lighting.compose()
            yield TextView(id="map")
            yield TextView(id="plan")
            yield from alarms.compose()
            yield from charging.compose()
            yield from displays.compose()
            yield from waste.compose()
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
            self._lights.show(self, model)
        elif view == "map":
            self.query_one("#map", TextView).show(render.map_page(model, self.inventory))
        elif view == "plan":
            self.query_one("#plan", TextView).show(lambda w, h: render.plan_chart(model.plan, w, tz))
        elif view == "alarms":
            alarms.show(self, model, tz)
        elif view == "charging":
            charging.show(self, model, tz)
        elif view == "displays":
            displays.show(self, model, tz)
        elif view == "waste":
            self._waste.show(self, model, tz)

    def on_virtual_table_cursor_moved(self, event: VirtualTable.CursorMoved) -> None:
        if self.view == "waste" and self._table("#truck-table").table is event.table:
            waste.show_route(self, self.model, self.tz)

    # ----- navigation --------------------------------------------------------------------------

    def action_view(self, view: str) -> None:
        """Show one of the views."""
        self.view = view
        self.query_one(ContentSwitcher).current = view
        self.query_one("#title", Static).update(self._title_text())
        self._refresh_view(force=True)
        self.refresh_bindings()
        if view in TABLE_VIEWS:
            self._table(TABLES[view]).table.focus()
        else:
            self.query_one(f"#{view}", TextView).focus()

    def _table(self, selector: str) -> FilterTable:
        return self.query_one(selector, FilterTable)

    def _selected(self, view: str) -> str | None:
        """The key under the cursor in a view's main table (on the Charging view: the sessions)."""
        return self._table(TABLES[view]).selected_key

    def _active_table(self) -> FilterTable:
        """The table the keys act on: on views with two tables, whichever has the focus."""
        second = SECOND_TABLES.get(self.view)
        if second is not None and self._table(second).has_focus_within:
            return self._table(second)
        return self._table(TABLES[self.view])

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
        table = self._table("#truck-table" if where == "trucks" else TABLES[view])
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

    # ----- commands: each view words them, the app asks, sends and shows the answer ------------

    def action_override(self, resume: bool = False) -> None:
        targets = lighting.targets(self.model, self._selected("lights"))
        if not targets:
            self._say(Text("No lamps known yet: nothing to override.", "italic"))
            return
        self.push_screen(OverrideDialog(targets, resume=resume), self._overridden)

    def action_resume(self) -> None:
        self.action_override(resume=True)

    def _overridden(self, result: Override | None) -> None:
        if result is not None:
            self._confirm_then_send(lighting.override_request(self.model.base, result))

    def action_replan(self) -> None:
        view = waste if self.view == "waste" else lighting
        self._confirm_then_send(view.replan_request(self.model.base))

    def _charger(self) -> charging.ChargerRow | None:
        row = charging.selected_charger(self.model, self._selected("charging"))
        if row is None:
            self._say(Text("No charge point selected: nothing to do.", "italic"))
        return row

    def action_pause_charger(self) -> None:
        if (row := self._charger()) is not None:
            self._confirm_then_send(charging.pause_request(self.model.base, row))

    def action_limit_charger(self) -> None:
        if (row := self._charger()) is not None:
            self.push_screen(LimitDialog(row.id, charging.describe_charger(row)), self._limited)

    def _limited(self, form: ChargerLimitForm | None) -> None:
        if form is None:
            self._say(Text("limit: cancelled, nothing sent", "dim"))
            return
        self._confirm_then_send(charging.limit_request(self.model.base, form))

    def action_release_charger(self) -> None:
        if (row := self._charger()) is not None:
            self._confirm_then_send(charging.release_request(self.model.base, row))

    def _selected_display(self) -> DisplayState | None:
        did = self._selected("displays")
        if did is None or did not in self.model.displays:
            self._say(Text("No display selected: nothing to do.", "italic"))
            return None
        return self.model.displays[did]

    def action_display_message(self) -> None:
        if (d := self._selected_display()) is not None:
            self.push_screen(MessageDialog(d.device_id, displays.describe_display(d)), self._messaged)

    def _messaged(self, form: DisplayMessageForm | None) -> None:
        if form is None:
            self._say(Text("message: cancelled, nothing sent", "dim"))
            return
        self._confirm_then_send(displays.message_request(self.model.base, form))

    def action_clear_display(self) -> None:
        if (d := self._selected_display()) is not None:
            self._confirm_then_send(displays.clear_request(self.model.base, d))

    def _bin_command(self, action: str) -> None:
        bid = self._selected("waste")
        if bid is None or bid not in self.model.bins:
            self._say(Text("No bin selected: nothing to do.", "italic"))
            return
        b, now = self.model.bins[bid], self.model.clock_ts()
        self._confirm_then_send(waste.bin_request(self.model.base, action, b, self.tz, now))

    def action_force_bin(self) -> None:
        self._bin_command("force")

    def action_exclude_bin(self) -> None:
        self._bin_command("exclude")

    def action_auto_bin(self) -> None:
        self._bin_command("clear")

    def action_ack_alarm(self) -> None:
        alarm = alarms.selected_alarm(self.model, self._selected("alarms"))
        if alarm is None:
            self._say(Text("No open alarm selected: nothing to acknowledge.", "italic"))
            return
        detail = alarms.ack_detail(alarm, self.tz)
        self.push_screen(AckDialog(alarm.device_id, alarm.code, detail), self._acked)

    def _acked(self, form: AlarmAckForm | None) -> None:
        if form is None:
            self._say(Text("ack: cancelled, nothing sent", "dim"))
            return
        request = alarms.ack_request(
            self.model.base, form.device, form.code, form.comment, self.operator_name
        )
        self._confirm_then_send(request)

    @property
    def operator_name(self) -> str:
        """Who the daemon records for an ack: the broker account, else this dashboard's client id."""
        if self.client is not None:
            return self.client.url.username or self.client.client_id
        return "dashboard"

    def _confirm_then_send(self, request: Request) -> None:
        def answered(yes: bool | None) -> None:
            if yes:
                self._say(Text(f"… {request.short}: sent, waiting for the answer", "italic"))
                self._send(request)
            else:
                self._say(Text(f"{request.short}: cancelled, nothing sent", "dim"))

        self.push_screen(ConfirmDialog(request.what), answered)

    @work(group="commands", exit_on_error=False)
    async def _send(self, request: Request) -> None:
        """Send one request and show its answer (runs as a worker: network I/O)."""
        try:
            ack = await self.requester.request(request.topic, request.payload)
        except RequestError as exc:
            self.last_error = exc
            line = Text()
            line.append(" NO ANSWER ", "bold red reverse")
            line.append(f" {request.short}: {exc}")
            self._say(line)
            return
        self.last_ack = ack
        line = Text(f"{request.short}: ")
        line.append_text(render.ack_text(ack))
        self._say(line)
        if not ack.ok:
            self.bell()

    def _say(self, text: Text) -> None:
        self.query_one("#command", Static).update(text)


@functools.cache
def _zone(name: str) -> tzinfo:
    """A zone by IANA name; an unknown name falls back to the sites' default (never this machine's)."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo(DEFAULT_SITE_TZ)
