"""Waste: the readings of the waste payloads the dashboard shows (lenient: unknown keys are ignored)."""

from __future__ import annotations

from tui.views.base import Reading


class BinView(Reading):
    """A bin's retained state (`waste/bins/{bin}/state`)."""

    id: str
    lat: float | None = None
    lon: float | None = None
    kind: str = ""
    zone: str = ""
    fill: float | None = None
    rate_per_h: float | None = None
    full_ts: float | None = None
    battery: float | None = None
    temperature: float | None = None
    alarms: list[str] = []
    status: str = "ok"
    last_seen_ts: float | None = None
    last_emptied_ts: float | None = None
    plan: str = "none"
    forced: bool = False
    excluded: bool = False
    ts: float = 0.0


class TruckView(Reading):
    """A truck's retained state (`waste/trucks/{truck}/state`)."""

    id: str
    online: bool | None = None
    status: str = ""
    lat: float | None = None
    lon: float | None = None
    load_l: float | None = None
    load_kg: float | None = None
    load_pct: float | None = None
    route_id: str | None = None
    stop_index: int = 0
    stops_total: int = 0
    bins_done: int = 0
    bins_total: int = 0
    odometer_km: float | None = None
    last_seen_ts: float | None = None
    ts: float = 0.0

    @property
    def on_route(self) -> bool:
        return self.online is not False and self.status in ("driving", "collecting", "unloading", "returning")


class StopView(Reading):
    seq: int = 0
    kind: str = "bin"
    id: str = ""
    eta_ts: float | None = None
    done: bool = False


class RouteView(Reading):
    truck: str
    route_id: str = ""
    distance_km: float = 0.0
    stops: list[StopView] = []

    @property
    def bins(self) -> list[StopView]:
        return [s for s in self.stops if s.kind == "bin"]


class WastePlanView(Reading):
    """Today's collection plan (`waste/plan`)."""

    plan_id: str = ""
    made_ts: float | None = None
    reason: str = ""
    status: str = ""
    solver: str = ""
    distance_km: float = 0.0
    mandatory: int = 0
    optional: int = 0
    dropped: list[str] = []
    routes: list[RouteView] = []
    violations: list[str] = []
    ts: float = 0.0

    def route_of(self, truck: str) -> RouteView | None:
        return next((r for r in self.routes if r.truck == truck), None)


class WasteSummaryView(Reading):
    """The daemon's waste counters (`waste/summary`)."""

    bins: int = 0
    reporting: int = 0
    above_threshold: int = 0
    alarms: int = 0
    trucks: int = 0
    trucks_on_route: int = 0
    emptied_today: int = 0
    overflows_today: int = 0
    km_today: float = 0.0
    ts: float = 0.0
