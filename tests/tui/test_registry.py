"""The dashboard is built from its view registry (issue 11): a new view is one module and one line.

The app names no view: its panes, number keys, command keys and the model's slices all come
from `tui.views.REGISTRY`, and a command applies where its view's declaration says.
"""

from __future__ import annotations

from textual.widgets import ContentSwitcher

from tests.tui.test_app import make_app
from tui.app import DashboardApp
from tui.model import SLICES
from tui.views import REGISTRY, view_key
from tui.widgets import FilterTable


def test_model_slices_are_the_registered_views_slices() -> None:
    assert set(SLICES) == {v.slice for v in REGISTRY if v.slice is not None}


def test_command_keys_are_the_registered_views_commands() -> None:
    bound = {b.action for b in DashboardApp.BINDINGS if not isinstance(b, tuple)}
    declared = {c.action for v in REGISTRY for c in v.commands}
    assert declared <= bound
    assert bound - declared == {f"view('{v.id}')" for v in REGISTRY} | {"help", "filter", "sort", "quit"}


async def test_panes_tables_and_number_keys_follow_the_registry() -> None:
    """Each registered view is a pane holding its tables; its digit (1-9, 0) shows it and offers its commands."""
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        switcher = app.query_one(ContentSwitcher)
        assert [w.id for w in switcher.children] == [v.id for v in REGISTRY]
        tables = {f"#{t.id}" for t in app.query(FilterTable)}
        assert tables == {t for v in REGISTRY for t in v.tables}
        site_wide = {c.action for v in REGISTRY for c in v.commands if c.site_wide}
        for i, v in enumerate(REGISTRY):
            await pilot.press(view_key(i))
            assert (app.view, switcher.current) == (v.id, v.id)
            pane = switcher.get_child_by_id(v.id)
            for t in v.tables:  # its tables are in its own pane (or are the pane)
                table = app.query_one(t, FilterTable)
                assert table is pane or pane in table.ancestors
            if v.tables:
                assert app.focused is app.query_one(v.tables[0], FilterTable).table
            shown = {b.binding.action for b in app.active_bindings.values() if b.enabled}
            own = {c.action for c in v.commands}
            assert own <= shown  # a view's own commands are offered on it
            others = {c.action for w in REGISTRY for c in w.commands} - own - site_wide
            assert not others & shown  # another view's own commands are not
            # the site-wide commands (the lighting's) everywhere but on views that claim the keys
            assert (site_wide - own <= shown) is not v.exclusive
