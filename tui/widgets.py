"""Dumb widgets of the dashboard: they show what the app hands them and post what the user does.

Data goes down as method calls with plain values (`FilterTable.show(rows)`,
`TextView.show(render)`, `Banner.state = ...`); nothing here knows MQTT or the model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.reactive import reactive
from textual.widgets import DataTable, Input, Label, Static

SortValue = float | str
Cell = str | Text


@dataclass(frozen=True, slots=True)
class Row:
    """One table row: its key, what it shows, and a sort value per column."""

    key: str
    cells: tuple[Cell, ...]
    sort: tuple[SortValue | None, ...]

    def text(self) -> str:
        """All cells as lower-case text, for filtering."""
        return " ".join(c.plain if isinstance(c, Text) else c for c in self.cells).lower()


@dataclass(frozen=True, slots=True)
class Column:
    """A table column: header and width (None: fit the content)."""

    label: str
    width: int | None = None


def matches(row_text: str, query: str) -> bool:
    """Every word of the query occurs somewhere in the row (case-insensitive)."""
    return all(word in row_text for word in query.lower().split())


class FilterTable(Vertical):
    """A DataTable with a filter line above it: filters as you type, sorts by column."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "leave_filter", "Table", show=False)]

    DEFAULT_CSS = """
    FilterTable { height: 1fr; }
    FilterTable > Horizontal { height: 1; }
    FilterTable > Horizontal > Label { width: auto; padding: 0 1 0 0; }
    FilterTable Input { border: none; height: 1; padding: 0; width: 1fr; }
    FilterTable Input:focus { border: none; text-style: underline; }
    FilterTable .info { height: 1; color: $text-muted; }
    FilterTable DataTable { height: 1fr; }
    """

    def __init__(
        self, columns: Sequence[Column], noun: str, *, id: str | None = None, hint: str = "e.g. 'hohe failed'"
    ) -> None:
        super().__init__(id=id)
        self._hint = hint
        self._columns = tuple(columns)
        self._noun = noun
        self._rows: dict[str, Row] = {}
        self._shown: list[str] = []
        self._sort_col: int = 0
        self._sort_reverse = False

    def compose(self) -> ComposeResult:
        with Horizontal():
            yield Label("Filter (/):")
            yield Input(placeholder=f"type to narrow, {self._hint}", id="filter")
        yield Static("", classes="info")
        table: DataTable[Cell] = DataTable(cursor_type="row", zebra_stripes=True)
        yield table

    def on_mount(self) -> None:
        table = self.table
        for i, col in enumerate(self._columns):
            table.add_column(col.label, width=col.width, key=str(i))
        self._render_rows()

    @property
    def table(self) -> DataTable[Cell]:
        return self.query_one(DataTable)

    @property
    def filter_input(self) -> Input:
        return self.query_one("#filter", Input)

    @property
    def filter_text(self) -> str:
        return self.filter_input.value if self.is_mounted else ""

    @property
    def shown_keys(self) -> list[str]:
        """Keys of the rows shown, in order."""
        return list(self._shown)

    @property
    def selected_key(self) -> str | None:
        """Key of the row under the cursor."""
        if not self._shown or not self.is_mounted:
            return None
        row = self.table.cursor_row
        return self._shown[row] if 0 <= row < len(self._shown) else None

    def show(self, rows: Sequence[Row]) -> None:
        """Replace the rows; cells that did not change are not touched."""
        old = self._rows
        self._rows = {r.key: r for r in rows}
        if not self.is_mounted:
            return
        keys = self._ordered_keys()
        if keys != self._shown:
            self._render_rows(keys)
            return
        changed = [k for k in keys if (before := old.get(k)) is None or before.cells != self._rows[k].cells]
        table = self.table
        for key in changed:
            before, after = old[key], self._rows[key]
            for i, (a, b) in enumerate(zip(before.cells, after.cells, strict=True)):
                if a != b:
                    table.update_cell(key, str(i), b)
        self._update_info()

    def sort_by(self, column: int, *, reverse: bool | None = None) -> None:
        """Sort by a column; the same column again flips the direction."""
        if reverse is None:
            reverse = not self._sort_reverse if column == self._sort_col else False
        self._sort_col = column % len(self._columns)
        self._sort_reverse = reverse
        self._render_rows()

    def next_sort(self) -> None:
        """Sort by the next column, ascending."""
        self.sort_by((self._sort_col + 1) % len(self._columns), reverse=False)

    def _ordered_keys(self) -> list[str]:
        query = self.filter_text
        rows = [r for r in self._rows.values() if not query or matches(r.text(), query)]
        col = self._sort_col

        def key(r: Row) -> tuple[bool, SortValue, str]:
            v = r.sort[col] if col < len(r.sort) else None
            return (v is None, v if v is not None else 0, r.key)

        rows.sort(key=key, reverse=self._sort_reverse)
        return [r.key for r in rows]

    def _render_rows(self, keys: list[str] | None = None) -> None:
        if not self.is_mounted:
            return
        keys = self._ordered_keys() if keys is None else keys
        table = self.table
        selected = self.selected_key
        table.clear()
        for key in keys:
            table.add_row(*self._rows[key].cells, key=key)
        self._shown = keys
        if selected in keys:
            table.move_cursor(row=keys.index(selected), animate=False)
        self._update_info()

    def _update_info(self) -> None:
        label = self._columns[self._sort_col].label
        arrow = "descending" if self._sort_reverse else "ascending"
        text = f"{len(self._shown)} of {len(self._rows)} {self._noun} · sorted by {label} {arrow} (s: next column)"
        self.query_one(".info", Static).update(text)

    @on(Input.Changed, "#filter")
    def _filter_changed(self) -> None:
        self._render_rows()

    @on(Input.Submitted, "#filter")
    def action_leave_filter(self) -> None:
        """Back from the filter line to the table (the filter stays)."""
        self.table.focus()

    @on(DataTable.HeaderSelected)
    def _header(self, event: DataTable.HeaderSelected) -> None:
        self.sort_by(event.column_index)


class TextView(VerticalScroll, can_focus=True):
    """A scrolling page of text, re-rendered to its width by a function the app provides."""

    DEFAULT_CSS = """
    TextView { height: 1fr; scrollbar-gutter: stable; scrollbar-size-vertical: 1; }
    TextView > Static { width: 100%; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._render_fn: Callable[[int, int], Text] | None = None

    def compose(self) -> ComposeResult:
        yield Static("", classes="body")

    def show(self, render: Callable[[int, int], Text]) -> None:
        """Render with `render(width, height)` now and whenever the size changes."""
        self._render_fn = render
        self._redraw()

    def on_resize(self) -> None:
        self._redraw()

    def _redraw(self) -> None:
        if self._render_fn is None or not self.is_mounted:
            return
        region = self.scrollable_content_region
        width = region.width or 80
        height = region.height or 20
        self.query_one(".body", Static).update(self._render_fn(width, height))


class Banner(Static):
    """The connection line: hidden while connected, loud while not."""

    DEFAULT_CSS = """
    Banner { height: 1; width: 100%; background: $error; color: $text; text-style: bold; }
    Banner.-hidden { display: none; }
    """

    message: reactive[str] = reactive("")

    def watch_message(self, message: str) -> None:
        self.set_class(not message, "-hidden")
        self.update(f"!! {message}" if message else "")
