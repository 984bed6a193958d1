"""Modal screens every view shares: help, the base of the command forms, the confirmation.

Each domain's own forms (the lighting override, the charger limit, the display message, the
alarm ack) live in its view module (`tui/views/{domain}.py`) on `FormDialog`.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from dataclasses import dataclass
from typing import ClassVar, TypeVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.content import Content
from textual.screen import ModalScreen
from textual.widget import Widget
from textual.widgets import Button, Input, Label, RadioButton, Static

from edge.payloads import MAX_DURATION_S

HELP = """\
[b]Keys[/b]

  1  Overview      site health, energy against the baselines, alarms
  2  Lights        table of lamps: filter as you type, sort by column
  3  Map           the district (inventory positions) or lamps by segment
  4  Plan          tonight's dimming plan per group
  5  Alarms        open alarms, most severe first, and the alarm history
  6  Charging      feeders' load against their limits, charge points
  7  Displays      what each display shows, car parks, warnings in force
  8  Waste         bins by fill and prediction, today's routes, trucks
  9  Help points   emergency calls (a new one rings), help points
  0  Environment   warnings proposed and in force, rules firing, sensors

  /  filter the table (Enter or Esc: back to the table)
  s  sort by the next column (click a header: sort by it, again: reverse)
  o  override: set a lamp, segment or group to a level for a while   [operator]
  r  resume the schedule for a lamp, segment or group                 [operator]
  R  re-plan tonight's lighting (on the Waste view: the collection) [operator]
  p  pause the selected charge point (Charging view)                  [operator]
  l  limit the selected charge point to a current in A                [operator]
  u  release the selected charge point back to the plan               [operator]
  m  put a message (up to 3 lines) on the selected display            [operator]
  c  clear the operator message of the selected display               [operator]
  a  acknowledge the selected alarm with a comment (Alarms view)      [operator]
  f  force the selected bin into today's collection plan (Waste view) [operator]
  x  exclude the selected bin from every plan                         [operator]
  n  set the selected bin back to automatic planning                  [operator]
  a  acknowledge the selected emergency call (Help points view)       [operator]
  n  add a note to it; c close it with what happened                  [operator]
  i  issue a proposed warning (Environment view); x reject it         [operator]
  w  withdraw the selected warning in force                           [operator]
  ctrl+p  command palette: find a device or an action by name
  ?  this help (also F1)                 q  quit

Every command shows what it will do and asks before it is sent; the
answer (OK, clamped, REFUSED with the reason) appears on the line above
the keys. Symbols: ● on  ◐ dimmed  ○ off  X FAILED  ? offline  · unknown
"""


class HelpScreen(ModalScreen[None]):
    """The keys, in one screen."""

    BINDINGS = [
        Binding("escape,q,question_mark,f1", "dismiss_help", "Close"),
    ]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll { width: 80; max-width: 100%; height: auto; max-height: 100%;
        border: round $accent; background: $surface; padding: 0 1; }
    """

    def __init__(self, role: str) -> None:
        super().__init__()
        self._role = role

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static(HELP + f"\nYou are signed in as [b]{self._role}[/b]. Esc closes this help.")

    def action_dismiss_help(self) -> None:
        self.dismiss(None)


def parse_duration_min(text: str) -> float | None:
    """Minutes from the form as seconds (None: until resumed); ValueError says what is wrong."""
    if not text.strip():
        return None
    try:
        minutes = float(text.strip())
    except ValueError:
        raise ValueError("duration: enter minutes, or leave empty") from None
    if not math.isfinite(minutes) or minutes <= 0 or minutes * 60 > MAX_DURATION_S:
        raise ValueError(f"duration: from 1 to {MAX_DURATION_S // 60} minutes")
    return minutes * 60


class ChoiceButton(RadioButton):
    """A radio button that reads without colour: `(*)` chosen, `( )` not."""

    @property
    def _button(self) -> Content:
        style = self.get_visual_style("toggle--button")
        return Content.assemble("(", ("*" if self.value else " ", style), ")")


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class FormField:
    """One labelled one-line input of a form: its widget id, its label and its hint."""

    id: str
    label: str
    placeholder: str = ""


