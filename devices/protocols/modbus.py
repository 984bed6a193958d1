"""One Modbus TCP client session, shared by the lamp controllers and the message signs.

A session is one connection to one unit with one request in flight: commands go ahead of
heartbeats ahead of polls (a priority lock), every request runs under a timeout that
includes its wait in the queue, and pymodbus errors (both raised `ModbusException`s and
`isError()` replies) become `edge.errors` at this boundary. A fresh pymodbus client per
connect, so a late reply to a request we gave up on can never meet a new one. `run` is
the reconnect loop: poll, and after a failure drop, mark down, wait an `edge.backoff`
delay and connect again, so a dead device only costs its own backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn

from pymodbus import ModbusException
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusIOException

from devices.protocols.link import LinkTiming
from edge.errors import DeviceError, DeviceReplyError, DeviceTimeout, DeviceUnavailable
from edge.tasks import cancel_swallowed

__all__ = [
    "DOWN_AFTER",
    "PRIO_COMMAND",
    "PRIO_HEARTBEAT",
    "PRIO_POLL",
    "LinkBusy",
    "ModbusCounters",
    "ModbusSession",
    "PriorityLock",
    "quiet_pymodbus",
]

DOWN_AFTER = 2
"""Failed polls in a row before a device that was up is reported down: one late answer on a busy
node is not a lost device (its writes would be refused until the next good poll)."""
# Request priorities on one connection: lower goes first.
PRIO_COMMAND = 0
PRIO_HEARTBEAT = 1
PRIO_POLL = 2

Requests = Callable[[AsyncModbusTcpClient], Awaitable[Any]]


@dataclass(slots=True)
class ModbusCounters:
    """Request counters (requests, not points); a driver shares one among its sessions."""

    reads: int = 0
    read_errors: int = 0
    writes: int = 0
    write_errors: int = 0
    connects: int = 0
    connect_errors: int = 0
    polls_skipped: int = 0  # polls that found the link busy with commands for a whole interval


class LinkBusy(DeviceTimeout):
    """The request never went out: the link was busy with higher-priority requests (commands)
    for as long as the caller would wait. The device answers; it is not a sign it is down."""


class _RepetitionFilter(logging.Filter):
    """Drops pymodbus's per-attempt connect and timeout lines: the drivers log transitions."""

    _PREFIXES = (
        "Failed to connect",
        "Not connected, trying to connect",
        "No response received",
        "ERROR: received pdu without a corresponding request",  # a reply after we gave up
    )

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self._PREFIXES)


def quiet_pymodbus() -> None:
    """pymodbus at WARNING or quieter (never louder than the operator set it), without repeats."""
    root = logging.getLogger("pymodbus")
    if root.level < logging.WARNING:
        root.setLevel(logging.WARNING)
    inner = logging.getLogger("pymodbus.logging")  # where pymodbus's Log class writes
    if not any(isinstance(f, _RepetitionFilter) for f in inner.filters):
        inner.addFilter(_RepetitionFilter())


class PriorityLock:
    """A lock handed to the waiter with the lowest priority number, FIFO within a priority."""

    def __init__(self) -> None:
        self._locked = False
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = 0

    async def acquire(self, priority: int) -> None:
        """Wait for the lock; a cancelled waiter that was just handed the lock passes it on."""
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
                self.release()
            raise

    def locked(self) -> bool:
        """Whether a request holds the link now."""
        return self._locked

    def release(self) -> None:
        """Hand the lock to the next waiter (it stays locked), or unlock."""
        while self._waiters:
            _, _, fut = heapq.heappop(self._waiters)
            if not fut.done():
                fut.set_result(None)
                return
        self._locked = False


