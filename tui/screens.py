"""Modal screens every view shares: help, the base of the command forms, the confirmation.

Each domain's own forms (the lighting override, the charger limit, the display message, the
alarm ack) live in its view module (`tui/views/{domain}.py`) on `FormDialog`.
"""

from __future__ import annotations

import math
from typing import TypeVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Button, Label, RadioButton, Static

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


class FormDialog(ModalScreen[T]):
    """A centred form with labelled one-line fields, an error line and buttons; Esc cancels."""

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
