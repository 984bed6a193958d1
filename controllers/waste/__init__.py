"""Waste collection: bin fill estimation and alarms, truck tracking, the daily plan, truck routes.

The package is split by concern; this module re-exports the names the application, the
bench and the tests use:

- `fill`: pure fill estimation (`FillEstimator`, `WeekPattern`; values in, estimates out);
- `alarms`: which alarms a bin should have (`bin_alarms`, `BinReading`, severities);
- `state`: what the controller knows (bins, trucks, counters, the active plan, the calendar);
- `tracking`: bin uplinks and the fleet's state and events folded into that state;
- `planning`: the optimizer's inputs, solving, taking a plan into force, routes, restore;
- `wire`: the truck wire format (route payloads out, truck state and events in);
- `views`: the API's payloads, and their way north into the state store;
- `controller`: `WasteController`, the coordinator.
"""

from __future__ import annotations

from .alarms import SEVERITY, BinReading, bin_alarms
from .controller import OPERATOR_DOMAIN, WasteController, WastePorts
from .fill import FillEstimator, WeekPattern, net_rate, theil_sen
from .planning import INPUT_CHUNK, RISK_Z, WasteSafety, planner_bin
from .state import ActivePlan, BinTrack, DayCounters, PlanReason, TruckTrack
from .views import PLANNER_ID, SUMMARY_ID
from .wire import ROUTE_POINT

__all__ = [
    "INPUT_CHUNK",
    "OPERATOR_DOMAIN",
    "PLANNER_ID",
    "RISK_Z",
    "ROUTE_POINT",
    "SEVERITY",
    "SUMMARY_ID",
    "ActivePlan",
    "BinReading",
    "BinTrack",
    "DayCounters",
    "FillEstimator",
    "PlanReason",
    "TruckTrack",
    "WasteController",
    "WastePorts",
    "WasteSafety",
    "WeekPattern",
    "bin_alarms",
    "net_rate",
    "planner_bin",
    "theil_sen",
]
