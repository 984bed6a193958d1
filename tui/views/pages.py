"""The site's pages that are no one domain's: the Overview, the Map and the Plan.

They draw text from the whole model (`tui.render`) and have no commands of their own: the
site-wide commands (the lighting override, resume and re-plan) work on them.
"""

from __future__ import annotations

from textual.app import ComposeResult

from tui import render
from tui.views.base import Change, DomainView, PaletteAction, ShowContext
from tui.widgets import LinesView, TextView

MAP_REDRAW_S = 1.0  # the Map follows the lamps at most this often
OVERVIEW_REDRAW_S = 1.0  # and the Overview the site


class OverviewPage(DomainView):
    """The site's health in one screen; anything that changes redraws it."""

    id = "overview"
    title = "Overview"
    shows = frozenset(Change) - {Change.IGNORED}

    def compose(self) -> ComposeResult:
        # Every message changes it (the message count): redrawn at most once a second.
        yield TextView(id=self.id, min_interval_s=OVERVIEW_REDRAW_S)

    def show(self, ctx: ShowContext) -> None:
        model, tz, views = ctx.model, ctx.tz, ctx.views
        ctx.root.query_one("#overview", TextView).show(lambda w, h: render.overview(model, tz, views))


class MapPage(DomainView):
    """The district by the inventory's positions (or the lamps by segment without one), with the
    help points over the lamps: a help point going unavailable or taking a call redraws it."""

    id = "map"
    title = "Map"
    shows = frozenset({Change.LAMP, Change.HELPPOINTS})

    def compose(self) -> ComposeResult:
        # 53,800 lamps are a page of 1,100 lines: only those on screen are drawn, at most once a second.
        yield LinesView(id=self.id, min_interval_s=MAP_REDRAW_S)

    def show(self, ctx: ShowContext) -> None:
        ctx.root.query_one("#map", LinesView).show(render.map_page(ctx.model, ctx.inventory))


class PlanPage(DomainView):
    """Tonight's dimming plan per group, as wide as the terminal."""

    id = "plan"
    title = "Plan"
    shows = frozenset({Change.PLAN})
    palette = (
        PaletteAction(
            "Re-plan tonight's lighting", "compute the night's dimming plan now (R)", "replan", "plan"
        ),
    )

    def compose(self) -> ComposeResult:
        yield TextView(id=self.id)

    def show(self, ctx: ShowContext) -> None:
        model, tz = ctx.model, ctx.tz
        ctx.root.query_one("#plan", TextView).show(lambda w, h: render.plan_chart(model.plan, w, tz))
