"""The operator dashboard (Textual): a client of the MQTT API, for one site.

Data flows one way: the MQTT worker (`tui.client`) posts `MqttEvent` messages up to the
app, the app folds them into its `SiteModel` and asks the visible view to show it. The app
knows no view by name: it is built from `tui.views.REGISTRY` (panes, title, keys, CSS), and
each view (`tui/views/{domain}.py`) lays out its pane, turns its slice of the model into rows,
and runs its commands: its forms, then `Request`s that the app passes through the
confirmation dialog to a `Requester` (the client, or a fake in tests) in a worker. The answer
lands on the command line above the footer.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Mapping
from datetime import tzinfo
from typing import ClassVar, Literal, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from rich.text import Text
from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.command import Provider
from textual.css.query import NoMatches
from textual.message import Message
from textual.screen import ModalScreen
from textual.timer import Timer
from textual.widgets import ContentSwitcher, Footer, Static

from edge.payloads import Ack
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
from tui.model import SLICES, SiteModel
from tui.palette import DashboardCommands
from tui.screens import ConfirmDialog, HelpScreen
from tui.views import REGISTRY, view_key
from tui.views.base import Change, Command, DomainView, Interrupt, Request, ShowContext
from tui.widgets import Banner, FilterTable, VirtualTable

DEFAULT_SITE_TZ = "Europe/Berlin"  # the default of a site's `timezone` (edge/settings.py)

Role = Literal["operator", "viewer"]
T = TypeVar("T")
NARROW = 110  # below this many columns the title names only the current view
REFRESH_S = 0.2  # at most this often the visible view is redrawn from the model
# While a burst pours in (a city's retained state on connect: 57,000 messages), a redraw of the
# 53,800-row lamps table re-sorts and re-lays it out: every 0.2 s that was about half of the
# load's CPU. Batches this large redraw at most every BURST_REFRESH_S; the first small batch
# after them brings the redraw back to REFRESH_S.
BURST_BATCH = 500
BURST_REFRESH_S = 1.0
TICK_S = 10.0  # a view that shows ages (`DomainView.ticks`) is redrawn this often while visible
INTERRUPT_RETRY_S = 1.0  # an interrupt that found a form open takes the screen when it closes

FIRST_VIEW = REGISTRY[0].id  # shown at start

_missing = {v.slice for v in REGISTRY if v.slice is not None} - set(SLICES)
if _missing:  # a registered view whose slice `SiteModel` does not mix in would never see its topics
    raise TypeError(f"SiteModel lacks the slices of registered views: {sorted(c.__name__ for c in _missing)}")

# Every view's command keys by action, in registry order; an action two views share ("replan":
# the lighting's site-wide, the Waste view's own) is bound once, with the first view's label.
COMMAND_KEYS: dict[str, Command] = {}
for _cmd in (c for v in REGISTRY for c in v.commands):
    COMMAND_KEYS.setdefault(_cmd.action, _cmd)
# action -> the view that runs it wherever the visible view does not claim the keys
SITE_WIDE: dict[str, str] = {c.action: v.id for v in REGISTRY for c in v.commands if c.site_wide}


# The screen's frame; each view adds its own pane's sizes (`DomainView.css`).
LAYOUT_CSS = """
Screen { layout: vertical; }
#title { height: 1; background: $primary-background; }
ContentSwitcher { height: 1fr; }
#command { height: auto; max-height: 3; }
#alert { height: auto; max-height: 3; background: $error; color: $text; text-style: bold; display: none; }
#alert.-shown { display: block; }
""" + "".join(v.css for v in REGISTRY)


def _keys() -> list[BindingType]:
    """The number key of each view, the table keys, every view's command keys (each once), quit."""
    return [
        *(Binding(view_key(i), f"view('{v.id}')", v.title, show=False) for i, v in enumerate(REGISTRY)),
        Binding("question_mark,f1", "help", "Help", key_display="?"),
        Binding("slash", "filter", "Filter", key_display="/"),
        Binding("s", "sort", "Sort"),
        *(Binding(c.key, c.action, c.label) for c in COMMAND_KEYS.values()),
        Binding("q", "quit", "Quit"),
    ]


