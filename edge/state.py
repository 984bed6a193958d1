"""The state store: the single writer of device state.

Drivers publish telemetry and availability, controllers publish alarms, the
dispatcher publishes command results; the store folds them into one `DeviceState`
per device and announces what changed with `StateChanged`. Everyone else reads.
Each domain's `build` registers its configured devices with their kinds before anything
runs (`StateStore.register`); an event about any other id is logged as
`state_unknown_device`, once per id.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

import structlog

from edge.bus import EventBus
from edge.events import (
    AlarmEvent,
    Availability,
    CommandResult,
    Event,
    Outcome,
    StateChanged,
    Telemetry,
    Value,
)

log = structlog.get_logger(__name__)

# A device that sends telemetry or availability without being configured is still tracked
# (under this kind) so its data is not lost, but it is logged: its configuration is missing.
UNKNOWN_KIND = "unknown"
_MAX_UNKNOWN_IDS_LOGGED = 100

Watcher = Callable[[str, Mapping[str, Value | None]], None]
NO_ALARMS: Mapping[str, AlarmEvent] = MappingProxyType({})


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<missing>"


_MISSING: Final = _Missing()


class _Table:
    """The values of every device of one kind: a column per value name, a row per device.

    A city's 54,000 lamps each held a dict of their 12 values (576 bytes, and its floats): 31 MB,
    allocated as the first readings came in, amid start-up's short-lived objects, which left the
    heap fragmented. A column is one list, allocated when the kind is registered; a device's
    values are one slot in each (8 bytes a value).
    """

    __slots__ = ("cols", "index", "names", "rows")

    def __init__(self) -> None:
        self.index: dict[str, int] = {}  # value name -> column
        self.names: list[str] = []  # column -> value name
        self.cols: list[list[Value | _Missing]] = []
        self.rows = 0

    def add_row(self) -> int:
        for col in self.cols:
            col.append(_MISSING)
        self.rows += 1
        return self.rows - 1

    def column(self, name: str) -> list[Value | _Missing]:
        i = self.index.get(name)
        if i is None:
            i = self.index[name] = len(self.cols)
            self.names.append(name)
            self.cols.append([_MISSING] * self.rows)
        return self.cols[i]


class Values(Mapping[str, Value]):
    """One device's current values, read like a dict (its row of its kind's table).

    Only the state store writes them (`set`); everyone else reads.
    """

    __slots__ = ("_row", "_table")

    def __init__(self, table: _Table, row: int) -> None:
        self._table = table
        self._row = row

    @classmethod
    def of(cls, values: Mapping[str, Value]) -> Values:
        """Values of their own (not in a store's table), for tests and tools."""
        out = cls(_Table(), 0)
        out._table.add_row()
        for key, value in values.items():
            out.set(key, value)
        return out

    def set(self, key: str, value: Value) -> None:
        self._table.column(key)[self._row] = value

    def get(self, key: str, default: Value | None = None) -> Value | None:  # type: ignore[override]
        i = self._table.index.get(key)
        if i is None:
            return default
        v = self._table.cols[i][self._row]
        return default if isinstance(v, _Missing) else v

    def __getitem__(self, key: str) -> Value:
        i = self._table.index.get(key)
        if i is not None:
            v = self._table.cols[i][self._row]
            if not isinstance(v, _Missing):
                return v
        raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        i = self._table.index.get(key) if isinstance(key, str) else None
        return i is not None and not isinstance(self._table.cols[i][self._row], _Missing)

    def __iter__(self) -> Iterator[str]:
        row = self._row
        return iter(
            [
                k
                for k, col in zip(self._table.names, self._table.cols, strict=True)
                if col[row] is not _MISSING
            ]
        )

    def __len__(self) -> int:
        row = self._row
        return sum(1 for col in self._table.cols if col[row] is not _MISSING)

    def __repr__(self) -> str:
        return f"Values({dict(self)!r})"


def _no_values() -> Values:
    return Values.of({})


@dataclass(slots=True)
class DeviceState:
    """What the daemon knows about one device right now."""

    device_id: str
    kind: str
    online: bool | None = None
    values: Values = field(default_factory=_no_values)
    updated_at: float = 0.0  # the last reading from the device
    derived_at: float = 0.0  # the last value a controller derived about it
    # Shared and empty until the device's first alarm: 54,000 empty dicts were 3.6 MB.
    alarms: Mapping[str, AlarmEvent] = field(default_factory=lambda: NO_ALARMS)
    last_command: str = ""

    def snapshot(self) -> dict[str, object]:
        """A plain dict for payloads and storage."""
        return {
            "device_id": self.device_id,
            "kind": self.kind,
            "online": self.online,
            "values": dict(self.values),
            "updated_at": self.updated_at,
            "derived_at": self.derived_at,
            "alarms": sorted(self.alarms),
            "last_command": self.last_command,
        }


class StateStore:
    """Folds events into device state; the only code that writes `DeviceState`."""

    def __init__(self, bus: EventBus, kinds: dict[str, str]) -> None:
        self._bus = bus
        self._tables: dict[str, _Table] = {}
        self._devices: dict[str, DeviceState] = {}
        self.register(kinds)
        self._sub = bus.subscribe("state", Telemetry, Availability, AlarmEvent, CommandResult)
        self.unknown_devices = 0  # events about ids that no configuration registered
        self._unknown_ids: set[str] = set()
        self._watchers: list[Watcher] = []

    def register(self, kinds: Mapping[str, str]) -> None:
        """Add configured devices with their kinds (a domain's `build`, before anything runs);
        a device registered already keeps its state."""
        for dev, kind in kinds.items():
            if dev not in self._devices:
                self._devices[dev] = self._new(dev, kind)

    def _new(self, device_id: str, kind: str) -> DeviceState:
        table = self._tables.get(kind)
        if table is None:
            table = self._tables[kind] = _Table()
        return DeviceState(device_id, kind, values=Values(table, table.add_row()))

    def watch(self, fn: Watcher) -> None:
        """Call `fn(device_id, changed)` in step with every change the store makes.

        For indexes that must never lag the store (the lamps' load the feeder interlock
        counts); everyone else follows `StateChanged` on the bus. A reading that changes
        nothing but the time it was seen is not a change.
        """
        self._watchers.append(fn)

    def _changed(self, event: StateChanged) -> None:
        for fn in self._watchers:
            fn(event.device_id, event.changed)
        self._bus.publish(event)

    def get(self, device_id: str) -> DeviceState | None:
        return self._devices.get(device_id)

    def __contains__(self, device_id: str) -> bool:
        return device_id in self._devices

    def devices(self, kind: str | None = None) -> Iterator[DeviceState]:
        return (d for d in self._devices.values() if kind is None or d.kind == kind)

    def value(self, device_id: str, point: str) -> Value | None:
        dev = self._devices.get(device_id)
        return None if dev is None else dev.values.get(point)

    async def run(self) -> None:
        """Apply events until the bus closes."""
        async for event in self._sub:  # it yields to the loop every few milliseconds
            self.apply(event)

    def apply(self, event: Event) -> None:
        """Fold one event into state and announce the change."""
        if isinstance(event, Telemetry):
            self._telemetry(event)
        elif isinstance(event, Availability):
            for dev_id in (*event.device_ids, event.endpoint):
                self._set_online(dev_id, event.online, event.ts)
        elif isinstance(event, AlarmEvent):
            self._alarm(event)
        elif isinstance(event, CommandResult):
            self._confirmed(event)

    def _confirmed(self, event: CommandResult) -> None:
        """A confirmed write: who commanded it, and the value the device read back.

        The read-back is a reading like a poll's, taken at the write: the state (and the
        dashboard, and whoever waits for the level) has it now, not a poll interval later.
        Only a number already known for the point is replaced (a display's content is not).
        """
        dev = self._devices.get(event.command.device_id)
        if dev is None or event.outcome is not Outcome.CONFIRMED:
            return
        changed: dict[str, Value | None] = {}
        if dev.last_command != event.command.source:
            dev.last_command = changed["last_command"] = event.command.source
        point, back = event.command.point, event.applied_value
        old = dev.values.get(point)
        if back is not None and isinstance(old, int | float) and not isinstance(old, bool):
            new: Value = int(back) if isinstance(old, int) and back.is_integer() else back
            if new != old:
                dev.values.set(point, new)
                changed[point] = new
        # A plan re-sent or reconciled to the value it had, from the same source, changes
        # nothing: announced, it republished the device's retained state unchanged but for `ts`.
        if changed:
            self._changed(StateChanged(dev.device_id, event.ts, changed))

    def _unknown(self, device_id: str) -> None:
        """Count an event about an unregistered id; log each such id once (the first 100 ids)."""
        self.unknown_devices += 1
        if device_id not in self._unknown_ids and len(self._unknown_ids) < _MAX_UNKNOWN_IDS_LOGGED:
            self._unknown_ids.add(device_id)
            log.warning("state_unknown_device", device_id=device_id, count=self.unknown_devices)

    def _device(self, device_id: str) -> DeviceState | None:
        dev = self._devices.get(device_id)
        if dev is None:
            self._unknown(device_id)
        return dev

    def _tracked(self, device_id: str) -> DeviceState:
        """A registered device, or a new entry for a device nobody configured (logged once)."""
        dev = self._devices.get(device_id)
        if dev is None:
            self._unknown(device_id)
            dev = self._devices[device_id] = self._new(device_id, UNKNOWN_KIND)
        return dev

    def _telemetry(self, event: Telemetry) -> None:
        dev = self._tracked(event.device_id)
        changed: dict[str, Value | None] = {}
        values = dev.values
        for key, val in event.values.items():
            if values.get(key) != val:
                values.set(key, val)
                changed[key] = val
        if event.derived:
            dev.derived_at = event.ts
        else:
            dev.updated_at = event.ts
            if dev.online is not True:
                dev.online = True
                changed["online"] = True
        if changed:
            self._changed(StateChanged(dev.device_id, event.ts, changed, event.derived))

    def _set_online(self, device_id: str, online: bool, ts: float) -> None:
        dev = self._tracked(device_id)
        if dev.online != online:
            dev.online = online
            self._changed(StateChanged(device_id, ts, {"online": online}))

    def _alarm(self, event: AlarmEvent) -> None:
        dev = self._device(event.device_id)
        if dev is None:
            return
        had = event.code in dev.alarms
        if event.active:
            dev.alarms = {**dev.alarms, event.code: event}
        elif had:
            dev.alarms = {k: v for k, v in dev.alarms.items() if k != event.code} or NO_ALARMS
        if had == event.active:
            return  # raised again, or cleared again: the device's set of alarms is the same
        self._changed(StateChanged(dev.device_id, event.ts, {"alarms": ",".join(sorted(dev.alarms))}))
