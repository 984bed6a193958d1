"""Modal screens: help, the command forms (override, charger limit, display message, alarm ack), and the confirmation every command passes through."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, RadioButton, RadioSet, Static

from edge.payloads import MAX_DURATION_S

Scope = Literal["lights", "segments", "groups"]
SCOPE_WORD: dict[Scope, str] = {"lights": "lamp", "segments": "segment", "groups": "group"}


@dataclass(frozen=True, slots=True)
class Target:
    """What a lighting command addresses: one lamp, a road segment or a planning group."""

    scope: Scope
    name: str
    lamps: int = 1

    def describe(self) -> str:
        word = SCOPE_WORD[self.scope]
        if self.scope == "lights":
            return f"{word} {self.name}"
        return f"{word} {self.name} ({self.lamps} lamp{'s' if self.lamps != 1 else ''})"


@dataclass(frozen=True, slots=True)
class Override:
    """What the operator filled in: set a level (for a while) or resume the schedule."""

    target: Target
    action: Literal["set_level", "resume_schedule"]
    level: float | None = None
    duration_s: float | None = None


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


def parse_level(text: str) -> float:
    """A level 0..100 from the form; ValueError says what is wrong."""
    try:
        level = float(text.strip().rstrip("%"))
    except ValueError:
        raise ValueError("level: enter a number from 0 to 100") from None
    if not math.isfinite(level) or not 0 <= level <= 100:
        raise ValueError("level: must be from 0 to 100")
    return level


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


MAX_LIMIT_A = 1000.0


def parse_amps(text: str) -> float:
    """A charging current in A from the form; ValueError says what is wrong.

    Only nonsense is refused here: the daemon's interlock decides what a feeder allows
    (it clamps, turns 0-6 A into 0, or refuses with its reason).
    """
    try:
        amps = float(text.strip().upper().rstrip("A").strip())
    except ValueError:
        raise ValueError("current: enter amperes, e.g. 16") from None
    if not math.isfinite(amps) or not 0 <= amps <= MAX_LIMIT_A:
        raise ValueError(f"current: from 0 to {MAX_LIMIT_A:g} A")
    return amps


@dataclass(frozen=True, slots=True)
class ChargerLimitForm:
    """What the operator filled in to limit a charge point."""

    charger: str
    current_a: float
    duration_s: float | None = None


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


class OverrideDialog(FormDialog[Override | None]):
    """Choose the target, a level and a duration (or resume the schedule)."""

    DEFAULT_CSS = """
    OverrideDialog RadioSet { width: 100%; height: auto; }
    OverrideDialog .field Input { border: none; height: 1; padding: 0; width: 12; }
    """

    def __init__(self, targets: Sequence[Target], *, resume: bool = False) -> None:
        super().__init__()
        self._targets = tuple(targets)
        self._resume = resume

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("[b]Lighting override[/b] (Esc: cancel)")
            with RadioSet(id="target"):
                for i, t in enumerate(self._targets):
                    yield ChoiceButton(t.describe(), value=i == 0, id=f"scope-{t.scope}")
            with Horizontal(classes="field"):
                yield Label("Level 0-100 %:")
                yield Input(placeholder="e.g. 40", id="level")
            with Horizontal(classes="field"):
                yield Label("Duration (minutes):")
                yield Input(placeholder="empty: until resumed", id="duration")
            yield Static("", id="error")
            with Horizontal(classes="buttons"):
                yield Button("Set level…", id="set", variant="primary")
                yield Button("Resume schedule…", id="resume")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        (self.query_one("#resume", Button) if self._resume else self.query_one("#level", Input)).focus()

    @property
    def target(self) -> Target:
        index = self.query_one(RadioSet).pressed_index
        return self._targets[index if index >= 0 else 0]

    def _error(self, text: str) -> None:
        self.query_one("#error", Static).update(text)

    @on(Input.Submitted, "#level")
    def _level_done(self) -> None:
        self.query_one("#duration", Input).focus()

    @on(Input.Submitted, "#duration")
    @on(Button.Pressed, "#set")
    def _set(self) -> None:
        try:
            level = parse_level(self.query_one("#level", Input).value)
            duration = parse_duration_min(self.query_one("#duration", Input).value)
        except ValueError as exc:
            self._error(str(exc))
            return
        self.dismiss(Override(self.target, "set_level", level, duration))

    @on(Button.Pressed, "#resume")
    def _resume_pressed(self) -> None:
        self.dismiss(Override(self.target, "resume_schedule"))


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


class LimitDialog(FormDialog[ChargerLimitForm | None]):
    """Ask for the current (A) and an optional duration to limit one charge point."""

    def __init__(self, charger: str, detail: str = "") -> None:
        super().__init__()
        self._charger = charger
        self._detail = detail

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(f"[b]Limit charge point {self._charger}[/b] (Esc: cancel)")
            if self._detail:
                yield Static(self._detail, markup=False)
            with Horizontal(classes="field"):
                yield Label("Current (A):")
                yield Input(placeholder="e.g. 10 (0-6 A becomes 0)", id="amps")
            with Horizontal(classes="field"):
                yield Label("Duration (minutes):")
                yield Input(placeholder="empty: until released", id="duration")
            yield Static("", id="error")
            with Horizontal(classes="buttons"):
                yield Button("Limit…", id="set", variant="primary")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#amps", Input).focus()

    @on(Input.Submitted, "#amps")
    def _amps_done(self) -> None:
        self.query_one("#duration", Input).focus()

    @on(Input.Submitted, "#duration")
    @on(Button.Pressed, "#set")
    def _set(self) -> None:
        try:
            amps = parse_amps(self.query_one("#amps", Input).value)
            duration = parse_duration_min(self.query_one("#duration", Input).value)
        except ValueError as exc:
            self.query_one("#error", Static).update(str(exc))
            return
        self.dismiss(ChargerLimitForm(self._charger, amps, duration))


MAX_LINE = 40


@dataclass(frozen=True, slots=True)
class DisplayMessageForm:
    """What the operator filled in to put a message on a display."""

    display: str
    lines: tuple[str, ...]
    duration_s: float | None = None


def parse_lines(texts: Sequence[str]) -> tuple[str, ...]:
    """The message lines from the form (empty lines dropped); ValueError says what is wrong."""
    lines = tuple(t.strip() for t in texts if t.strip())
    if not lines:
        raise ValueError("message: enter at least one line")
    for i, line in enumerate(lines, 1):
        if len(line) > MAX_LINE:
            raise ValueError(f"line {i}: at most {MAX_LINE} characters")
    return lines


class MessageDialog(FormDialog[DisplayMessageForm | None]):
    """Ask for up to three lines and a duration for one display."""

    def __init__(self, display: str, detail: str = "") -> None:
        super().__init__()
        self._display = display
        self._detail = detail

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(f"[b]Message on display {self._display}[/b] (Esc: cancel)")
            if self._detail:
                yield Static(self._detail, markup=False)
            for i in range(1, 4):
                with Horizontal(classes="field"):
                    yield Label(f"Line {i}:")
                    yield Input(placeholder=f"up to {MAX_LINE} characters", id=f"line{i}")
            with Horizontal(classes="field"):
                yield Label("Duration (minutes):")
                yield Input(placeholder="empty: 60 min", id="duration")
            yield Static("", id="error")
            with Horizontal(classes="buttons"):
                yield Button("Show…", id="set", variant="primary")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#line1", Input).focus()

    @on(Input.Submitted, "#line1")
    def _line1_done(self) -> None:
        self.query_one("#line2", Input).focus()

    @on(Input.Submitted, "#line2")
    def _line2_done(self) -> None:
        self.query_one("#line3", Input).focus()

    @on(Input.Submitted, "#line3")
    def _line3_done(self) -> None:
        self.query_one("#duration", Input).focus()

    @on(Input.Submitted, "#duration")
    @on(Button.Pressed, "#set")
    def _set(self) -> None:
        try:
            lines = parse_lines([self.query_one(f"#line{i}", Input).value for i in range(1, 4)])
            duration = parse_duration_min(self.query_one("#duration", Input).value)
        except ValueError as exc:
            self.query_one("#error", Static).update(str(exc))
            return
        self.dismiss(DisplayMessageForm(self._display, lines, duration))


MAX_COMMENT = 500


@dataclass(frozen=True, slots=True)
class AlarmAckForm:
    """What the operator filled in to acknowledge an alarm."""

    device: str
    code: str
    comment: str


def parse_comment(text: str) -> str:
    """The ack comment from the form; ValueError says what is wrong."""
    comment = " ".join(text.split())
    if not comment:
        raise ValueError("comment: say what is being done about it")
    if len(comment) > MAX_COMMENT:
        raise ValueError(f"comment: at most {MAX_COMMENT} characters")
    return comment


class AckDialog(FormDialog[AlarmAckForm | None]):
    """Ask for the comment that goes with acknowledging one alarm."""

    DEFAULT_CSS = """
    AckDialog .field Label { width: 10; }
    """

    def __init__(self, device: str, code: str, detail: str = "") -> None:
        super().__init__()
        self._device = device
        self._code = code
        self._detail = detail

    def compose(self) -> ComposeResult:
        with Vertical():
            title = Text.assemble((f"Acknowledge {self._code} on {self._device}", "bold"), " (Esc: cancel)")
            yield Label(title)
            if self._detail:
                yield Static(self._detail, markup=False)
            with Horizontal(classes="field"):
                yield Label("Comment:")
                yield Input(placeholder="what is being done, e.g. crew sent", id="comment")
            yield Static("", id="error")
            with Horizontal(classes="buttons"):
                yield Button("Acknowledge…", id="set", variant="primary")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#comment", Input).focus()

    @on(Input.Submitted, "#comment")
    @on(Button.Pressed, "#set")
    def _set(self) -> None:
        try:
            comment = parse_comment(self.query_one("#comment", Input).value)
        except ValueError as exc:
            self.query_one("#error", Static).update(str(exc))
            return
        self.dismiss(AlarmAckForm(self._device, self._code, comment))
