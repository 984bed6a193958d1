"""Dumb widgets of the dashboard: they show what the app hands them and post what the user does.

Data goes down as method calls with plain values (`FilterTable.show(rows)`,
`TextView.show(render)`, `Banner.message = ...`); nothing here knows MQTT or the model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from time import monotonic
from typing import ClassVar

from rich.segment import Segment
from rich.text import Text
from textual import events, on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.geometry import Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.timer import Timer
from textual.widgets import Input, Label, Static

from tui.table_order import Cell, Row, RowOrder, SortValue, matches

__all__ = [
    "Banner",
    "Cell",
    "Column",
    "FilterTable",
    "Row",
    "SortValue",
    "TextView",
    "VirtualTable",
    "matches",
]


@dataclass(frozen=True, slots=True)
class Column:
    """A table column: header and width (None: fit the content)."""

    label: str
    width: int | None = None


class VirtualTable(ScrollView, can_focus=True):
    """A table that draws only the rows on screen, each row from a cache until it changes.

    Textual's DataTable re-renders every visible cell after any update (its caches are keyed
    by a global update count), which costs ~0.2 s a frame at 160x50 on a loaded machine: too
    slow for 5,000 lamps that change all the time. Here a changed row costs one row.
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up", "cursor(-1)", "Up", show=False),
        Binding("down", "cursor(1)", "Down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("home", "cursor_to(0)", "First", show=False),
        Binding("end", "cursor_to(-1)", "Last", show=False),
    ]
    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "virtual-table--header",
        "virtual-table--cursor",
        "virtual-table--odd",
    }
    DEFAULT_CSS = """
    VirtualTable { height: 1fr; background: $surface; }
    VirtualTable > .virtual-table--header { text-style: bold; background: $panel; }
    VirtualTable > .virtual-table--cursor { text-style: reverse; }
    VirtualTable:focus > .virtual-table--cursor { text-style: bold reverse; }
    VirtualTable > .virtual-table--odd { background: $surface-lighten-1; }
    """

    class HeaderSelected(Message):
        """A column header was clicked."""

        def __init__(self, table: VirtualTable, column_index: int) -> None:
            super().__init__()
            self.table = table
            self.column_index = column_index

    def __init__(self, columns: Sequence[Column], *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._columns = tuple(columns)
        self._keys: list[str] = []
        self._index: dict[str, int] = {}
        self._cells: dict[str, tuple[Cell, ...]] = {}
        self._cache: dict[str, Strip] = {}
        self._cache_width = -1
        self._cursor = 0

    # ----- data ----------------------------------------------------------------------------------

    @property
    def row_count(self) -> int:
        return len(self._keys)

    @property
    def cursor_row(self) -> int:
        return self._cursor

    def set_rows(
        self,
        keys: Sequence[str],
        cells: Mapping[str, tuple[Cell, ...]],
        *,
        changed: Iterable[str] | None = None,
    ) -> None:
        """Show these rows in this order (the cached drawing of unchanged rows is kept).

        `changed`: the only keys whose cells may differ from what the table has (None: any), so a
        big table that only moved a few rows does not look at every row's cells.
        """
        self._keys = list(keys)
        self._index = {k: i for i, k in enumerate(self._keys)}
        for key in self._keys if changed is None else changed:
            new = cells.get(key)
            old = self._cells.get(key)
            if new is not None and old is not new and key in self._index:
                if old != new:
                    self._cache.pop(key, None)
                self._cells[key] = new
        for key in self._keys:
            if key not in self._cells:  # shown again (a filter let it through)
                self._cells[key] = cells[key]
                self._cache.pop(key, None)
        if len(self._cells) > len(self._keys):
            for key in self._cells.keys() - self._index.keys():
                del self._cells[key]
                self._cache.pop(key, None)
        self.virtual_size = Size(self.size.width, len(self._keys) + 1)
        self._cursor = min(self._cursor, max(0, len(self._keys) - 1))
        self.refresh()

    def update_rows(self, cells: Mapping[str, tuple[Cell, ...]]) -> None:
        """New cells for rows already shown; redraws only if one of them is on screen."""
        top = self.scroll_offset.y
        visible = False
        for key, new in cells.items():
            i = self._index.get(key)
            if i is None or self._cells.get(key) == new:
                continue
            self._cells[key] = new
            self._cache.pop(key, None)
            visible = visible or top <= i < top + self.size.height
        if visible:
            self.refresh()

    def key_at(self, row: int) -> str | None:
        """The key of a row number (None: no such row)."""
        return self._keys[row] if 0 <= row < len(self._keys) else None

    def index_of(self, key: str) -> int | None:
        """The row number of a key (None: not shown)."""
        return self._index.get(key)

    def get_row(self, key: str) -> list[Cell]:
        return list(self._cells[key])

    def get_cell(self, key: str, column: str) -> Cell:
        return self._cells[key][int(column)]

    # ----- cursor --------------------------------------------------------------------------------

    class CursorMoved(Message):
        """The cursor is on another row (key None: the table is empty)."""

        def __init__(self, table: VirtualTable, key: str | None) -> None:
            super().__init__()
            self.table = table
            self.key = key

    def move_cursor(self, *, row: int, animate: bool = False) -> None:
        """Put the cursor on a row (clamped) and scroll it into view."""
        n = len(self._keys)
        before = self._cursor
        self._cursor = max(0, min(row if row >= 0 else n + row, n - 1)) if n else 0
        if self._cursor != before:
            self.post_message(self.CursorMoved(self, self._keys[self._cursor] if n else None))
        rows_shown = max(1, self.size.height - 1)
        top = self.scroll_offset.y
        if self._cursor < top:
            self.scroll_to(y=self._cursor, animate=animate)
        elif self._cursor >= top + rows_shown:
            self.scroll_to(y=self._cursor - rows_shown + 1, animate=animate)
        self.refresh()

    def action_cursor(self, step: int) -> None:
        self.move_cursor(row=self._cursor + step)

    def action_page(self, direction: int) -> None:
        self.move_cursor(row=max(0, self._cursor + direction * max(1, self.size.height - 2)))

    def action_cursor_to(self, row: int) -> None:
        self.move_cursor(row=row)

    def on_click(self, event: events.Click) -> None:
        if event.y == 0:
            x = event.x
            for i, (start, width) in enumerate(self._spans(self.size.width)):
                if start <= x < start + width + 1:
                    self.post_message(self.HeaderSelected(self, i))
                    return
            return
        self.move_cursor(row=self.scroll_offset.y + event.y - 1)

    def on_resize(self) -> None:
        self.virtual_size = Size(self.size.width, len(self._keys) + 1)

    # ----- drawing -------------------------------------------------------------------------------

    def _spans(self, width: int) -> list[tuple[int, int]]:
        """(start, width) of every column: fixed widths, the rest to columns without one."""
        fixed = sum(c.width or 0 for c in self._columns) + len(self._columns) + 1
        free = [c for c in self._columns if c.width is None]
        rest = max(4, (width - fixed) // len(free)) if free else 0
        spans, x = [], 1
        for c in self._columns:
            w = c.width if c.width is not None else rest
            spans.append((x, w))
            x += w + 1
        return spans

    def _line(self, cells: Sequence[Cell], width: int) -> Strip:
        text = Text(" ", no_wrap=True, end="")
        for cell, (_, w) in zip(cells, self._spans(width), strict=False):
            t = cell.copy() if isinstance(cell, Text) else Text(cell)
            t.truncate(w, overflow="ellipsis", pad=True)
            text.append_text(t)
            text.append(" ")
        return Strip(list(text.render(self.app.console, end="")), text.cell_len).crop_extend(0, width, None)

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        if width != self._cache_width:
            self._cache.clear()
            self._cache_width = width
        base = self.rich_style
        if y == 0:
            header = self._line([c.label for c in self._columns], width)
            return header.apply_style(base + self.get_component_rich_style("virtual-table--header"))
        i = self.scroll_offset.y + y - 1
        if i >= len(self._keys):
            return Strip.blank(width, base)
        key = self._keys[i]
        strip = self._cache.get(key)
        if strip is None:
            strip = self._cache[key] = self._line(self._cells[key], width)
        style = base
        if i % 2:
            style = style + self.get_component_rich_style("virtual-table--odd")
        strip = strip.apply_style(style)
        if i == self._cursor:
            cursor = self.get_component_rich_style("virtual-table--cursor")
            strip = Strip(list(Segment.apply_style(strip, post_style=cursor)), strip.cell_length)
        return strip


class FilterTable(Vertical):
    """A virtual table with a filter line above it: filters as you type, sorts by column."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "leave_filter", "Table", show=False)]

    DEFAULT_CSS = """
    FilterTable { height: 1fr; }
    FilterTable > Horizontal { height: 1; }
    FilterTable > Horizontal > Label { width: auto; padding: 0 1 0 0; }
    FilterTable Input { border: none; height: 1; padding: 0; width: 1fr; }
    FilterTable Input:focus { border: none; text-style: underline; }
    FilterTable .info { height: 1; color: $text-muted; }
    FilterTable VirtualTable { height: 1fr; }
    """

    def __init__(
        self, columns: Sequence[Column], noun: str, *, id: str | None = None, hint: str = "e.g. 'hohe failed'"
    ) -> None:
        super().__init__(id=id)
        self._hint = hint
        self._columns = tuple(columns)
        self._noun = noun
        self._order = RowOrder()
        self._info = ""
        self._cells: dict[str, tuple[Cell, ...]] = {}  # every row's cells, for the table to draw from

    def compose(self) -> ComposeResult:
        with Horizontal():
            yield Label("Filter (/):")
            yield Input(placeholder=f"type to narrow, {self._hint}", id="filter")
        yield Static("", classes="info")
        yield VirtualTable(self._columns)

    def on_mount(self) -> None:
        self._order.set_query(self.filter_text)
        self._render_rows()

    @property
    def table(self) -> VirtualTable:
        return self.query_one(VirtualTable)

    @property
    def filter_input(self) -> Input:
        return self.query_one("#filter", Input)

    @property
    def filter_text(self) -> str:
        return self.filter_input.value if self.is_mounted else ""

    @property
    def _rows(self) -> dict[str, Row]:
        return self._order.rows

    @property
    def _shown(self) -> list[str]:
        return self._order.shown

    @property
    def _sort_col(self) -> int:
        return self._order.col

    @property
    def _sort_reverse(self) -> bool:
        return self._order.reverse

    @property
    def shown_keys(self) -> list[str]:
        """Keys of the rows shown, in order."""
        return list(self._shown)

    @property
    def row_total(self) -> int:
        return len(self._rows)

    @property
    def selected_key(self) -> str | None:
        """Key of the row under the cursor."""
        if not self._shown or not self.is_mounted:
            return None
        row = self.table.cursor_row
        return self._shown[row] if 0 <= row < len(self._shown) else None

    def show(self, rows: Sequence[Row]) -> None:
        """Replace all rows; rows that did not change are not redrawn."""
        new = {r.key: r for r in rows}
        removed = self._rows.keys() - new.keys()
        changed = [r for r in rows if (old := self._rows.get(r.key)) is None or old != r]
        if changed or removed:
            self.update(changed, removed)

    def update(self, rows: Sequence[Row], removed: Iterable[str] = ()) -> None:
        """Add or change some rows and drop others; the rest stay as they are (cheap for big tables:
        the order is kept incrementally and the table redraws only the changed rows on screen)."""
        removed = list(removed)
        for key in removed:
            self._cells.pop(key, None)
        for r in rows:
            self._cells[r.key] = r.cells
        reorder = self._order.update(rows, removed)
        if not self.is_mounted:
            return
        if reorder:
            self._render_rows(changed=[r.key for r in rows])
            return
        self.table.update_rows({r.key: r.cells for r in rows})
        self._update_info()

    def select(self, key: str) -> bool:
        """Put the cursor on a row (clearing the filter if it hides it) and focus the table."""
        if key not in self._rows or not self.is_mounted:
            return False
        table = self.table
        if table.index_of(key) is None:
            with self.filter_input.prevent(Input.Changed):
                self.filter_input.value = ""
            self._order.set_query("")
            self._render_rows()
        row = table.index_of(key)
        if row is None:
            return False
        table.move_cursor(row=row)
        table.focus()
        return True

    def sort_by(self, column: int, *, reverse: bool | None = None) -> None:
        """Sort by a column; the same column again flips the direction."""
        if reverse is None:
            reverse = not self._sort_reverse if column == self._sort_col else False
        self._order.set_sort(column % len(self._columns), reverse)
        self._render_rows()

    def next_sort(self) -> None:
        """Sort by the next column, ascending."""
        self.sort_by((self._sort_col + 1) % len(self._columns), reverse=False)

    def _render_rows(self, changed: Iterable[str] | None = None) -> None:
        """Hand the table the shown order (`changed`: the only rows whose cells changed; None: any)."""
        if not self.is_mounted:
            return
        table = self.table
        selected = table.key_at(table.cursor_row)
        table.set_rows(self._order.shown, self._cells, changed=changed)
        if selected is not None and (row := table.index_of(selected)) is not None:
            table.move_cursor(row=row)
        self._update_info()

    def _update_info(self) -> None:
        label = self._columns[self._sort_col].label
        arrow = "descending" if self._sort_reverse else "ascending"
        text = f"{len(self._shown)} of {len(self._rows)} {self._noun} · sorted by {label} {arrow} (s: next column)"
        if text != self._info:  # an update lays the screen out again: not on every refresh
            self._info = text
            self.query_one(".info", Static).update(text)

    @on(Input.Changed, "#filter")
    def _filter_changed(self) -> None:
        self._order.set_query(self.filter_text)
        self._render_rows(changed=())

    @on(Input.Submitted, "#filter")
    def action_leave_filter(self) -> None:
        """Back from the filter line to the table (the filter stays)."""
        self.table.focus()

    @on(VirtualTable.HeaderSelected)
    def _header(self, event: VirtualTable.HeaderSelected) -> None:
        self.sort_by(event.column_index)


class _Throttle:
    """At most one drawing every `interval_s`: a request inside the interval waits for the next
    turn, and the last request wins (the views of a city redraw on every update otherwise)."""

    def __init__(self, interval_s: float, draw: Callable[[], None], set_timer: Callable[..., Timer]) -> None:
        self._interval = interval_s
        self._draw = draw
        self._set_timer = set_timer
        self._last = -1e9
        self._timer: Timer | None = None

    def request(self) -> None:
        """Draw now if the interval has passed, else once when it has."""
        wait = self._last + self._interval - monotonic()
        if wait <= 0:
            self._draw()
        elif self._timer is None:
            self._timer = self._set_timer(wait, self._fire, name="throttled-redraw")

    def _fire(self) -> None:
        self._timer = None
        self._draw()

    def drawing(self) -> None:
        """A drawing starts now (whoever asked for it): the interval counts from here."""
        self._last = monotonic()


class TextView(VerticalScroll, can_focus=True):
    """A scrolling page of text, re-rendered to its width by a function the app provides, at most
    every `min_interval_s` (a newer drawing waits for the next turn; the last one wins)."""

    DEFAULT_CSS = """
    TextView { height: 1fr; scrollbar-gutter: stable; scrollbar-size-vertical: 1; }
    TextView > Static { width: 100%; }
    """

    def __init__(self, *, id: str | None = None, min_interval_s: float = 0.0) -> None:
        super().__init__(id=id)
        self._render_fn: Callable[[int, int], Text] | None = None
        self._throttle = _Throttle(min_interval_s, self._redraw, self.set_timer)

    def compose(self) -> ComposeResult:
        yield Static("", classes="body")

    def show(self, render: Callable[[int, int], Text]) -> None:
        """Render with `render(width, height)` now (or at the next turn) and whenever the size changes."""
        self._render_fn = render
        self._throttle.request()

    def on_resize(self) -> None:
        self._redraw()

    def _redraw(self) -> None:
        if self._render_fn is None or not self.is_mounted:
            return
        self._throttle.drawing()
        region = self.scrollable_content_region
        width = region.width or 80
        height = region.height or 20
        self.query_one(".body", Static).update(self._render_fn(width, height))


class LinesView(ScrollView, can_focus=True):
    """A long page of text drawn to the view's width (no wrapping), of which only the lines on
    screen are rendered; redrawn at most every `min_interval_s` (a newer drawing waits for the next
    turn, the last one wins), so a page of 53,800 symbols costs a few lines per frame."""

    DEFAULT_CSS = """
    LinesView { height: 1fr; scrollbar-gutter: stable; scrollbar-size-vertical: 1; }
    """

    def __init__(self, *, id: str | None = None, min_interval_s: float = 0.0) -> None:
        super().__init__(id=id)
        self._render_fn: Callable[[int, int], Text | Sequence[Text]] | None = None
        self._lines: list[Text] = []
        self._cache: dict[int, Strip] = {}
        self._throttle = _Throttle(min_interval_s, self._redraw, self.set_timer)
        self.redraws = 0

    def show(self, render: Callable[[int, int], Text | Sequence[Text]]) -> None:
        """Render with `render(width, height)` (a text, or its lines) now (or at the next turn) and
        whenever the size changes."""
        self._render_fn = render
        self._throttle.request()

    @property
    def plain(self) -> str:
        """What the page shows, as text."""
        return "\n".join(line.plain for line in self._lines)

    def on_resize(self) -> None:
        self._redraw()

    def _redraw(self) -> None:
        if self._render_fn is None or not self.is_mounted:
            return
        self._throttle.drawing()
        self.redraws += 1
        region = self.scrollable_content_region
        drawn = self._render_fn(region.width or 80, region.height or 20)
        if isinstance(drawn, Text):
            self._lines = list(drawn.split("\n", allow_blank=True))
            if self._lines and not self._lines[-1].plain:
                self._lines.pop()  # the text's closing newline
        else:
            self._lines = list(drawn)
        self._cache.clear()
        self.virtual_size = Size(region.width, len(self._lines))
        self.refresh()

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        i = self.scroll_offset.y + y
        if i >= len(self._lines):
            return Strip.blank(width, self.rich_style)
        strip = self._cache.get(i)
        if strip is None:
            line = self._lines[i]
            line.end = ""
            segments = list(line.render(self.app.console, end=""))
            strip = self._cache[i] = Strip(segments, line.cell_len).crop_extend(0, width, None)
        return strip.apply_style(self.rich_style)


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
