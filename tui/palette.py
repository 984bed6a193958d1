"""The command palette (ctrl+p): find any action or device by name.

Actions are the dashboard's commands and views, as the role allows (a viewer finds no command);
choosing one switches to the view it acts on and runs it there, so "force" finds "Force the
selected bin into today's plan" from any view. Devices are every lamp, charge point, display,
bin, truck and open alarm the dashboard knows; choosing one opens its view with the cursor on it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from typing import Protocol, runtime_checkable

from textual.command import DiscoveryHit, Hit, Hits, Provider

from tui.model import SiteModel
from tui.views import REGISTRY, view_key
from tui.views.base import PaletteAction

MIN_DEVICE_QUERY = 2  # characters before devices are searched (thousands of them)
MAX_DEVICE_HITS = 50


HELP = PaletteAction("Help", "the keys (?)", "help", None, operator=False)


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
            yield f"Show {v.title}", f"view {view_key(i)}", partial(app.action_view, v.id)
        for a in (*(a for v in REGISTRY for a in v.palette), HELP):
            if a.operator and app.role != "operator":
                continue
            yield a.title, a.help, partial(app.palette_run, a.action, a.view)

    def _devices(self) -> Iterator[tuple[str, str, Callable[[], None]]]:
        app = self._dashboard
        for v in REGISTRY:
            for d in v.palette_devices(app.model):
                yield d.title, d.help, partial(app.palette_select, d.view, d.key, d.table)

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
