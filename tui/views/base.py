"""What every view builds on: the kinds of change, the lenient payload reading, the model slice,
a request, and the shape the app drives (`DomainView`, its `Command`s, `ShowContext`, `Host`).

A domain's view module (`tui/views/{domain}.py`) holds the same parts: its payload readings,
its slice of the site model (state, queries, and the fold of its own topics), its table
columns and rows, its Overview lines, its pane (a `DomainView`: layout, `show`, commands),
its forms, and its commands as `Request`s. Nothing here knows the app or the network: a view
reaches the app only through `Host`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import tzinfo
from typing import TYPE_CHECKING, ClassVar, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict
from rich.text import Text
from textual.app import ComposeResult
from textual.dom import DOMNode
from textual.screen import ModalScreen

from edge.payloads import API_VERSION, PlanMessage
from tui.widgets import FilterTable, VirtualTable

if TYPE_CHECKING:
    from tui.inventory import Inventory
    from tui.model import SiteModel

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

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
    HELPPOINTS = "helppoints"
    ENVIRONMENT = "environment"
    RESULT = "result"
    IGNORED = "ignored"
    BAD = "bad"


class Reading(BaseModel):
    """The dashboard's reading of a payload: the fields it shows, unknown ones ignored.

    Payloads read this way (not with strict API models) do not blank a view of an older
    dashboard when a daemon adds a field.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)


@dataclass(frozen=True, slots=True)
class Interrupt:
    """Something that must take the operator at once (a new emergency call): the app rings the
    bell, opens `view` and puts the cursor of `table` on `key`."""

    view: str
    table: str
    key: str
    text: str


@dataclass(kw_only=True)
class Slice:
    """One domain's part of the site model (a mixin of `tui.model.SiteModel`).

    `version` is the model's change counter: a slice stamps what it changes with
    `version + 1` (the version the change will have), so a big table can take just the rows
    that changed since it last looked. Slices are mixins rather than members so that the
    model reads as one object (`model.lamps`, `model.charger_rows()`) to views and tests.
    """

    version: int = 0
    # What a fold raised that must take the operator; the app takes them after each batch.
    interrupts: list[Interrupt] = field(default_factory=list)

    def fold(self, parts: list[str], payload: bytes) -> Change | None:
        """Fold a message on one of this slice's topics (`parts`: the topic under the site's base).

        None: not one of its topics. `SiteModel` calls every slice's own `fold` in turn (each
        mixin defines this name; the model calls them by class, not through the MRO).
        """
        return None

    def fold_plan(self, domain: str, msg: PlanMessage) -> Change | None:
        """Take this slice's plan out of a `plans/{domain}` message (None: another domain's)."""
        return None


@dataclass
class Stamps:
    """The model version at which each key of a big table last changed or went away, so that
    its view takes only the rows changed since it last looked (53,800 lamps are not rebuilt).

    Each dict is kept in version order (a touched key moves to the end), so `since` reads
    only the keys changed after the version asked for, from the end.
    """

    changed: dict[str, int] = field(default_factory=dict)
    gone: dict[str, int] = field(default_factory=dict)

    def touch(self, key: str, version: int) -> None:
        """`key` is (again) in the table as of `version`."""
        self.changed.pop(key, None)
        self.changed[key] = version
        self.gone.pop(key, None)

    def drop(self, key: str, version: int) -> None:
        """`key` left the table at `version`."""
        self.changed.pop(key, None)
        self.gone.pop(key, None)
        self.gone[key] = version

    def since(self, version: int) -> tuple[list[str], list[str]]:
        """The keys changed and the keys gone after `version` (each in the order they changed)."""
        return _after(self.changed, version), _after(self.gone, version)


def _after(stamps: dict[str, int], version: int) -> list[str]:
    out = []
    for key, v in reversed(stamps.items()):
        if v <= version:
            break
        out.append(key)
    out.reverse()
    return out


def index_by(states: Mapping[str, M], key: Callable[[M], str]) -> dict[str, list[str]]:
    """The ids of `states` grouped by `key(state)`, each group in id order."""
    out: dict[str, list[str]] = {}
    for dev_id in sorted(states):
        out.setdefault(key(states[dev_id]), []).append(dev_id)
    return out


def fold_state(states: dict[str, M], key: str, payload: bytes, model: type[M]) -> M | None:
    """Fold a retained `.../{key}/state` message into `states`: the state read, or None when the
    payload is empty (the daemon cleared the retained message, so the device is gone)."""
    if not payload:
        states.pop(key, None)
        return None
    state = states[key] = model.model_validate_json(payload)
    return state


@dataclass(frozen=True, slots=True)
class Request:
    """A command ready for the confirmation dialog: what it will do, where it goes, what it says."""

    what: str
    topic: str
    payload: dict[str, object]
    short: str  # the command in a few words, for the command line ("pause CP-01")


# ----- the shape of a view, as the app drives it -------------------------------------------------


