"""Modbus TCP driver for lamp controllers: coalesced polling, heartbeat, write with read-back.

One `devices.protocols.modbus.ModbusSession` per endpoint, one request in flight (commands ahead
of heartbeats ahead of polls); each endpoint has its own tasks, so a dead controller only costs its
own backoff. Register layout and coding come from the profile and codec the simulator serves too.
"""

from __future__ import annotations

import asyncio
import random
from array import array
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import structlog
from pymodbus.client import AsyncModbusTcpClient

from devices.lighting_spans import compact, plan_reads, readback_spans, table_runs
from devices.profiles.lighting import LampControllerProfile, default_profile
from devices.profiles.modbus_map import Point
from devices.protocols.link import LinkTiming, Presence, Publish, poll_phases, wait_for_event
from devices.protocols.modbus import (
    PRIO_COMMAND,
    PRIO_HEARTBEAT,
    PRIO_POLL,
    ModbusCounters,
    ModbusSession,
    quiet_pymodbus,
)
from devices.protocols.registers import BlockDecoder, PointValueError, RawBands, decode, encode
from edge.clock import Clock
from edge.errors import DeviceError, DeviceReplyError, DeviceTimeout, DeviceUnavailable
from edge.events import Telemetry, Value
from edge.lifecycle import Service, ServiceState

log = structlog.get_logger(__name__)

_WATCHDOG_FALLBACK_S = 60.0  # heartbeat period while the device's watchdog_s is unknown or 0
MAX_WRITE_BATCH = 32  # lamp writes to one controller sent under one hold of its link
MAX_TABLE_BATCH = 123  # with a level table: the most registers one write-multiple may carry
MAX_RW_BATCH = 121  # the most one read/write multiple (function 23) may write
_BATCH_GRACE_S = 0.1  # a batch fails its writes at their deadline; the caller waits this longer
STARTUP_SPREAD_S = 2.0  # the first polls of all controllers are spread over this (real s)


@dataclass(frozen=True, slots=True)
class ModbusEndpoint:
    """One lamp controller: a Modbus TCP server, its unit id and the lamps behind it.

    `lamps` holds (lamp index in the profile, device_id) pairs.
    """

    endpoint_id: str
    host: str
    port: int
    unit: int
    lamps: tuple[tuple[int, str], ...]


@dataclass(slots=True)
class DriverStats(ModbusCounters):
    """Counters for benchmarks and health checks (read requests, not lamps, unless named)."""

    lamp_reads: int = 0
    lamp_reports: int = 0  # lamp readings published with values (a change beyond the dead band)
    lamp_quiet: int = 0  # readings within the dead band: a value-less "still here" or nothing
    write_batches: int = 0  # holds of a link for batched lamp writes (each: writes, then read-backs)
    table_writes: int = 0  # write-multiple requests to a level table (each: a run of lamps)
    table_reads: int = 0  # reads of a level table after its writes (none with function 23)


@dataclass(slots=True)
class _Write:
    """One lamp register write waiting for its controller's next batch."""

    address: int
    value: int
    deadline: float  # loop time
    future: asyncio.Future[int]


