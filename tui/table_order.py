"""The rows of a big table in the order it shows them: sorted by a column, filtered by a query.

Pure (no Textual): `FilterTable` keeps one `RowOrder` and hands its `shown` keys to the
`VirtualTable`, which draws only the rows on screen. With 53,800 lamps the order is kept up to
date incrementally: a few new, moved or removed rows are put in place by bisection; only many of
them at once (the retained state arriving), a new sort column or a filter that is not a
narrowing of the last one sort or filter every row again. Typing on (a query that extends the
last one) filters only the rows shown.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from rich.text import Text

SortValue = float | str
Cell = str | Text
REBUILD_SHARE = 0.02  # more moved rows than this share of the table (and at least MIN_REBUILD): sort all
MIN_REBUILD = 64


@dataclass(frozen=True, slots=True)
class Row:
    """One table row: its key, what it shows, and a sort value per column."""

    key: str
    cells: tuple[Cell, ...]
    sort: tuple[SortValue | None, ...]

    def text(self) -> str:
        """All cells as lower-case text, for filtering."""
        return " ".join(c.plain if isinstance(c, Text) else c for c in self.cells).lower()


def matches(row_text: str, query: str) -> bool:
    """Every word of the query occurs somewhere in the row (case-insensitive)."""
    return all(word in row_text for word in query.lower().split())


class _Key:
    """A row's place in the order: by value (reversed if asked), then key; rows without a value last, by key."""

    __slots__ = ("key", "reverse", "value")

    def __init__(self, value: SortValue | None, key: str, reverse: bool) -> None:
        self.value, self.key, self.reverse = value, key, reverse

    def __lt__(self, other: _Key) -> bool:
        a, b = self.value, other.value
        if a is None or b is None:
            return (a is None, self.key) < (b is None, other.key)
        if a == b:
            return self.key > other.key if self.reverse else self.key < other.key
        return a > b if self.reverse else a < b  # type: ignore[operator]  # one column holds one type


class RowOrder:
    """All rows by key, `order` (every row, sorted) and `shown` (the rows that match the query)."""

    def __init__(self) -> None:
        self.rows: dict[str, Row] = {}
        self.order: list[str] = []
        self.shown: list[str] = []
        self._shown_set: set[str] = set()
        self._texts: dict[str, str] = {}  # a row's filter text, until the row changes
        self.col = 0
        self.reverse = False
        self.query = ""

    def _value(self, row: Row) -> SortValue | None:
        return row.sort[self.col] if self.col < len(row.sort) else None

    def _key(self, key: str) -> _Key:
        return _Key(self._value(self.rows[key]), key, self.reverse)

    def _matches(self, row: Row) -> bool:
        return not self.query or matches(row.text(), self.query)

    def update(self, rows: Sequence[Row], removed: Iterable[str] = ()) -> bool:
        """Add or change some rows and drop others; True if the shown order changed."""
        gone = [k for k in removed if self.rows.pop(k, None) is not None]
        for k in gone:
            self._texts.pop(k, None)
        moved: list[tuple[str, bool]] = []  # (key, was in the order)
        crossed = []
        for r in rows:
            old = self.rows.get(r.key)
            self.rows[r.key] = r
            self._texts.pop(r.key, None)
            if old is None or self._value(old) != self._value(r):
                moved.append((r.key, old is not None))
            elif self.query and self._matches(old) != self._matches(r):
                crossed.append(r.key)
        if not (gone or moved or crossed):
            return False
        if len(gone) + len(moved) > max(MIN_REBUILD, REBUILD_SHARE * len(self.rows)):
            self.rebuild()
            return True
        for k in gone:
            self.order.remove(k)
            self._hide(k)
        for k, existed in moved:
            if existed:
                self.order.remove(k)
            bisect.insort(self.order, k, key=self._key)
            self._hide(k)
        for k in (*(k for k, _ in moved), *crossed):
            if self._matches(self.rows[k]):
                self._show(k)
            else:
                self._hide(k)
        return True

    def _show(self, key: str) -> None:
        if key not in self._shown_set:
            bisect.insort(self.shown, key, key=self._key)
            self._shown_set.add(key)

    def _hide(self, key: str) -> None:
        if key in self._shown_set:
            self.shown.remove(key)
            self._shown_set.discard(key)

    def rebuild(self) -> None:
        """Sort every row and filter them again."""
        rows = list(self.rows.values())
        known = [r for r in rows if self._value(r) is not None]
        known.sort(key=lambda r: (self._value(r), r.key), reverse=self.reverse)
        unknown = sorted(r.key for r in rows if self._value(r) is None)
        self.order = [r.key for r in known] + unknown
        self._refilter(self.order)

    def _refilter(self, among: Sequence[str]) -> None:
        """`shown`: the rows of `among` that match the query, word by word over cached texts (one
        comprehension per word, no call per row: 53,800 rows in a few ms)."""
        keys = list(among)
        words = self.query.lower().split()
        if words:
            texts, rows = self._texts, self.rows
            for k in keys:
                if k not in texts:
                    texts[k] = rows[k].text()
            for word in words:
                keys = [k for k in keys if word in texts[k]]
        self.shown = keys
        self._shown_set = set(keys)

    def set_query(self, query: str) -> None:
        """Filter by `query`; one that extends the last (typing on) filters only the rows shown."""
        narrower = query.lower().startswith(self.query.lower())
        old, self.query = self.query, query
        if old == query:
            return
        self._refilter(self.shown if narrower else self.order)

    def set_sort(self, col: int, reverse: bool) -> None:
        self.col, self.reverse = col, reverse
        self.rebuild()
