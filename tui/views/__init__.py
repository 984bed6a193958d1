"""The dashboard's views: one module per domain (lighting, charging, displays, waste) and the
shared alarms, each of the same shape (see `tui.views.base`), and the list of views by key.

A fifth domain's view is `tui/views/{domain}.py` with the parts the others have: its readings
of its payloads, a `Slice` mixin with a `_fold_{domain}` (added to `SiteModel` and its
`_folds()`), rows and columns, `overview_lines` (called from `tui.render.overview`),
`compose()` and `show()` (called from the app's `compose` and `_refresh_view`), and its
commands as `Request`s; then an entry in `VIEWS` and `SHOWS` below.
"""

from __future__ import annotations

from tui.views.base import Change

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
