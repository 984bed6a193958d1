"""The command palette (ctrl+p): find any action or device by name.

Actions are the dashboard's commands and views, as the role allows (a viewer finds no command);
choosing one switches to the view it acts on and runs it there, so "force" finds "Force the
selected bin into today's plan" from any view. Devices are every lamp, charge point, display,
bin, truck and open alarm the dashboard knows; choosing one opens its view with the cursor on it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Protocol, runtime_checkable

from textual.command import DiscoveryHit, Hit, Hits, Provider

from tui.model import SiteModel
from tui.views import REGISTRY

MIN_DEVICE_QUERY = 2  # characters before devices are searched (thousands of them)
MAX_DEVICE_HITS = 50


@dataclass(frozen=True, slots=True)
class PaletteAction:
    """One action of the palette: what it is called, the view it needs, the app action it runs."""

    title: str
    help: str
    action: str
    view: str | None = None
    operator: bool = True  # needs the operator role


ACTIONS: tuple[PaletteAction, ...] = (
    PaletteAction("Override a lamp, segment or group", "set a level for a while (o)", "override", "lights"),
    PaletteAction("Resume the schedule", "for a lamp, segment or group (r)", "resume", "lights"),
    PaletteAction("Re-plan tonight's lighting", "compute the night's dimming plan now (R)", "replan", "plan"),
    PaletteAction(
        "Pause a charge point", "the selected one, until released (p)", "pause_charger", "charging"
    ),
    PaletteAction("Limit a charge point", "to a current in A (l)", "limit_charger", "charging"),
    PaletteAction("Release a charge point", "back to the charging plan (u)", "release_charger", "charging"),
    PaletteAction(
        "Put a message on a display", "up to 3 lines, for a while (m)", "display_message", "displays"
    ),
    PaletteAction(
        "Clear a display's message", "back to warnings or guidance (c)", "clear_display", "displays"
    ),
    PaletteAction(
        "Acknowledge an alarm", "the selected open alarm, with a comment (a)", "ack_alarm", "alarms"
    ),
    PaletteAction(
        "Force a bin into today's plan", "the selected bin: collect it today (f)", "force_bin", "waste"
    ),
    PaletteAction("Exclude a bin", "from every plan until set back to automatic (x)", "exclude_bin", "waste"),
    PaletteAction(
        "Set a bin back to automatic", "planned by its fill and prediction (n)", "auto_bin", "waste"
    ),
    PaletteAction("Re-plan today's waste collection", "plan the routes again now (R)", "replan", "waste"),
    PaletteAction("Help", "the keys (?)", "help", None, operator=False),
)


@runtime_checkable
class PaletteHost(Protocol):
    """What the palette needs of the app it runs in (so it need not import the app: no import circle)."""

    @property
    def role(self) -> str: ...

    @property
    def model(self) -> SiteModel: ...

    def action_view(self, view: str) -> None: ...

    def palette_run(self, action: str, view: str | None) -> None: ...

    def palette_select(self, view: str, key: str, table: str | None = None) -> None: ...


class DashboardCommands(Provider):
    """Actions and devices of the dashboard for the command palette."""

    @property
    def _dashboard(self) -> PaletteHost:
        app = self.app
        if not isinstance(app, PaletteHost):
            raise TypeError(f"the dashboard's palette runs in a PaletteHost, not in {type(app).__name__}")
        return app

    def _actions(self) -> Iterator[tuple[str, str, Callable[[], None]]]:
        app = self._dashboard
        for i, v in enumerate(REGISTRY):
            yield f"Show {v.title}", f"view {i + 1}", partial(app.action_view, v.id)
        for a in ACTIONS:
            if a.operator and app.role != "operator":
                continue
            yield a.title, a.help, partial(app.palette_run, a.action, a.view)

    def _devices(self) -> Iterator[tuple[str, str, Callable[[], None]]]:
        app = self._dashboard
        m = app.model
        for lamp_id, s in m.lamps.items():
            yield (
                f"Lamp {lamp_id}",
                f"{s.segment} · {s.group}",
                partial(app.palette_select, "lights", lamp_id),
            )
        for cid, c in m.chargers.items():
            yield f"Charge point {cid}", f"feeder {c.feeder}", partial(app.palette_select, "charging", cid)
        for did in m.displays:
            yield f"Display {did}", "what it shows now", partial(app.palette_select, "displays", did)
        for bid, b in m.bins.items():
            yield f"Bin {bid}", f"zone {b.zone or '-'} · {b.kind}", partial(app.palette_select, "waste", bid)
        for tid in m.trucks:
            yield (
                f"Truck {tid}",
                "its route's progress",
                partial(app.palette_select, "waste", tid, "#truck-table"),
            )
        for (dev, code), a in m.active_alarms.items():
            key = f"{dev}/{code}"
            yield f"Alarm {code} on {dev}", a.severity, partial(app.palette_select, "alarms", key)

    async def discover(self) -> Hits:
        for title, help_text, command in self._actions():
            yield DiscoveryHit(title, command, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for title, help_text, command in self._actions():
            score = matcher.match(title)
            if score > 0:
                yield Hit(score, matcher.highlight(title), command, help=help_text)
        if len(query.strip()) < MIN_DEVICE_QUERY:
            return
        found = 0
        needle = query.strip().lower()
        for title, help_text, command in self._devices():
            # Devices by substring first (ids are typed, not fuzzy-remembered), capped.
            if needle in title.lower():
                found += 1
                yield Hit(0.9, matcher.highlight(title), command, help=help_text)
                if found >= MAX_DEVICE_HITS:
                    return