class FormDialog(ModalScreen[T | None]):
    """A centred form with labelled one-line fields, an error line and buttons; Esc cancels.

    A subclass declares `FIELDS` and `SET_LABEL` and implements `parse`; the base composes
    the widgets, focuses the first input, moves to the next input on Enter, submits on the
    last one (or `#set`) and shows a `ValueError` from `parse` on the `#error` line, so each
    form says only what it asks and how to read the answer.
    """

    FIELDS: ClassVar[tuple[FormField, ...]] = ()
    SET_LABEL: ClassVar[str] = "Set…"
    BINDINGS = [Binding("escape", "cancel", "Cancel")]
    DEFAULT_CSS = """
    FormDialog { align: center middle; }
    FormDialog > Vertical { width: 64; max-width: 100%; height: auto; max-height: 100%;
        border: round $accent; background: $surface; padding: 0 1; }
    FormDialog Horizontal { height: auto; }
    FormDialog .field { height: 1; margin-top: 1; }
    FormDialog .field Label { width: 22; }
    FormDialog .field Input { border: none; height: 1; padding: 0; width: 1fr; }
    FormDialog .field Input:focus { text-style: underline; }
    FormDialog #error { height: auto; color: $error; text-style: bold; }
    FormDialog Button { min-width: 10; margin-right: 1; }
    FormDialog .buttons { margin-top: 1; }
    """

    def __init__(self, title: str, detail: str = "") -> None:
        """`title` and `detail` are shown as plain text (a device id is never read as markup)."""
        super().__init__()
        self._title = title
        self._detail = detail

    @abstractmethod
    def parse(self, values: dict[str, str]) -> T:
        """The form's result from the inputs' text by field id; ValueError says what is wrong."""

    def compose_choices(self) -> ComposeResult:
        """Widgets between the title and the fields (none unless a form has choices)."""
        yield from ()

    def compose_buttons(self) -> ComposeResult:
        """Buttons between `#set` and `#cancel` (none unless a form has another outcome)."""
        yield from ()

    def initial_focus(self) -> Widget:
        """What has the focus when the form opens: the first input."""
        return self.query_one(f"#{self.FIELDS[0].id}", Input)

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(Text.assemble((self._title, "bold"), " (Esc: cancel)"))
            if self._detail:
                yield Static(self._detail, markup=False)
            yield from self.compose_choices()
            for f in self.FIELDS:
                with Horizontal(classes="field"):
                    yield Label(f.label)
                    yield Input(placeholder=f.placeholder, id=f.id)
            yield Static("", id="error")
            with Horizontal(classes="buttons"):
                yield Button(self.SET_LABEL, id="set", variant="primary")
                yield from self.compose_buttons()
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self.initial_focus().focus()

    @on(Input.Submitted)
    def _next_or_submit(self, event: Input.Submitted) -> None:
        ids = [f.id for f in self.FIELDS]
        if event.input.id not in ids:
            return
        at = ids.index(event.input.id)
        if at + 1 < len(ids):
            self.query_one(f"#{ids[at + 1]}", Input).focus()
        else:
            self._submit()

    @on(Button.Pressed, "#set")
    def _submit(self) -> None:
        values = {f.id: self.query_one(f"#{f.id}", Input).value for f in self.FIELDS}
        try:
            result = self.parse(values)
        except ValueError as exc:
            self.query_one("#error", Static).update(str(exc))
            return
        self.dismiss(result)

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)


class ConfirmDialog(ModalScreen[bool]):
    """Says what a command will do; y sends it, n or Esc does not."""

    BINDINGS = [
        Binding("y", "answer(True)", "Send"),
        Binding("n,escape", "answer(False)", "Cancel"),
    ]
    DEFAULT_CSS = """
    ConfirmDialog { align: center middle; }
    ConfirmDialog > Vertical { width: 64; max-width: 100%; height: auto; max-height: 100%;
        border: thick $warning; background: $surface; padding: 0 1; }
    ConfirmDialog #what { height: auto; }
    ConfirmDialog Horizontal { height: auto; margin-top: 1; }
    ConfirmDialog Button { margin-right: 1; }
    """

    def __init__(self, what: str) -> None:
        super().__init__()
        self._what = what

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("[b]Confirm command[/b]")
            yield Static(self._what, id="what", markup=False)
            with Horizontal():
                yield Button("Send (y)", id="yes", variant="warning")
                yield Button("Cancel (n)", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)
