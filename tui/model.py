"""The dashboard's picture of one site, folded from MQTT messages (pure: no I/O, no clock).

`SiteModel.apply(topic, payload)` takes every message published under `dos/v1/{site}/`.
Each domain keeps its own slice (`tui/views/{domain}.py`: its state, its queries, the fold of
its own topics); the model is the sum of the slices (the slices of the registered views,
`tui.views.REGISTRY`, mixed in) plus the site's status: the daemon's
status, command results, plans and message counters. The payloads are parsed with the API's
own pydantic models (`edge.payloads`); a payload that does not parse is counted in
`bad_payloads` and otherwise ignored, so nothing a broker delivers can crash the dashboard.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field

import orjson
from pydantic import ValidationError

from edge.payloads import CommandResultMessage, DaemonStatus, PlanMessage
from tui.views.alarms import AlarmsModel, alarm_event, alarm_event_ts, severity_rank
from tui.views.base import PREFIX, Change, Interrupt, Slice
from tui.views.charging import ChargingModel
from tui.views.displays import DisplaysModel, shown_text
from tui.views.environment import EnvironmentModel
from tui.views.helppoints import HelpPointsModel
from tui.views.lighting import LampStatus, LightingModel, lamp_status
from tui.views.waste import WasteModel

__all__ = [
    "PREFIX",
    "Change",
    "LampStatus",
    "SiteModel",
    "alarm_event",
    "alarm_event_ts",
    "lamp_status",
    "severity_rank",
    "shown_text",
]

MAX_RESULTS = 50


@dataclass
class SiteModel(
    LightingModel, ChargingModel, DisplaysModel, WasteModel, HelpPointsModel, EnvironmentModel, AlarmsModel
):
    """Everything the dashboard knows about one site; see the module docstring."""

    site: str
    results: deque[CommandResultMessage] = field(default_factory=lambda: deque(maxlen=MAX_RESULTS))
    plans: dict[str, PlanMessage] = field(default_factory=dict)
    daemon: DaemonStatus | None = None
    messages: int = 0
    bad_payloads: Counter[str] = field(default_factory=Counter)

    @property
    def base(self) -> str:
        """The topic prefix of this site, without the trailing slash."""
        return f"{PREFIX}/{self.site}"

    def apply(self, topic: str, payload: bytes) -> Change:
        """Fold one message into the model; never raises for a bad payload or topic."""
        self.messages += 1
        if not topic.startswith(self.base + "/"):
            return Change.IGNORED
        parts = topic[len(self.base) + 1 :].split("/")
        try:
            change = self._dispatch(parts, payload)
        except (ValidationError, orjson.JSONDecodeError, ValueError, TypeError):
            self.bad_payloads[parts[0]] += 1
            return Change.BAD
        if change is not Change.IGNORED:
            self.version += 1
        return change

    def apply_all(self, messages: Iterable[tuple[str, bytes]]) -> set[Change]:
        """Fold a batch; returns the kinds of change it made."""
        return {self.apply(t, p) for t, p in messages}

    def take_interrupts(self) -> list[Interrupt]:
        """What the folds since the last call raised for the operator's attention (then forgotten)."""
        taken, self.interrupts = self.interrupts, []
        return taken

    @property
    def bad_total(self) -> int:
        return sum(self.bad_payloads.values())

    def _dispatch(self, parts: list[str], payload: bytes) -> Change:
        match parts:
            case ["status"]:
                self.daemon = DaemonStatus.model_validate_json(payload)
                return Change.STATUS
            case ["plans", domain]:
                msg = PlanMessage.model_validate_json(payload)
                change = next((c for s in SLICES if (c := s.fold_plan(self, domain, msg)) is not None), None)
                self.plans[domain] = msg
                return change or Change.PLAN
            case ["commands", "results"]:
                self.results.appendleft(CommandResultMessage.model_validate_json(payload))
                return Change.RESULT
        # Each slice's fold of its own topics, called by class (they share the name `fold`);
        # the first that knows a topic takes it.
        for s in SLICES:
            change = s.fold(self, parts, payload)
            if change is not None:
                return change
        return Change.IGNORED


SLICES: tuple[type[Slice], ...] = tuple(
    c for c in SiteModel.__mro__[1:] if issubclass(c, Slice) and c is not Slice
)
"""The domains' slices `SiteModel` is made of (checked against the registered views by the app)."""
