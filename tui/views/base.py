"""What every domain view builds on: the kinds of change, the lenient payload reading, a request.

A domain's view module (`tui/views/{domain}.py`) holds the same parts: its payload readings,
its slice of the site model (state, queries, and the fold of its own topics), its table
columns and rows, its Overview lines, its pane (layout and `show`), and its commands as
`Request`s. Nothing here knows Textual's app or the network.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict

from edge.payloads import API_VERSION

PREFIX = f"dos/{API_VERSION}"  # every site's topics are under {PREFIX}/{site}/


class Change(enum.StrEnum):
    """What a message changed, so the app refreshes only the views that show it."""

    LAMP = "lamp"
    CONTROLLER = "controller"
    ALARM = "alarm"
    PLAN = "plan"
    STATUS = "status"
    CHARGING = "charging"
    DISPLAYS = "displays"
    WASTE = "waste"
    RESULT = "result"
    IGNORED = "ignored"
    BAD = "bad"


class Reading(BaseModel):
    """The dashboard's reading of a payload: the fields it shows, unknown ones ignored.

    Payloads read this way (not with strict API models) do not blank a view of an older
    dashboard when a daemon adds a field.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)


@dataclass(kw_only=True)
class Slice:
    """One domain's part of the site model (a mixin of `tui.model.SiteModel`).

    `version` is the model's change counter: a slice stamps what it changes with
    `version + 1` (the version the change will have), so a big table can take just the rows
    that changed since it last looked. Slices are mixins rather than members so that the
    model reads as one object (`model.lamps`, `model.charger_rows()`) to views and tests.
    """

    version: int = 0


@dataclass(frozen=True, slots=True)
class Request:
    """A command ready for the confirmation dialog: what it will do, where it goes, what it says."""

    what: str
    topic: str
    payload: dict[str, object]
    short: str  # the command in a few words, for the command line ("pause CP-01")
