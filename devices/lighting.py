"""Modbus TCP driver for lamp controllers: coalesced polling, heartbeat, write with read-back.

One connection per endpoint with one request in flight (commands ahead of heartbeats
ahead of polls); each endpoint runs in its own tasks, so a dead controller only costs
its own backoff. Register layout and value coding come from the shared profile and
codec, the same the simulator serves.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from types import TracebackType
from typing import Any, Self

import structlog
from pymodbus import ModbusException
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusIOException

from devices.profiles.lighting import LampControllerProfile, Point, default_profile
from devices.protocols.registers import BlockDecoder, PointValueError, decode, encode
from edge.clock import Clock
from edge.errors import DeviceError, DeviceReplyError, DeviceTimeout, DeviceUnavailable
from edge.events import Availability, Event, Telemetry, Value
from edge.tasks import close_task_group

log = structlog.get_logger(__name__)

# Request priorities on one connection: lower goes first.
PRIO_COMMAND = 0
PRIO_HEARTBEAT = 1
PRIO_POLL = 2

_WATCHDOG_FALLBACK_S = 60.0  # heartbeat period while the device's watchdog_s is unknown or 0


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
class DriverStats:
    """Counters for benchmarks and health checks (read requests, not lamps, unless named)."""

    reads: int = 0
    read_errors: int = 0
    writes: int = 0
    write_errors: int = 0
    lamp_reads: int = 0
    connects: int = 0
    connect_errors: int = 0


@dataclass(frozen=True, slots=True)
class ReadSpan:
    """One read request: `count` registers from `address`, and what sits where in them.

    `lamps` holds (device_id, offset of the lamp block in the reply);
    `controller` the offset of the controller block, if this read covers it.
    """

    address: int
    count: int
    lamps: tuple[tuple[str, int], ...]
    controller: int | None = None


def plan_reads(
    profile: LampControllerProfile,
    lamps: Sequence[tuple[int, str]],
    *,
    include_controller: bool = True,
    max_gap: int | None = None,
) -> tuple[ReadSpan, ...]:
    """Coalesce the controller block and the lamp blocks into as few reads as possible.

    Neighbouring blocks merge while the read stays within `max_read_registers` and the
    gap between them is at most `max_gap` registers (default: the lamp padding,
    stride - span, which a device serves; undefined gaps may be refused).
    """
    gap = profile.lamp_stride - profile.lamp.span if max_gap is None else max_gap
    items: list[tuple[int, int, str | None]] = [
        (profile.lamp_base(index), profile.lamp.span, device_id) for index, device_id in lamps
    ]
    if include_controller:
        items.append((profile.controller.base, profile.controller.span, None))
    items.sort(key=lambda it: it[0])
    spans: list[ReadSpan] = []
    start = end = -1
    members: list[tuple[int, int, str | None]] = []

    def flush() -> None:
        if members:
            spans.append(
                ReadSpan(
                    address=start,
                    count=end - start,
                    lamps=tuple((d, a - start) for a, _, d in members if d is not None),
                    controller=next((a - start for a, _, d in members if d is None), None),
                )
            )

    for addr, span, device_id in items:
        if members and addr - end <= gap and addr + span - start <= profile.max_read_registers:
            end = max(end, addr + span)
        else:
            flush()
            start, end, members = addr, addr + span, []
        members.append((addr, span, device_id))
    flush()
    return tuple(spans)


class _RepetitionFilter(logging.Filter):
    """Drops pymodbus's per-attempt connect and timeout lines: the driver logs transitions."""

    _PREFIXES = (
        "Failed to connect",
        "Not connected, trying to connect",
        "No response received",
        "ERROR: received pdu without a corresponding request",  # a reply after we gave up
    )

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self._PREFIXES)


def _quiet_pymodbus() -> None:
    root = logging.getLogger("pymodbus")
    if root.level < logging.WARNING:  # quieter, never louder than the operator set it
        root.setLevel(logging.WARNING)
    inner = logging.getLogger("pymodbus.logging")  # where pymodbus's Log class writes
    if not any(isinstance(f, _RepetitionFilter) for f in inner.filters):
        inner.addFilter(_RepetitionFilter())


class _PriorityLock:
    """A lock handed to the waiter with the lowest priority number, FIFO within a priority."""

    def __init__(self) -> None:
        self._locked = False
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = 0

    async def acquire(self, priority: int) -> None:
        if not self._locked and not self._waiters:
            self._locked = True
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._seq += 1
        heapq.heappush(self._waiters, (priority, self._seq, fut))
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # handed over just as we were cancelled: pass it on
            raise

    def release(self) -> None:
        while self._waiters:
            _, _, fut = heapq.heappop(self._waiters)
            if not fut.done():
                fut.set_result(None)  # ownership passes directly; stays locked
                return
        self._locked = False


