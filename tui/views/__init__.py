"""The dashboard's views, and the registry the app is built from.

`REGISTRY` lists every pane in title-bar order (its position is its number key: 1-9, then 0). The app
knows no view by name, nor do the Overview and the palette: it composes each view's pane, redraws the visible one when a change it
`shows` arrives, binds every view's `commands` to keys, offers a command where it applies
(the visible view's own, else a `site_wide` one unless the view is `exclusive`), and routes the
key to the view that declared it. `SiteModel` folds each view's `slice` (see `tui.model`).

A new domain's view is one module, `tui/views/{domain}.py`, holding:
- its readings of its payloads (`Reading` subclasses or the API's models);
- its model slice: a `Slice` dataclass with its state, its queries, `fold(parts, payload)`
  for its own topics (`fold_state` for a retained `.../state` topic, `Stamps` for a table too
  big to rebuild) and, if it has a plan, `fold_plan(domain, msg)`;
- its table columns and rows;
- its commands as `Request`s, and its forms on `tui.screens.FormDialog` (declared `FIELDS`,
  `SET_LABEL` and one `parse`), opened with `ask_then_send`;
- one `DomainView` subclass: `id`, `title`, `shows` (its `Change` kinds), `tables` (the one
  the keys act on first), `commands` (`Command(key, action, label)`), `exclusive`, `slice`,
  `css` (its pane's sizes), `palette` (its commands as the ctrl+p palette lists them), and
  `compose()`, `show(ctx)`, `command(action, host)`; `overview_lines` (its lines on the
  Overview) and `palette_devices` (the devices the palette finds) if it has any.
Then one line in `REGISTRY` below, and its slice among `SiteModel`'s bases (static, so that
type checking knows `model.{field}`; the app refuses to start if a registered slice is missing).
"""

from __future__ import annotations

from tui.views.alarms import AlarmsView
from tui.views.base import DomainView
from tui.views.charging import ChargingView
from tui.views.displays import DisplaysView
from tui.views.environment import EnvironmentView
from tui.views.helppoints import HelpPointsView
from tui.views.lighting import LightsView
from tui.views.pages import MapPage, OverviewPage, PlanPage
from tui.views.waste import WasteView

REGISTRY: tuple[type[DomainView], ...] = (
    OverviewPage,
    LightsView,
    MapPage,
    PlanPage,
    AlarmsView,
    ChargingView,
    DisplaysView,
    WasteView,
    HelpPointsView,
    EnvironmentView,
)
if len(REGISTRY) > 10:  # the digits 1-9 and 0 are the view keys
    raise TypeError("at most 10 views: each has a digit key")


def view_key(index: int) -> str:
    """The number key of the view at `index` in `REGISTRY`: 1-9, then 0 for the tenth."""
    return str((index + 1) % 10)
