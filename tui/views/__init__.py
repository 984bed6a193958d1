"""The dashboard's views: one module per domain (lighting, charging, displays, waste) and the
shared alarms, each of the same shape (see `tui.views.base`), and the list of views by key."""

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