class _WriteBatcher:
    """Writes to one controller that arrive together go out together, under one hold of the link.

    With a level table, a run of neighbouring lamps' levels is one write-multiple (function 16)
    and one read back: a city's first plan (54,000 writes) is 1,076 requests, not 60,000. Without
    one, each register is written (function 6) and read back in as few reads as the spans allow."""

    def __init__(self, runner: _Endpoint) -> None:
        self.runner = runner
        self.pending: deque[_Write] = deque()
        self.ready = asyncio.Event()

    async def write(self, address: int, value: int, timeout_s: float) -> int:
        """Queue a write and wait for its read-back value (DeviceTimeout after `timeout_s`)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[int] = loop.create_future()
        self.pending.append(_Write(address, value, loop.time() + timeout_s, fut))
        self.ready.set()
        session = self.runner.session
        try:
            async with asyncio.timeout(timeout_s + _BATCH_GRACE_S):
                return await fut
        except TimeoutError:
            raise DeviceTimeout(
                f"no answer within {timeout_s} s", endpoint=session.name, unit=session.unit
            ) from None

    async def run(self) -> None:
        """Send what is queued, a batch at a time, until cancelled."""
        while True:
            await self.ready.wait()
            self.ready.clear()
            while self.pending:
                batch = self.take()
                if batch:
                    await self.flush(batch)

    def take(self) -> list[_Write]:
        """Up to a batch of writes still wanted (a write past its deadline fails unsent)."""
        now = asyncio.get_running_loop().time()
        batch: list[_Write] = []
        session = self.runner.session
        most = MAX_TABLE_BATCH if self.runner.table_of else MAX_WRITE_BATCH
        while self.pending and len(batch) < most:
            w = self.pending.popleft()
            if w.future.done():
                continue  # its caller gave up
            if w.deadline <= now:
                self.runner.driver.stats.write_errors += 1
                w.future.set_exception(DeviceTimeout("expired in the queue", endpoint=session.name))
                continue
            batch.append(w)
        return batch

    async def flush(self, batch: list[_Write]) -> None:
        session, stats = self.runner.session, self.runner.driver.stats
        refused: dict[int, DeviceError] = {}

        runner = self.runner
        table_of = runner.table_of
        in_table = {i: table_of[w.address] for i, w in enumerate(batch) if w.address in table_of}
        by_index = {index: i for i, index in in_table.items()}
        table = runner.driver.profile.table
        base = 0 if table is None else table.base  # in_table is empty without a table

        async def one_by_one(client: AsyncModbusTcpClient, items: Iterable[int]) -> None:
            for i in items:
                try:
                    await session.write_regs(client, batch[i].address, [batch[i].value])
                except DeviceReplyError as exc:  # the device refused this one: the others go on
                    refused[i] = exc

        async def go(client: AsyncModbusTcpClient) -> dict[int, int]:
            await one_by_one(client, (i for i in range(len(batch)) if i not in in_table))
            indices = sorted(by_index)
            got: dict[int, int] = {}
            both = table is not None and table.read_write  # a run written and read back at once
            for first, n in table_runs(indices, frozenset(), MAX_RW_BATCH if both else MAX_TABLE_BATCH):
                run = [by_index[j] for j in range(first, first + n)]
                runner.driver.stats.table_writes += 1
                values = [batch[i].value for i in run]
                try:
                    if both:
                        back = await session.write_read_regs(client, base + first, values)
                        got.update((batch[i].address, v) for i, v in zip(run, back, strict=True))
                    else:
                        await session.write_regs(client, base + first, values)
                except DeviceReplyError:  # one refused value refuses the request: each on its own
                    await one_by_one(client, run)
            wanted = [w.address for i, w in enumerate(batch) if i not in refused and i not in in_table]
            for address, count in readback_spans(runner.spans, wanted):
                regs = await session.read_regs(client, address, count)
                got.update(zip(range(address, address + count), regs, strict=True))
            back = [
                j for j in indices if by_index[j] not in refused and batch[by_index[j]].address not in got
            ]
            limit = runner.driver.profile.max_read_registers
            for first, n in table_runs(back, runner.table_served, limit):
                runner.driver.stats.table_reads += 1
                regs = await session.read_regs(client, base + first, n)
                for j, value in zip(range(first, first + n), regs, strict=True):
                    if j in by_index:
                        got[batch[by_index[j]].address] = value
            return got

        stats.writes += len(batch)
        stats.write_batches += 1
        timeout = max(0.0, min(w.deadline for w in batch) - asyncio.get_running_loop().time())
        try:
            got = await session.call(PRIO_COMMAND, timeout, go, await_link=True)
        except DeviceError as exc:
            got, refused = {}, dict.fromkeys(range(len(batch)), exc)
            runner.log.warning(
                "modbus_write_batch_failed", writes=len(batch), timeout_s=round(timeout, 2), error=str(exc)
            )
        for i, w in enumerate(batch):
            if i in refused:
                stats.write_errors += 1
                if not w.future.done():
                    w.future.set_exception(refused[i])
            elif not w.future.done():
                w.future.set_result(got[w.address])


def within_deadband(old: Mapping[str, Value], new: Mapping[str, Value], bands: Mapping[str, float]) -> bool:
    """Whether `new` differs from `old` nowhere, or only by at most each point's dead band (on
    decoded values; the driver judges raw registers the same way with `RawBands`)."""
    for key, value in new.items():
        was, band = old.get(key), bands.get(key)
        if was == value:
            continue
        if (
            band is None
            or not isinstance(was, int | float)
            or not isinstance(value, int | float)
            or abs(value - was) > band
        ):
            return False
    return True


class _Endpoint:
    """Poll loop, heartbeat and availability of one lamp controller, on its Modbus session."""

    def __init__(self, driver: ModbusLightingDriver, ep: ModbusEndpoint, phase_s: float = 0.0) -> None:
        self.driver = driver
        self.ep = ep
        self.phase_s = phase_s  # where in the poll interval this controller is polled
        self.session = ModbusSession(ep.endpoint_id, ep.host, ep.port, ep.unit, driver.timing, driver.stats)
        self.watchdog_s: float | None = None
        self.heartbeat_seq = 0
        self.spans = plan_reads(driver.profile, ep.lamps)
        table = driver.profile.table
        # the lamps' table point address -> lamp index, when the profile has a level table
        self.table_of: dict[int, int] = (
            {}
            if table is None
            else {driver.profile.lamp_address(index, table.point): index for index, _ in ep.lamps}
        )
        self.table_served = compact(self.table_of.values())
        self.device_ids = (ep.endpoint_id, *(d for _, d in ep.lamps))
        # Registers last published, lamp `i` at `i * span` of one array (`known[i]` set; an array
        # a lamp was 7 MB at 54,000); without dead bands the values too, in the decoder's order.
        slots = 1 + max((index for index, _ in ep.lamps), default=-1)
        self.reported = array("H", bytes(2 * slots * driver.lamp_decoder.span))
        self.known = bytearray(slots)
        self.values_of: dict[str, dict[str, Value]] = {}  # without dead bands: the last values, re-sent
        # Polls since the last publish by lamp index, spread so "still here" readings do not align.
        every = driver.report_every_polls
        self.quiet = array("I", bytes(4 * slots))
        for i, (index, _) in enumerate(ep.lamps):
            self.quiet[index] = i % every
        self.bad: set[str] = set()
        self.log = log.bind(endpoint=ep.endpoint_id, host=ep.host, port=ep.port, unit=ep.unit)
        self.presence = Presence(driver, ep.endpoint_id, self.device_ids, "modbus_endpoint", self.log)
        self.writes = _WriteBatcher(self)

    async def poll_loop(self) -> None:
        """Poll forever; the session reconnects with backoff after a failure."""
        d = self.driver
        # The first polls (connects) are spread over at most STARTUP_SPREAD_S, so a city is
        # online in a second or two; after them each keeps its own phase of the interval.
        spread = min(1.0, STARTUP_SPREAD_S / d.poll_interval_s) if d.poll_interval_s > 0 else 0.0
        first = self.phase_s * spread
        await self.session.run(
            self.poll_once,
            d.poll_interval_s,
            self.presence.set,
            phase_s=self.phase_s,
            first_s=first,
        )

    async def poll_once(self) -> None:
        """Read every span and publish telemetry; a bad lamp value skips only that lamp."""
        d = self.driver
        decoder = d.lamp_decoder
        span = decoder.span
        publish = d.publish
        base, stride = d.profile.lamp.base, d.profile.lamp_stride
        for rs in self.spans:
            # Behind commands (a first plan), a poll waits up to an interval for the link: late
            # is not down; only its own request is held to the timeout.
            regs = await self.session.read(
                rs.address, rs.count, PRIO_POLL, d.timing.timeout_s, wait_s=d.poll_interval_s
            )
            now = d.clock.now()
            if rs.controller is not None:
                self.publish_controller(regs, rs.controller, now)
            got = memoryview(array("H", regs))  # out of range for 16 bits: OverflowError, a bad reply
            reported, known, values_of, quiet = (
                memoryview(self.reported),
                self.known,
                self.values_of,
                self.quiet,
            )
            every, within, banded = d.report_every_polls, d.lamp_bands.within, bool(d.deadbands)
            for device_id, off in zip(rs.lamp_ids, rs.lamp_offsets, strict=True):
                index = (rs.address + off - base) // stride
                raw, at = got[off : off + span], index * span
                old = reported[at : at + span]
                if not known[index] or (old != raw and not within(old, raw)):
                    try:
                        values = decoder.decode(raw)
                    except PointValueError as exc:
                        self.mark_bad(device_id, index, exc)
                        continue
                    if device_id in self.bad:
                        self.bad.discard(device_id)
                        self.log.info("modbus_value_recovered", device_id=device_id)
                    reported[at : at + span] = raw
                    known[index] = 1
                    if not banded:
                        values_of[device_id] = dict(values)  # a copy: the event's may be kept by others
                    quiet[index] = 0
                    d.stats.lamp_reports += 1
                    publish(Telemetry(device_id, now, values))
                    continue
                d.stats.lamp_quiet += 1
                # Nothing beyond the dead band: a value-less reading keeps the lamp fresh
                # every `report_every_polls` polls (the state store and the checks see it).
                n = quiet[index] + 1
                quiet[index] = 0 if n >= every else n
                if n >= every:
                    values = values_of[device_id].copy() if not banded else {}
                    publish(Telemetry(device_id, now, values))
            d.stats.lamp_reads += len(rs.lamp_ids)

    def publish_controller(self, regs: list[int], off: int, now: float) -> None:
        eid = self.ep.endpoint_id
        try:
            values = self.driver.controller_decoder.decode(regs, off)
        except PointValueError as exc:
            self.mark_bad(eid, None, exc)
            return
        values["failsafe_active"] = bool(values["failsafe_active"])
        wd = values["watchdog_s"]
        self.watchdog_s = float(wd) if isinstance(wd, int | float) else None
        self.driver.publish(Telemetry(eid, now, values))

    def mark_bad(self, device_id: str, index: int | None, exc: PointValueError) -> None:
        if index is not None:
            self.known[index] = 0
        self.values_of.pop(device_id, None)
        if device_id not in self.bad:
            self.bad.add(device_id)
            self.log.warning("modbus_bad_value", device_id=device_id, point=exc.point, error=str(exc))

    async def heartbeat_loop(self) -> None:
        """Write the heartbeat register so the controller's watchdog keeps its fail-safe off."""
        d = self.driver
        address = d.profile.controller_address("heartbeat")
        retry = d.timing.backoff()
        while True:
            await self.presence.up.wait()
            interval = d.heartbeat_every_s
            if interval is None:
                wd = self.watchdog_s
                interval = wd / 3 if wd else _WATCHDOG_FALLBACK_S
            self.heartbeat_seq = (self.heartbeat_seq + 1) & 0xFFFF
            try:
                await self.session.write_read(
                    address, [self.heartbeat_seq], PRIO_HEARTBEAT, d.timing.timeout_s
                )
            except DeviceError as exc:
                # the poll loop owns availability; a missed beat is retried after a short
                # backoff, not a whole period later (a slow answer on a busy link must not
                # bring the watchdog a period closer to its fail-safe)
                self.log.debug("modbus_heartbeat_failed", error=str(exc))
                await retry.wait()
                continue
            retry.reset()
            await d.clock.sleep(interval)