class _State(Enum):
    UNOPENED = "unopened"
    OPENED = "opened"
    CLOSED = "closed"


class _Endpoint:
    """Connection, poll loop and heartbeat of one endpoint."""

    def __init__(self, driver: ModbusLightingDriver, ep: ModbusEndpoint) -> None:
        self.driver = driver
        self.ep = ep
        self.client: AsyncModbusTcpClient | None = None
        self.lock = _PriorityLock()
        self.online: bool | None = None
        self.up = asyncio.Event()
        self.attempt = 0
        self.watchdog_s: float | None = None
        self.heartbeat_seq = 0
        self.spans = plan_reads(driver.profile, ep.lamps)
        self.device_ids = (ep.endpoint_id, *(d for _, d in ep.lamps))
        self.last_raw: dict[str, tuple[int, ...]] = {}
        self.last_values: dict[str, Mapping[str, Value]] = {}
        self.bad: set[str] = set()
        self.log = log.bind(endpoint=ep.endpoint_id, host=ep.host, port=ep.port, unit=ep.unit)

    # -- connection --------------------------------------------------------------

    async def connect(self) -> None:
        """Open a fresh client; a new one per attempt so no stale reply can be matched."""
        d = self.driver
        client = AsyncModbusTcpClient(
            self.ep.host,
            port=self.ep.port,
            name=self.ep.endpoint_id,
            reconnect_delay=0,  # we reconnect ourselves, with jittered backoff
            timeout=d.timeout_s + 1.0,  # our asyncio.timeout fires first
            retries=0,
        )
        try:
            async with asyncio.timeout(d.timeout_s):
                ok = await client.connect()
        except TimeoutError as exc:
            client.close()
            d.stats.connect_errors += 1
            raise DeviceTimeout("connect timed out", endpoint=self.ep.endpoint_id) from exc
        if not ok:
            client.close()
            d.stats.connect_errors += 1
            raise DeviceUnavailable("connect failed", endpoint=self.ep.endpoint_id)
        d.stats.connects += 1
        self.client = client

    def drop(self) -> None:
        """Close the connection; after a timeout a late reply must not meet a new request."""
        if self.client is not None:
            self.client.close()
            self.client = None

    def set_online(self, online: bool, reason: str = "") -> None:
        """Publish and log availability on transitions only."""
        if online:
            self.up.set()
        else:
            self.up.clear()
        if self.online is online:
            return
        self.online = online
        d = self.driver
        d.publish(
            Availability(
                endpoint=self.ep.endpoint_id,
                device_ids=self.device_ids,
                online=online,
                ts=d.clock.now(),
                reason=reason,
            )
        )
        if online:
            self.log.info("modbus_endpoint_up")
        else:
            self.log.warning("modbus_endpoint_down", reason=reason)

    # -- requests ----------------------------------------------------------------

    async def call(
        self,
        priority: int,
        timeout_s: float,
        requests: Callable[[AsyncModbusTcpClient], Awaitable[Any]],
    ) -> Any:
        """Run `requests` alone on the connection, within `timeout_s` including the queue wait.

        Library errors are translated here; a timeout or I/O error drops the connection.
        """
        eid, unit = self.ep.endpoint_id, self.ep.unit
        in_flight = False
        try:
            async with asyncio.timeout(timeout_s):
                await self.lock.acquire(priority)
                try:
                    client = self.client
                    if client is None:
                        raise DeviceUnavailable("not connected", endpoint=eid, unit=unit)
                    in_flight = True
                    return await requests(client)
                finally:
                    self.lock.release()
        except TimeoutError as exc:
            if in_flight:
                self.drop()
            raise DeviceTimeout(f"no answer within {timeout_s} s", endpoint=eid, unit=unit) from exc
        except ConnectionException as exc:
            self.drop()
            raise DeviceUnavailable(str(exc), endpoint=eid, unit=unit) from exc
        except ModbusIOException as exc:
            self.drop()
            raise DeviceTimeout(str(exc), endpoint=eid, unit=unit) from exc
        except ModbusException as exc:
            raise DeviceReplyError(str(exc), endpoint=eid, unit=unit) from exc

    def checked(self, result: Any, what: str) -> Any:
        """The reply, or DeviceReplyError if it is a Modbus exception response."""
        if result.isError():
            code = getattr(result, "exception_code", 0)
            raise DeviceReplyError(
                f"{what}: exception code {code}", endpoint=self.ep.endpoint_id, unit=self.ep.unit
            )
        return result

    async def read(self, address: int, count: int, priority: int, timeout_s: float) -> list[int]:
        unit = self.ep.unit

        async def go(client: AsyncModbusTcpClient) -> list[int]:
            result = await client.read_holding_registers(address, count=count, device_id=unit)
            regs: list[int] = self.checked(result, f"read {address}+{count}").registers
            if len(regs) != count:
                raise DeviceReplyError(
                    f"read {address}+{count}: {len(regs)} registers",
                    endpoint=self.ep.endpoint_id,
                    unit=unit,
                )
            return regs

        stats = self.driver.stats
        stats.reads += 1
        try:
            regs: list[int] = await self.call(priority, timeout_s, go)
        except DeviceError:
            stats.read_errors += 1
            raise
        return regs

    async def write_read(self, address: int, regs: list[int], priority: int, timeout_s: float) -> list[int]:
        """Write registers and read them back, with nothing else in between."""
        unit, n = self.ep.unit, len(regs)

        async def go(client: AsyncModbusTcpClient) -> list[int]:
            if n == 1:
                result = await client.write_register(address, regs[0], device_id=unit)
            else:
                result = await client.write_registers(address, regs, device_id=unit)
            self.checked(result, f"write {address}")
            back = await client.read_holding_registers(address, count=n, device_id=unit)
            out: list[int] = self.checked(back, f"read back {address}").registers
            return out

        stats = self.driver.stats
        stats.writes += 1
        try:
            back: list[int] = await self.call(priority, timeout_s, go)
        except DeviceError:
            stats.write_errors += 1
            raise
        return back

    # -- loops -------------------------------------------------------------------

    async def poll_loop(self) -> None:
        """Poll forever; on failure mark down, back off with jitter, reconnect."""
        d = self.driver
        while True:
            try:
                if self.client is None:
                    await self.connect()
                await self.poll_once()
            except DeviceError as exc:
                if not isinstance(exc, DeviceReplyError):
                    self.drop()
                self.set_online(False, reason=f"{type(exc).__name__}: {exc}")
                cap = min(d.backoff_max_s, d.backoff_base_s * 2**self.attempt)
                self.attempt = min(self.attempt + 1, 30)
                await asyncio.sleep(random.uniform(0, cap))
                continue
            self.attempt = 0
            self.set_online(True)
            await asyncio.sleep(d.poll_interval_s)

    async def poll_once(self) -> None:
        """Read every span and publish telemetry; a bad lamp value skips only that lamp."""
        d = self.driver
        decoder = d.lamp_decoder
        span = decoder.span
        publish = d.publish
        for rs in self.spans:
            regs = await self.read(rs.address, rs.count, PRIO_POLL, d.timeout_s)
            now = d.clock.now()
            if rs.controller is not None:
                self.publish_controller(regs, rs.controller, now)
            last_raw, last_values = self.last_raw, self.last_values
            for device_id, off in rs.lamps:
                raw = tuple(regs[off : off + span])
                if last_raw.get(device_id) == raw:
                    values = last_values[device_id]
                else:
                    try:
                        values = decoder.decode(raw)
                    except PointValueError as exc:
                        self.mark_bad(device_id, exc)
                        continue
                    last_raw[device_id] = raw
                    last_values[device_id] = values
                    if device_id in self.bad:
                        self.bad.discard(device_id)
                        self.log.info("modbus_value_recovered", device_id=device_id)
                publish(Telemetry(device_id, now, values))
            d.stats.lamp_reads += len(rs.lamps)

    def publish_controller(self, regs: list[int], off: int, now: float) -> None:
        eid = self.ep.endpoint_id
        try:
            values = self.driver.controller_decoder.decode(regs, off)
        except PointValueError as exc:
            self.mark_bad(eid, exc)
            return
        values["failsafe_active"] = bool(values["failsafe_active"])
        wd = values["watchdog_s"]
        self.watchdog_s = float(wd) if isinstance(wd, int | float) else None
        self.driver.publish(Telemetry(eid, now, values))

    def mark_bad(self, device_id: str, exc: PointValueError) -> None:
        self.last_raw.pop(device_id, None)
        if device_id not in self.bad:
            self.bad.add(device_id)
            self.log.warning("modbus_bad_value", device_id=device_id, point=exc.point, error=str(exc))

    async def heartbeat_loop(self) -> None:
        """Write the heartbeat register so the controller's watchdog keeps its fail-safe off."""
        d = self.driver
        address = d.profile.controller_address("heartbeat")
        while True:
            await self.up.wait()
            interval = d.heartbeat_every_s
            if interval is None:
                wd = self.watchdog_s
                interval = wd / 3 if wd else _WATCHDOG_FALLBACK_S
            self.heartbeat_seq = (self.heartbeat_seq + 1) & 0xFFFF
            try:
                await self.write_read(address, [self.heartbeat_seq], PRIO_HEARTBEAT, d.timeout_s)
            except DeviceError as exc:
                # the poll loop owns availability; a missed beat is retried next period
                self.log.debug("modbus_heartbeat_failed", error=str(exc))
            await d.clock.sleep(interval)