KEYS = _keys()


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
        self.view = FIRST_VIEW
        self._pending: set[Change] = set()
        self._refresh_timer: Timer | None = None
        self._refresh_due = 0.0  # when the timer fires (monotonic)
        self._last_refresh = 0.0
        self._burst = False
        self._alert_text = ""
        self._interrupt_due: Interrupt | None = None  # waits for an open form to close
        self.views: dict[str, DomainView] = {v.id: v() for v in REGISTRY}

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
        yield Static("", id="alert")
        with ContentSwitcher(initial=FIRST_VIEW):
            for view in self.views.values():
                yield from view.compose()
        yield Static("", id="command")
        yield Footer()

    def on_mount(self) -> None:
        if self.connect and self.client is not None:
            self.query_one(Banner).message = f"connecting to {self.client.url.safe()} …"
            self._mqtt_worker(self.client)
        self._refresh_view(force=True)
        self.set_interval(TICK_S, self._tick, name="tick")
        self.set_interval(INTERRUPT_RETRY_S, self._interrupt_when_free, name="interrupt-retry")

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
        for i, v in enumerate(REGISTRY):
            name = v.title
            if v.id == getattr(self, "view", FIRST_VIEW):
                out.append(" ")
                out.append(f"[{view_key(i)} {name}]", "bold reverse")
            else:
                out.append(f" {view_key(i)}" if narrow else f" {view_key(i)} {name}")
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
            self._burst = len(ev.messages) >= BURST_BATCH
            self._update_alert()
            self._interrupt(self.model.take_interrupts())
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

    # ----- what must take the operator: a line on every page, the bell, the view on the item ----

    def _update_alert(self) -> None:
        """The views' alert lines (an unacknowledged emergency call) above every page, while they last."""
        lines = [t for v in REGISTRY if (t := v.alert(self.model, self.tz)) is not None]
        text = Text("\n").join(Text.assemble("!! ", line) for line in lines)
        if text.plain == self._alert_text:
            return  # an update lays the screen out again: only when it changed
        self._alert_text = text.plain
        alert = self.query_one("#alert", Static)
        alert.update(text)
        alert.set_class(bool(lines), "-shown")

    def _interrupt(self, interrupts: list[Interrupt]) -> None:
        """Ring, and open the view on the first new item (once any open form is closed)."""
        if not interrupts:
            return
        self.bell()
        self._interrupt_due = interrupts[0]
        self._interrupt_when_free()

    def _interrupt_when_free(self) -> None:
        """Take the screen for a waiting interrupt, unless a form or dialog is open: pulling the
        view from under a half-typed command would send it to the wrong place."""
        due = self._interrupt_due
        if due is None or len(self.screen_stack) > 1:
            return
        self._interrupt_due = None
        with contextlib.suppress(NoMatches):
            self.action_view(due.view)
            if not self._table(due.table).select(due.key):
                self.say(Text(f"{due.text}: not in the table (any more)", "italic"))

    def _tick(self) -> None:
        """Redraw the visible view if it shows ages (they grow without any message)."""
        if self.views[self.view].ticks and len(self.screen_stack) == 1:
            with contextlib.suppress(NoMatches):
                self._refresh_view(force=True)

    def _schedule_refresh(self) -> None:
        """Refresh now, or once REFRESH_S after the last refresh: a burst of batches costs one redraw."""
        now = time.monotonic()
        wait = self._last_refresh + (BURST_REFRESH_S if self._burst else REFRESH_S) - now
        if self._refresh_timer is not None:
            if self._refresh_due <= now + wait:
                return
            self._refresh_timer.stop()  # a burst ended: redraw sooner than it planned
            self._refresh_timer = None
        if wait <= 0:
            self._flush_refresh()
        else:
            self._refresh_due = now + wait
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
        view = self.views[self.view]
        if not force and (changes is None or not (changes & view.shows)):
            return
        view.show(self._show_context())

    def _show_context(self) -> ShowContext:
        return ShowContext(self, self.model, self.tz, self.inventory, REGISTRY)

    def on_virtual_table_cursor_moved(self, event: VirtualTable.CursorMoved) -> None:
        self.views[self.view].cursor_moved(self._show_context(), event.table)

    # ----- navigation --------------------------------------------------------------------------

    def action_view(self, view: str) -> None:
        """Show one of the views."""
        self.view = view
        self.query_one(ContentSwitcher).current = view
        self.query_one("#title", Static).update(self._title_text())
        self._refresh_view(force=True)
        self.refresh_bindings()
        self.views[view].focus(self)

    def _table(self, selector: str) -> FilterTable:
        return self.query_one(selector, FilterTable)

    def _active_table(self) -> FilterTable:
        """The table the keys act on: on views with two tables, whichever has the focus."""
        tables = self.views[self.view].tables
        for selector in tables[1:]:
            if self._table(selector).has_focus_within:
                return self._table(selector)
        return self._table(tables[0])

    def palette_run(self, action: str, view: str | None) -> None:
        """Run an action chosen in the palette, on the view it acts on."""
        if view is not None and view != self.view:
            self.action_view(view)
        if self.check_action(action, ()):
            getattr(self, f"action_{action}")()

    def palette_select(self, view: str, key: str, table: str | None = None) -> None:
        """Open a view with the cursor on a device (chosen in the palette); `table`: not its main one."""
        self.action_view(view)
        if not self._table(table or self.views[view].tables[0]).select(key):
            self.say(Text(f"{key}: not in the table (any more)", "italic"))

    def action_help(self) -> None:
        self.push_screen(HelpScreen(self.role))

    def action_filter(self) -> None:
        if not self.views[self.view].tables:
            self.action_view(next(v.id for v in REGISTRY if v.tables))
        self._active_table().filter_input.focus()

    def action_sort(self) -> None:
        if self.views[self.view].tables:
            self._active_table().next_sort()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """A viewer does not see (or run) the command actions; a command shows where it applies."""
        if action in COMMAND_KEYS:
            return self.role == "operator" and self._command_view(action) is not None
        if action == "sort" and not self.views[self.view].tables:
            return None
        return True

    # ----- commands: each view words them, the app asks, sends and shows the answer ------------

    def _command_view(self, action: str) -> DomainView | None:
        """The view that runs a command here: the visible view's own, else a site-wide one's.

        A view that is `exclusive` (it acts on its own devices) offers only its own commands.
        """
        view = self.views[self.view]
        if any(c.action == action for c in view.commands):
            return view
        owner = SITE_WIDE.get(action)
        if owner is None or view.exclusive:
            return None
        return self.views[owner]

    def run_command(self, action: str) -> None:
        """A command key: the view it applies to runs it (bound as `action_{action}` below)."""
        if not self.check_action(action, ()):
            return
        view = self._command_view(action)
        if view is not None:
            view.command(action, self)

    def selected(self, table: str) -> str | None:
        """The key under the cursor in a table (by selector)."""
        return self._table(table).selected_key

    def ask(self, screen: ModalScreen[T], then: Callable[[T | None], None]) -> None:
        """Open a view's form; `then` gets what was filled in (None: cancelled)."""
        self.push_screen(screen, then)

    @property
    def operator_name(self) -> str:
        """Who the daemon records for an ack: the broker account, else this dashboard's client id."""
        if self.client is not None:
            return self.client.url.username or self.client.client_id
        return "dashboard"

    def confirm_then_send(self, request: Request) -> None:
        """Show what a request will do; send it only on yes."""

        def answered(yes: bool | None) -> None:
            if yes:
                self.say(Text(f"… {request.short}: sent, waiting for the answer", "italic"))
                self._send(request)
            else:
                self.say(Text(f"{request.short}: cancelled, nothing sent", "dim"))

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
            self.say(line)
            return
        self.last_ack = ack
        line = Text(f"{request.short}: ")
        line.append_text(render.ack_text(ack))
        self.say(line)
        if not ack.ok:
            self.bell()

    def say(self, text: Text) -> None:
        """Show a line on the command line above the footer."""
        self.query_one("#command", Static).update(text)


def _command_action(action: str) -> Callable[[DashboardApp], None]:
    def run(app: DashboardApp) -> None:
        app.run_command(action)

    run.__name__ = run.__qualname__ = f"action_{action}"
    run.__doc__ = f"The {action!r} key of the views that declare it."
    return run


# Textual runs a key's action as the app's `action_{name}`: one per registered command.
for _action in COMMAND_KEYS:
    setattr(DashboardApp, f"action_{_action}", _command_action(_action))


@functools.cache
def _zone(name: str) -> tzinfo:
    """A zone by IANA name; an unknown name falls back to the sites' default (never this machine's)."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo(DEFAULT_SITE_TZ)
