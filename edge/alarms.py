"""Alarm bookkeeping shared by controllers: raise and clear on transitions only."""

from __future__ import annotations

from edge.bus import EventBus
from edge.clock import Clock
from edge.events import AlarmEvent, Severity


class Alarms:
    """Publishes an AlarmEvent when an alarm changes state, never for repetitions."""

    def __init__(self, bus: EventBus, clock: Clock) -> None:
        self._bus = bus
        self._clock = clock
        self._active: dict[tuple[str, str], AlarmEvent] = {}
        self.raised = 0
        self.cleared = 0

    def set(self, device_id: str, code: str, active: bool, severity: Severity, detail: str = "") -> None:
        """Raise (active=True) or clear an alarm; repeated calls in the same state do nothing."""
        key = (device_id, code)
        if active == (key in self._active):
            return
        event = AlarmEvent(device_id, code, severity, active, self._clock.now(), detail)
        if active:
            self._active[key] = event
            self.raised += 1
        else:
            del self._active[key]
            self.cleared += 1
        self._bus.publish(event)

    def is_active(self, device_id: str, code: str) -> bool:
        return (device_id, code) in self._active

    def active(self) -> list[AlarmEvent]:
        return list(self._active.values())