class ModbusLightingDriver:
    """Driver for Modbus TCP lamp controllers; an async context manager that owns its tasks.

    Publishes `Telemetry` per lamp (device_id from the endpoint's lamps) and per controller
    (device_id = endpoint_id) on every poll, and `Availability` per endpoint on transitions.
    `poll_interval_s` and timeouts are real seconds; `heartbeat_every_s` is clock seconds
    (default: a third of the controller's watchdog_s, read from the device).
    """

    def __init__(
        self,
        endpoints: Sequence[ModbusEndpoint],
        profile: LampControllerProfile | None,
        publish: Callable[[Event], None],
        clock: Clock,
        *,
        poll_interval_s: float = 1.0,
        timeout_s: float = 1.0,
        backoff_max_s: float = 30.0,
        heartbeat_every_s: float | None = None,
        backoff_base_s: float = 0.5,
    ) -> None:
        self.profile = profile or default_profile()
        self.publish = publish
        self.clock = clock
        self.poll_interval_s = poll_interval_s
        self.timeout_s = timeout_s
        self.backoff_max_s = backoff_max_s
        self.backoff_base_s = backoff_base_s
        self.heartbeat_every_s = heartbeat_every_s
        self.stats = DriverStats()
        self.lamp_decoder = BlockDecoder(self.profile.lamp)
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
        self._state = _State.UNOPENED
        self._tg: asyncio.TaskGroup | None = None
        self._tasks: list[asyncio.Task[None]] = []
        _quiet_pymodbus()

    async def __aenter__(self) -> Self:
        if self._state is not _State.UNOPENED:
            raise RuntimeError(f"driver is {self._state.value}; it cannot be opened again")
        self._state = _State.OPENED
        tg = asyncio.TaskGroup()
        await tg.__aenter__()
        self._tg = tg
        for ep in self._endpoints:
            runner = _Endpoint(self, ep)
            self._runners[ep.endpoint_id] = runner
            name = f"modbus[{ep.endpoint_id}]"
            self._tasks.append(tg.create_task(runner.poll_loop(), name=f"{name}.poll"))
            self._tasks.append(tg.create_task(runner.heartbeat_loop(), name=f"{name}.heartbeat"))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._state = _State.CLOSED
        try:
            await close_task_group(self._tg, self._tasks, exc_type, exc, tb)
        finally:
            for runner in self._runners.values():
                runner.drop()

    def handles(self, device_id: str) -> bool:
        """Whether `device_id` is a lamp or controller behind one of our endpoints."""
        return device_id in self._routes

    def online(self, endpoint_id: str) -> bool | None:
        """Last known availability of an endpoint (None before the first attempt ends)."""
        runner = self._runners.get(endpoint_id)
        return None if runner is None else runner.online

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
        if self._state is not _State.OPENED:
            raise DeviceUnavailable("driver is not running", endpoint=endpoint_id)
        return self._runners[endpoint_id], p, address

    # The timeout is part of the Driver contract: the driver must know it to drop a
    # connection whose request timed out in flight, which a caller's wrapper cannot do.
    async def write(self, device_id: str, point: str, value: float, timeout: float) -> float:  # noqa: ASYNC109
        """Write `point`, read it back, return the read-back value.

        Range and writability are checked before anything is sent (PointValueError, a
        DeviceReplyError). DeviceUnavailable at once while the endpoint is down or in
        backoff; DeviceTimeout after `timeout` real seconds, queue wait included.
        """
        runner, p, address = self._point(device_id, point, value)
        regs = encode(p, value)
        if not runner.online or runner.client is None:
            self.stats.write_errors += 1
            raise DeviceUnavailable(
                "endpoint down or in backoff", endpoint=runner.ep.endpoint_id, unit=runner.ep.unit
            )
        back = await runner.write_read(address, regs, PRIO_COMMAND, timeout)
        try:
            return float(decode(p, back))
        except PointValueError as exc:
            raise DeviceReplyError(
                f"read-back of {point}: {exc}", endpoint=runner.ep.endpoint_id, unit=runner.ep.unit
            ) from exc
