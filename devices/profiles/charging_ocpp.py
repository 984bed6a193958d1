"""How OCPP 1.6 messages map to the points of a charge point (devices/profiles/charge_point.toml).

The central system (devices/charging_ocpp.py) reads these mappings and the simulated charge
points (simulators/charging_ocpp.py) write them, so the two cannot drift: the vendor
configuration keys, the measurands the central system asks for and how each becomes a point,
the connector statuses, the charging profile ids.

Vendor configuration keys (OCPP 1.6 allows vendor keys in ChangeConfiguration/GetConfiguration):
- `DosEdgeFailsafeCurrent` (A, read-write): what the charger limits itself to when it has not
  heard from the central system for `DosEdgeFailsafeTimeout` seconds, or when it has no
  charging profile (after a boot): 0, or 6 A up to its maximum (IEC 61851).
- `DosEdgeFailsafeTimeout` (s, read-write): its watchdog; any message from the central system
  (a request, or the answer to the charger's own heartbeat) feeds it; 0 turns it off.
- `DosEdgeMaxCurrent` (A, read-only): the charger's own maximum per phase.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ocpp.v16 import call
from ocpp.v16.datatypes import ChargingProfile, ChargingSchedule, ChargingSchedulePeriod

from devices.profiles.charging import default_profile
from edge.events import Value

__all__ = [
    "CONNECTED_STATUSES",
    "CONNECTOR",
    "FAILSAFE_CURRENT_KEY",
    "FAILSAFE_TIMEOUT_KEY",
    "MAX_CURRENT_KEY",
    "NOT_REPORTED",
    "SAMPLED_DATA",
    "TX_DEFAULT_PROFILE_ID",
    "TX_PROFILE_ID",
    "VENDOR_KEYS",
    "MeterReading",
    "number",
    "point_status",
    "read_meter_values",
    "sampled_values",
    "set_charging_profile",
]

FAILSAFE_CURRENT_KEY = "DosEdgeFailsafeCurrent"
FAILSAFE_TIMEOUT_KEY = "DosEdgeFailsafeTimeout"
MAX_CURRENT_KEY = "DosEdgeMaxCurrent"
VENDOR_KEYS = (FAILSAFE_CURRENT_KEY, FAILSAFE_TIMEOUT_KEY, MAX_CURRENT_KEY)

CONNECTOR = 1  # a lamp-post charger has one Type 2 socket
TX_DEFAULT_PROFILE_ID = 1  # chargingProfileId of the TxDefaultProfile the central system sets
TX_PROFILE_ID = 2  # ... and of the TxProfile of a running transaction
SAMPLED_DATA = ("Current.Import", "Current.Offered", "Energy.Active.Import.Register", "Power.Active.Import")
"""MeterValuesSampledData the central system configures (comma-separated in the key's value)."""

CONNECTED_STATUSES = frozenset({"Preparing", "Charging", "SuspendedEV", "SuspendedEVSE", "Finishing"})
NOT_REPORTED: Mapping[str, Value] = {"energy_needed_kwh": -1.0, "departure_ts": 0.0}
"""Points an OCPP 1.6 charger cannot report, at the profile's "unknown" values."""

_PHASES = ("l1", "l2", "l3")
_ENERGY = "Energy.Active.Import.Register"  # also the measurand of a sampled value that names none


def point_status(ocpp_status: str) -> str:
    """The profile's status for an OCPP connector status.

    "Reserved" is "Available": a reserved socket has no car and draws nothing, which is what the
    controller and the interlock read the status for. Anything unknown is "Unavailable".
    """
    if ocpp_status == "Reserved":
        return "Available"
    return ocpp_status if ocpp_status in default_profile().point("status").values else "Unavailable"


@dataclass(slots=True)
class MeterReading:
    """Points read from MeterValues; `offered_a` (Current.Offered) confirms a setpoint."""

    values: dict[str, Value] = field(default_factory=dict)
    offered_a: float | None = None
    energy_wh: float | None = None


def number(value: object) -> float | None:
    """A finite number from an OCPP value string (a sampled value, a configuration value), else None."""
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _plausible(values: dict[str, Value], point: str, v: float, digits: int) -> None:
    """Keep `v` under `point` only if the profile finds it plausible (a wild meter is no reading)."""
    try:
        values[point] = default_profile().point(point).check(round(v, digits))
    except (TypeError, ValueError):
        return


def read_meter_values(meter_value: Iterable[Mapping[str, Any]], meter_start_wh: float | None) -> MeterReading:
    """Points from a MeterValues payload (snake_case keys); later samples win over earlier ones.

    Current.Import per phase (no phase: L1), Current.Offered (the limit in force: current_limit_a),
    Energy.Active.Import.Register (Wh or kWh), Power.Active.Import (W or kW); only at the outlet.
    `meter_start_wh` (the transaction's meterStart) gives session_energy_kwh.
    """
    out = MeterReading()
    amps: dict[str, float] = {}
    for entry in meter_value:
        samples = entry.get("sampled_value")
        if not isinstance(samples, list):
            continue
        for sample in samples:
            if not isinstance(sample, Mapping) or sample.get("location") not in (None, "Outlet"):
                continue
            v = number(sample.get("value")) if sample.get("format") != "SignedData" else None
            if v is None:
                continue
            measurand, unit = sample.get("measurand") or _ENERGY, sample.get("unit")
            if measurand == "Current.Import":
                phase = str(sample.get("phase") or "L1")[:2].lower()
                if phase in _PHASES:
                    amps[phase] = v
            elif measurand == "Current.Offered":
                out.offered_a = v
                _plausible(out.values, "current_limit_a", v, 3)
            elif measurand == _ENERGY:
                out.energy_wh = v * 1000.0 if unit == "kWh" else v
            elif measurand == "Power.Active.Import":
                _plausible(out.values, "power_kw", v if unit == "kW" else v / 1000.0, 3)
    for phase, a in amps.items():
        _plausible(out.values, f"current_{phase}_a", a, 2)
    if amps:
        drawn = amps.get("l1", 0.0) > 0
        out.values["phases_in_use"] = (
            (3 if amps.get("l2", 0.0) > 0 or amps.get("l3", 0.0) > 0 else 1) if drawn else 0
        )
    if out.energy_wh is not None:
        _plausible(out.values, "meter_energy_kwh", out.energy_wh / 1000.0, 3)
        if meter_start_wh is not None:
            _plausible(out.values, "session_energy_kwh", max(0.0, out.energy_wh - meter_start_wh) / 1000.0, 3)
    return out


def sampled_values(values: Mapping[str, Value], measurands: Collection[str]) -> list[dict[str, str]]:
    """The sampledValue list (camelCase, as sent) a charger reports for its points `values`."""

    def num(point: str) -> float:
        v = values.get(point, 0.0)
        return float(v) if isinstance(v, int | float) else 0.0

    out: list[dict[str, str]] = []
    if "Current.Import" in measurands:
        for phase in _PHASES:
            a = num(f"current_{phase}_a")
            out.append(
                {"value": f"{a:.2f}", "measurand": "Current.Import", "phase": phase.upper(), "unit": "A"}
            )
    if "Current.Offered" in measurands:
        out.append({"value": f"{num('current_limit_a'):.2f}", "measurand": "Current.Offered", "unit": "A"})
    if _ENERGY in measurands:
        out.append({"value": f"{num('meter_energy_kwh') * 1000.0:.0f}", "measurand": _ENERGY, "unit": "Wh"})
    if "Power.Active.Import" in measurands:
        out.append(
            {"value": f"{num('power_kw') * 1000.0:.0f}", "measurand": "Power.Active.Import", "unit": "W"}
        )
    return out


def set_charging_profile(limit_a: float, transaction_id: int | None) -> Any:
    """The SetChargingProfile of a setpoint: a TxProfile for a running transaction, else a
    TxDefaultProfile; connector 1, stack level 0, relative, in A, one period (`limit_a`)."""
    tx = transaction_id is not None
    profile = ChargingProfile(
        charging_profile_id=TX_PROFILE_ID if tx else TX_DEFAULT_PROFILE_ID,
        stack_level=0,
        charging_profile_purpose="TxProfile" if tx else "TxDefaultProfile",
        charging_profile_kind="Relative",
        charging_schedule=ChargingSchedule(
            charging_rate_unit="A",
            charging_schedule_period=[ChargingSchedulePeriod(start_period=0, limit=limit_a)],
        ),
        transaction_id=transaction_id,
    )
    return call.SetChargingProfile(connector_id=CONNECTOR, cs_charging_profiles=profile)
