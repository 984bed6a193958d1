"""Charging: the readings of the charging plan the dashboard shows (lenient: unknown keys are ignored)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class PlanSession(BaseModel):
    """One car's current per slot (`plan.sessions[]` of a charging PlanMessage)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str
    current_a: list[float] = []
    energy_kwh: float = 0.0
    unmet_kwh: float = 0.0


class ChargingPlan(BaseModel):
    """The parts of the charging plan body the dashboard shows (unknown keys are ignored)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    status: str = ""
    reason: str = ""
    sessions: list[PlanSession] = []
    delivered_kwh: float = 0.0
    requested_kwh: float = 0.0
    start: float = 0.0
    slot_s: float = 900.0
    ts: float = 0.0

    def current_at(self, session_id: str, ts: float) -> float | None:
        """The planned current of a session in the slot holding `ts` (None: not planned)."""
        if self.slot_s <= 0:
            return None
        i = int((ts - self.start) // self.slot_s)
        for s in self.sessions:
            if s.id == session_id:
                return s.current_a[i] if 0 <= i < len(s.current_a) else 0.0
        return None

    def session(self, session_id: str) -> PlanSession | None:
        return next((s for s in self.sessions if s.id == session_id), None)