@dataclass(frozen=True, slots=True)
class Command:
    """One operator key of a view: the key, the app action it runs, its footer label.

    A `site_wide` command is also offered on every view that is not `exclusive` (the lighting
    override works from the Overview, the Map, the Plan and the Alarms view).
    """

    key: str
    action: str
    label: str
    site_wide: bool = False


@dataclass(frozen=True, slots=True)
class PaletteAction:
    """One action of the command palette: what it is called, the view it needs, the app action it runs."""

    title: str
    help: str
    action: str
    view: str | None = None
    operator: bool = True  # needs the operator role


@dataclass(frozen=True, slots=True)
class PaletteDevice:
    """One device the palette finds: choosing it opens `view` with the cursor on `key` in `table`."""

    title: str
    help: str
    view: str
    key: str
    table: str | None = None


@dataclass(frozen=True, slots=True)
class ShowContext:
    """What a view draws from: the app's widget tree, the model, the site's zone, the inventory."""

    root: DOMNode
    model: SiteModel
    tz: tzinfo
    inventory: Inventory | None = None
    views: tuple[type[DomainView], ...] = ()  # the registry, for the pages that draw every domain


class Host(Protocol):
    """What a view's commands need of the app (so views never import it: no import circle)."""

    @property
    def model(self) -> SiteModel: ...

    @property
    def tz(self) -> tzinfo: ...

    @property
    def operator_name(self) -> str: ...

    def selected(self, table: str) -> str | None:
        """The key under the cursor in a table (by selector)."""
        ...

    def say(self, text: Text) -> None:
        """Show a line on the command line above the footer."""
        ...

    def ask(self, screen: ModalScreen[T], then: Callable[[T | None], None]) -> None:
        """Open a form; `then` gets what was filled in (None: cancelled)."""
        ...

    def confirm_then_send(self, request: Request) -> None:
        """Show what a request will do, and send it if the operator says yes."""
        ...


def ask_then_send(
    host: Host, form: ModalScreen[T | None], request: Callable[[T], Request], name: str
) -> None:
    """Open a command's form; what is filled in goes to the confirmation as `request(...)`,
    and a cancelled form says so on the command line (`name: cancelled, nothing sent`)."""

    def answered(filled: T | None) -> None:
        if filled is None:
            host.say(Text(f"{name}: cancelled, nothing sent", "dim"))
            return
        host.confirm_then_send(request(filled))

    host.ask(form, answered)


class DomainView:
    """One pane of the dashboard, registered in `tui.views.REGISTRY`; the app only iterates these.

    A subclass sets the class attributes (the app reads them for its title, keys and CSS before
    any instance exists) and overrides `compose`, `show` and, if it has commands, `command`.
    The app makes one instance per app, so a view may keep state (what its tables last saw).
    """

    id: ClassVar[str]  # the pane's widget id and the view's name in `action_view`
    title: ClassVar[str]  # in the title bar and the palette
    shows: ClassVar[frozenset[Change]]  # the kinds of change that redraw it
    tables: ClassVar[tuple[str, ...]] = ()  # selectors: the table keys act on, then the others
    commands: ClassVar[tuple[Command, ...]] = ()
    exclusive: ClassVar[bool] = False  # its own commands replace the site-wide ones here
    slice: ClassVar[type[Slice] | None] = None  # its part of `SiteModel`, if any
    css: ClassVar[str] = ""  # the sizes of its pane's parts (ids are its own)
    palette: ClassVar[tuple[PaletteAction, ...]] = ()  # its commands, as the palette lists them
    ticks: ClassVar[bool] = False  # redrawn every few seconds while visible (it shows ages)

    @classmethod
    def overview_lines(cls, out: Text, model: SiteModel, tz: tzinfo | None) -> None:
        """Its lines on the Overview page, in registry order (default: none)."""

    @classmethod
    def palette_devices(cls, model: SiteModel) -> Iterator[PaletteDevice]:
        """The devices it shows, for the palette to find (default: none)."""
        return iter(())

    @classmethod
    def alert(cls, model: SiteModel, tz: tzinfo | None) -> Text | None:
        """What must stay in view on every page until someone acts (default: nothing)."""
        return None

    def compose(self) -> ComposeResult:
        """The pane: one widget with `id == self.id` (the app puts it in its ContentSwitcher)."""
        raise NotImplementedError

    def show(self, ctx: ShowContext) -> None:
        """Hand the pane's widgets fresh data."""
        raise NotImplementedError

    def command(self, action: str, host: Host) -> None:
        """Run one of `commands` (the app has checked the role and that it applies here)."""
        raise NotImplementedError(action)

    def focus(self, root: DOMNode) -> None:
        """Give the pane the focus when it is shown: its main table, else the pane itself."""
        if self.tables:
            root.query_one(self.tables[0], FilterTable).table.focus()
        else:
            root.query_one(f"#{self.id}").focus()

    def cursor_moved(self, ctx: ShowContext, table: VirtualTable) -> None:
        """The cursor moved in one of the pane's tables (default: nothing depends on it)."""