class ModbusLightingDriver(Service):
    """Driver for Modbus TCP lamp controllers; an async context manager that owns its tasks.

    Publishes `Telemetry` per lamp (device_id from the endpoint's lamps) and per controller
    (device_id = endpoint_id) on every poll, and `Availability` per endpoint on transitions.
    `poll_interval_s` and timeouts are real seconds; `heartbeat_every_s` is clock seconds
    (default: a third of the controller's watchdog_s, read from the device).
    """

    service_name = "modbus"

    def __init__(
        self,
        endpoints: Sequence[ModbusEndpoint],
        profile: LampControllerProfile | None,
        publish: Publish,
        clock: Clock,
        *,
        poll_interval_s: float = 1.0,
        timeout_s: float = 1.0,
        backoff_max_s: float = 30.0,
        heartbeat_every_s: float | None = None,
        backoff_base_s: float = 0.5,
        seed: int | None = None,
        report_every_s: float | None = None,
    ) -> None:
        """`report_every_s`: a lamp whose readings stay within the profile's dead bands is
        still reported (value-less) this often, so the state store knows it fresh; None:
        every poll reports its values, as without dead bands."""
        super().__init__()
        self._rng = random.Random(seed)  # the poll phases' jitter
        self.profile = profile or default_profile()
        self.publish = publish
        self.clock = clock
        self.poll_interval_s = poll_interval_s
        self.heartbeat_every_s = heartbeat_every_s
        bands = {p.name: p.deadband for p in self.profile.lamp.points if p.deadband > 0}
        self.deadbands = bands if report_every_s is not None else {}
        if poll_interval_s < 0:
            raise ValueError(f"poll_interval_s must not be negative, not {poll_interval_s}")
        # 0 polls back to back (a bench's flat-out read): then every poll reports
        every = (report_every_s or 0.0) / poll_interval_s if poll_interval_s > 0 else 1.0
        self.report_every_polls = max(1, round(every))
        self.timing = LinkTiming(timeout_s, backoff_base_s, backoff_max_s)
        self.stats = DriverStats()
        self.lamp_decoder = BlockDecoder(self.profile.lamp)
        self.lamp_keys = self.lamp_decoder.keys
        self.lamp_bands = RawBands(self.profile.lamp, self.deadbands)
        self.controller_decoder = BlockDecoder(self.profile.controller)
        self._endpoints = tuple(endpoints)
        ids = [e.endpoint_id for e in self._endpoints]
        if len(set(ids)) != len(ids):
            raise ValueError("endpoint ids must be unique")
        self._runners: dict[str, _Endpoint] = {}
        self._routes: dict[str, tuple[str, int | None]] = {}
        for ep in self._endpoints:
            self._routes[ep.endpoint_id] = (ep.endpoint_id, None)
            for index, device_id in ep.lamps:
                self.profile.lamp_base(index)  # ValueError now, not at the first poll
                if device_id in self._routes:
                    raise ValueError(f"device {device_id!r} appears twice")
                self._routes[device_id] = (ep.endpoint_id, index)
        quiet_pymodbus()

    async def _start(self) -> None:
        phases = poll_phases(len(self._endpoints), self.poll_interval_s, self._rng)
        for ep, phase in zip(self._endpoints, phases, strict=True):
            runner = _Endpoint(self, ep, phase)
            self._runners[ep.endpoint_id] = runner
            self.spawn(runner.poll_loop(), f"poll[{ep.endpoint_id}]")
            self.spawn(runner.heartbeat_loop(), f"heartbeat[{ep.endpoint_id}]")
            self.spawn(runner.writes.run(), f"writes[{ep.endpoint_id}]")

    async def _stop(self) -> None:
        for runner in self._runners.values():
            runner.session.drop()

    def handles(self, device_id: str) -> bool:
        """Whether `device_id` is a lamp or controller behind one of our endpoints."""
        return device_id in self._routes

    def phases(self) -> dict[str, float]:
        """Each running endpoint's poll phase (real s into the interval)."""
        return {eid: r.phase_s for eid, r in self._runners.items()}

    def online(self, endpoint_id: str) -> bool | None:
        """Last known availability of an endpoint (None before the first attempt ends)."""
        runner = self._runners.get(endpoint_id)
        return None if runner is None else runner.presence.online

    def _point(self, device_id: str, point: str, value: float) -> tuple[_Endpoint, Point, int]:
        try:
            endpoint_id, index = self._routes[device_id]
        except KeyError:
            raise DeviceUnavailable(f"{device_id!r} is not handled by this driver") from None
        block = self.profile.controller if index is None else self.profile.lamp
        p = block.by_name.get(point)
        if p is None or not p.writable:
            raise PointValueError(f"{point!r} is not a writable point", point=point, value=value)
        address = (
            self.profile.controller_address(point)
            if index is None
            else self.profile.lamp_address(index, point)
        )
        if self.state is not ServiceState.OPENED:
            raise DeviceUnavailable("driver is not running", endpoint=endpoint_id)
        return self._runners[endpoint_id], p, address

    # The timeout is part of the Driver contract: the driver must know it to drop a
    # connection whose request timed out in flight, which a caller's wrapper cannot do.
    async def write(self, device_id: str, point: str, value: float, timeout: float) -> float:  # noqa: ASYNC109
        """Write `point`, read it back, return the read-back value.

        Range and writability are checked before anything is sent (PointValueError, a
        DeviceReplyError). While the endpoint is down or in backoff the write waits for its
        link within `timeout` (a controller that dropped under load is usually back within a
        second), then DeviceUnavailable; DeviceTimeout after `timeout` real seconds, queue
        wait included.
        """
        runner, p, address = self._point(device_id, point, value)
        regs = encode(p, value)
        session = runner.session
        if not runner.presence.online or session.client is None:
            # Connecting at start-up, in backoff, or reconnecting after a late answer dropped the
            # connection (the controller is still reported online): wait within the timeout.
            timeout = await runner.presence.wait_up(timeout)
            session.wanted.set()
            timeout = await wait_for_event(session.connected, timeout)
            if not runner.presence.online or session.client is None or timeout <= 0:
                self.stats.write_errors += 1
                raise DeviceUnavailable(
                    "endpoint down or in backoff", endpoint=session.name, unit=session.unit
                )
        if len(regs) == 1 and self._routes[device_id][1] is not None:  # a lamp register: batched
            back = [await runner.writes.write(address, regs[0], timeout)]
        else:
            back = await session.write_read(address, regs, PRIO_COMMAND, timeout)
        try:
            return float(decode(p, back))
        except PointValueError as exc:
            raise session.reply_error(f"read-back of {point}: {exc}") from exc
