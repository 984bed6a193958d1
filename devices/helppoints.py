"""Modbus driver for help points (emergency call buttons) in lamp controllers.

Polls each controller's help-point blocks on a session of its own, fast (0.25 s by default)
because a press must reach the operator within a second: the lamp poll is slower (1-10 s)
and queues behind plan writes. Lamp controllers take several Modbus TCP connections; this one
costs a read of a few registers per poll. A help point's values are published as `Telemetry`
when they change and at least every `report_every_s`; the controller's link state as
`Availability` of its help points ("help point unavailable" while it is down).

LoRaWAN help points need no driver: their uplinks come through the shared ingest
(`devices/protocols/lorawan.py`, profile `helppoint_button`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from devices.profiles.helppoints import HelpPointProfile, default_profile
from devices.profiles.modbus_map import MODBUS_MAX_READ
from devices.protocols.link import LinkTiming, Presence, Publish, poll_phases
from devices.protocols.modbus import PRIO_POLL, ModbusCounters, ModbusSession, quiet_pymodbus
from devices.protocols.registers import BlockDecoder, PointValueError
from edge.clock import Clock
from edge.events import Telemetry, Value
from edge.lifecycle import Service

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class HelpPointEndpoint:
    """A lamp controller with help points: its Modbus address and (slot, help point id) pairs."""

    endpoint_id: str
    host: str
    port: int
    unit: int
    points: tuple[tuple[int, str], ...]


@dataclass(frozen=True, slots=True)
class _Span:
    address: int
    count: int
    points: tuple[tuple[int, str], ...]  # (offset in the read, help point id)


def plan_spans(profile: HelpPointProfile, points: Sequence[tuple[int, str]]) -> list[_Span]:
    """Reads that cover every help point's block, each within one Modbus read.

    Only neighbouring slots share a read: a controller may refuse a read that runs over a slot
    it has no help point in (an undefined address), which would take both help points down."""
    spans: list[_Span] = []
    span = profile.block.span
    prev = -2
    for slot, hp in sorted(points):
        base = profile.base(slot)
        last = spans[-1] if spans else None
        if last is not None and slot == prev + 1 and base + span - last.address <= MODBUS_MAX_READ:
            spans[-1] = _Span(last.address, base + span - last.address,
                              (*last.points, (base - last.address, hp)))  # fmt: skip
        else:
            spans.append(_Span(base, span, ((0, hp),)))
        prev = slot
    return spans


class _Link:
    """One controller's help points: poll, decode, report on change."""

    def __init__(self, driver: HelpPointDriver, ep: HelpPointEndpoint, phase_s: float) -> None:
        self.driver, self.ep, self.phase_s = driver, ep, phase_s
        self.session = ModbusSession(
            f"{ep.endpoint_id}:helppoints", ep.host, ep.port, ep.unit, driver.timing, driver.stats
        )
        self.spans = plan_spans(driver.profile, ep.points)
        self.last: dict[str, tuple[dict[str, Value], float]] = {}
        self.log = log.bind(endpoint=ep.endpoint_id, host=ep.host, port=ep.port)
        ids = tuple(hp for _, hp in ep.points)
        self.presence = Presence(driver, f"{ep.endpoint_id}:helppoints", ids, "helppoint_link", self.log)

    async def run(self) -> None:
        d = self.driver
        await self.session.run(self.poll_once, d.poll_interval_s, self.presence.set, phase_s=self.phase_s,
                               first_s=self.phase_s)  # fmt: skip

    async def poll_once(self) -> None:
        d = self.driver
        for sp in self.spans:
            regs = await self.session.read(sp.address, sp.count, PRIO_POLL, d.timing.timeout_s)
            now = d.clock.now()
            for off, hp in sp.points:
                try:
                    values = d.decoder.decode(regs, off)
                except PointValueError as exc:
                    d.bad_values += 1
                    self.log.warning("helppoint_bad_value", device=hp, point=exc.point, error=str(exc))
                    continue
                before = self.last.get(hp)
                if before is not None and before[0] == values and now - before[1] < d.report_every_s:
                    continue
                self.last[hp] = (values, now)
                d.publish(Telemetry(hp, now, dict(values)))


class HelpPointDriver(Service):
    """Polls the help points of lamp controllers; an async context manager owning its tasks.

    `poll_interval_s` and `timeout_s` are real seconds; `report_every_s` is clock seconds.
    """

    service_name = "helppoints"

    def __init__(
        self,
        endpoints: Sequence[HelpPointEndpoint],
        publish: Publish,
        clock: Clock,
        *,
        profile: HelpPointProfile | None = None,
        poll_interval_s: float = 0.25,
        timeout_s: float = 1.0,
        backoff_max_s: float = 10.0,
        report_every_s: float = 300.0,
    ) -> None:
        super().__init__()
        if poll_interval_s <= 0:
            raise ValueError(f"poll_interval_s must be positive, not {poll_interval_s}")
        self.profile = profile or default_profile()
        self.publish = publish
        self.clock = clock
        self.poll_interval_s = poll_interval_s
        self.report_every_s = report_every_s
        self.timing = LinkTiming(timeout_s, 0.25, backoff_max_s)
        self.stats = ModbusCounters()
        self.decoder = BlockDecoder(self.profile.block)
        self.bad_values = 0
        self._endpoints = tuple(endpoints)
        seen: set[str] = set()
        for ep in self._endpoints:
            for slot, hp in ep.points:
                self.profile.base(slot)  # ValueError now, not at the first poll
                if hp in seen:
                    raise ValueError(f"help point {hp!r} appears twice")
                seen.add(hp)
        self._links: list[_Link] = []
        quiet_pymodbus()

    async def _start(self) -> None:
        phases = poll_phases(len(self._endpoints), self.poll_interval_s)
        for ep, phase in zip(self._endpoints, phases, strict=True):
            link = _Link(self, ep, phase)
            self._links.append(link)
            self.spawn(link.run(), f"poll[{ep.endpoint_id}]")

    async def _stop(self) -> None:
        for link in self._links:
            link.session.drop()

    def online(self, endpoint_id: str) -> bool | None:
        """Whether the controller's help points answer (None: not polled yet)."""
        return next((lk.presence.online for lk in self._links if lk.ep.endpoint_id == endpoint_id), None)