class ModbusSession:
    """One Modbus TCP connection to one unit: requests, error translation and reconnects.

    `name` identifies the device in errors (their `endpoint`) and in the pymodbus client.
    The timing's timeout bounds a connect; each request passes its own timeout.
    """

    def __init__(
        self,
        name: str,
        host: str,
        port: int,
        unit: int,
        timing: LinkTiming,
        counters: ModbusCounters | None = None,
    ) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.unit = unit
        self.timeout_s = timing.timeout_s
        self.backoff = timing.backoff()
        self.counters = counters or ModbusCounters()
        self.client: AsyncModbusTcpClient | None = None
        self.connected = asyncio.Event()  # set while `client` is connected: writes wait for it
        self.wanted = asyncio.Event()  # a writer found the connection dropped: reconnect now
        self.lock = PriorityLock()

    # -- connection --------------------------------------------------------------

    async def connect(self) -> None:
        """Open a fresh client within `timeout_s`."""
        client = AsyncModbusTcpClient(
            self.host,
            port=self.port,
            name=self.name,
            reconnect_delay=0,  # we reconnect ourselves, with jittered backoff
            timeout=self.timeout_s + 1.0,  # our asyncio.timeout fires first
            retries=0,
        )
        try:
            async with asyncio.timeout(self.timeout_s):
                ok = await client.connect()
        except TimeoutError as exc:
            client.close()
            if cancel_swallowed():
                raise asyncio.CancelledError from exc
            self.counters.connect_errors += 1
            raise DeviceTimeout("connect timed out", endpoint=self.name) from exc
        if cancel_swallowed():
            client.close()
            raise asyncio.CancelledError
        if not ok:
            client.close()
            self.counters.connect_errors += 1
            raise DeviceUnavailable("connect failed", endpoint=self.name)
        self.counters.connects += 1
        self.client = client
        self.connected.set()

    def drop(self, client: AsyncModbusTcpClient | None = None) -> None:
        """Close the connection; after a timeout a late reply must not meet a new request.

        With `client`, only if it is still the current one: a request that failed on a
        connection already replaced must not close the fresh one (a writer waiting for it
        would find the link gone again)."""
        if client is not None and client is not self.client:
            return
        self.connected.clear()
        if self.client is not None:
            self.client.close()
            self.client = None

    async def run(
        self,
        poll: Callable[[], Awaitable[None]],
        interval_s: float,
        on_state: Callable[[bool, str], None],
        *,
        phase_s: float = 0.0,
        first_s: float = 0.0,
        down_after: int = DOWN_AFTER,
    ) -> NoReturn:
        """Connect and `poll` every `interval_s` real seconds (0: back to back), forever.

        The first attempt waits `first_s`; after it, polls keep to a grid `phase_s` into each
        interval (whatever a poll took), so links given different phases stay spread.
        After a DeviceError: drop the connection (unless the device only refused a
        request), report `on_state(False, reason)`, wait a backoff delay, reconnect.
        After a good poll: reset the backoff and report `on_state(True, "")`. A link that
        was up is reported down only after `down_after` failed attempts in a row (one late
        answer on a busy node is not a lost controller); the connection is dropped at once.
        """
        loop = asyncio.get_running_loop()
        failures, was_up = 0, False
        if first_s > 0:
            await asyncio.sleep(first_s)
        grid = loop.time() - first_s + phase_s  # poll times: grid + k * interval_s
        while True:
            try:
                if self.client is None:
                    await self.connect()
                await poll()
            except LinkBusy:
                pass  # commands held the link for a whole interval: the device answers them
            except DeviceError as exc:
                if not isinstance(exc, DeviceReplyError):
                    self.drop()
                failures += 1
                if failures >= down_after or not was_up:
                    on_state(False, f"{type(exc).__name__}: {exc}")
                await self.backoff.wait()
                continue
            else:
                failures, was_up = 0, True
                self.backoff.reset()
                on_state(True, "")
            if interval_s <= 0:
                await asyncio.sleep(0)  # back to back (a bench reading flat out): others still run
                continue
            await self._idle(loop.time() + interval_s - (loop.time() - grid) % interval_s)

    async def _idle(self, until: float) -> None:
        """Sleep until loop time `until`. A request that timed out in flight dropped the
        connection while the device stays reported online: if a writer wants the link meanwhile,
        reconnect at once (then after backoff delays) instead of failing its writes until the next
        poll."""
        loop = asyncio.get_running_loop()
        while (left := until - loop.time()) > 0:
            if self.client is None and self.wanted.is_set():
                try:
                    await self.connect()
                except DeviceError:  # tried again after a backoff delay: a gone device is not hammered
                    await asyncio.sleep(min(self.backoff.next_delay(), max(0.0, until - loop.time())))
                continue
            self.wanted.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self.wanted.wait()

    # -- requests ----------------------------------------------------------------

    async def call(
        self,
        priority: int,
        timeout_s: float,
        requests: Requests,
        *,
        wait_s: float | None = None,
        await_link: bool = False,
    ) -> Any:
        """Run `requests` alone on the connection, within `timeout_s` including the queue wait.

        With `wait_s`, the queue wait is bounded by `wait_s` instead (LinkBusy when it passes)
        and `timeout_s` bounds the request alone: a poll that waits behind a city's first plan
        is late, not a dead device. Library errors are translated here; a timeout in flight or
        an I/O error drops the connection. With `await_link` (a write to a device still
        reported online), a dropped connection is reopened at once and waited for within the
        timeout (DeviceUnavailable if it does not come) instead of failing the write.
        """
        in_flight, got_lock, client = False, False, None
        loop = asyncio.get_running_loop()
        t0 = t_lock = t_link = loop.time()
        try:
            async with asyncio.timeout(timeout_s if wait_s is None else wait_s) as scope:
                await self.lock.acquire(priority)
                got_lock, t_lock, t_link = True, loop.time(), loop.time()
                try:
                    if wait_s is not None:
                        scope.reschedule(loop.time() + timeout_s)
                    if self.client is None and await_link:
                        self.wanted.set()  # the link loop reconnects now, not at the next poll
                        await self.connected.wait()
                        t_link = loop.time()
                    client = self.client
                    if client is None:
                        raise DeviceUnavailable("not connected", endpoint=self.name, unit=self.unit)
                    in_flight = True
                    return await requests(client)
                finally:
                    self.lock.release()
        except TimeoutError as exc:
            if in_flight:
                self.drop(client)
            elif wait_s is not None:
                raise LinkBusy(f"link busy for {wait_s} s", endpoint=self.name, unit=self.unit) from exc
            # where the time went: an operator (and a bench) tells a busy link from a slow device
            end = loop.time()
            if in_flight:
                spent = (
                    f"{t_lock - t0:.2f} s queued, {t_link - t_lock:.2f} s reconnecting, "
                    f"{end - t_link:.2f} s in flight"
                )
            elif got_lock:
                spent = f"{t_lock - t0:.2f} s queued, {end - t_lock:.2f} s reconnecting"
            else:
                spent = f"{end - t0:.2f} s queued behind other requests"
            if client is None:
                raise DeviceUnavailable(
                    f"not connected within {timeout_s} s ({spent})", endpoint=self.name, unit=self.unit
                ) from exc
            raise DeviceTimeout(
                f"no answer within {timeout_s} s ({spent})", endpoint=self.name, unit=self.unit
            ) from exc
        except ConnectionException as exc:
            self.drop(client)
            raise DeviceUnavailable(str(exc), endpoint=self.name, unit=self.unit) from exc
        except ModbusIOException as exc:
            self.drop(client)
            raise DeviceTimeout(str(exc), endpoint=self.name, unit=self.unit) from exc
        except ModbusException as exc:
            raise DeviceReplyError(str(exc), endpoint=self.name, unit=self.unit) from exc

    def reply_error(self, message: str) -> DeviceReplyError:
        """A DeviceReplyError naming this session's device."""
        return DeviceReplyError(message, endpoint=self.name, unit=self.unit)

    def checked(self, result: Any, what: str) -> Any:
        """The reply, or DeviceReplyError if it is a Modbus exception response."""
        if result.isError():
            raise self.reply_error(f"{what}: exception code {getattr(result, 'exception_code', 0)}")
        return result

    async def read_regs(self, client: AsyncModbusTcpClient, address: int, count: int) -> list[int]:
        """Inside `call`: read `count` holding registers, exactly that many."""
        result = await client.read_holding_registers(address, count=count, device_id=self.unit)
        regs: list[int] = self.checked(result, f"read {address}+{count}").registers
        if len(regs) != count:
            raise self.reply_error(f"read {address}+{count}: {len(regs)} registers")
        return regs

    async def write_regs(self, client: AsyncModbusTcpClient, address: int, regs: list[int]) -> None:
        """Inside `call`: write one register (function 6) or several (function 16)."""
        if len(regs) == 1:
            result = await client.write_register(address, regs[0], device_id=self.unit)
        else:
            result = await client.write_registers(address, regs, device_id=self.unit)
        self.checked(result, f"write {address}+{len(regs)}")

    async def write_read_regs(self, client: AsyncModbusTcpClient, address: int, regs: list[int]) -> list[int]:
        """Inside `call`: write `regs` at `address` and read the same registers back, in one
        request (function 23; the device writes before it reads)."""
        what = f"write+read {address}+{len(regs)}"
        result = await client.readwrite_registers(
            read_address=address,
            read_count=len(regs),
            write_address=address,
            values=regs,
            device_id=self.unit,
        )
        got: list[int] = self.checked(result, what).registers
        if len(got) != len(regs):
            raise self.reply_error(f"{what}: {len(got)} registers")
        return got

    async def read(
        self, address: int, count: int, priority: int, timeout_s: float, *, wait_s: float | None = None
    ) -> list[int]:
        """One read request on its own (counted; a read that never went out, LinkBusy, is not)."""
        self.counters.reads += 1
        try:
            regs: list[int] = await self.call(
                priority, timeout_s, lambda client: self.read_regs(client, address, count), wait_s=wait_s
            )
        except LinkBusy:
            self.counters.reads -= 1
            self.counters.polls_skipped += 1
            raise
        except DeviceError:
            self.counters.read_errors += 1
            raise
        return regs

    async def write_read(self, address: int, regs: list[int], priority: int, timeout_s: float) -> list[int]:
        """Write registers and read them back, with nothing else in between (counted). Callers
        write only to a device reported online, so a dropped connection is reopened first."""

        async def go(client: AsyncModbusTcpClient) -> list[int]:
            await self.write_regs(client, address, regs)
            return await self.read_regs(client, address, len(regs))

        self.counters.writes += 1
        try:
            back: list[int] = await self.call(priority, timeout_s, go, await_link=True)
        except DeviceError:
            self.counters.write_errors += 1
            raise
        return back
