"""Display driver: LED guidance boards over MQTT and variable message signs over Modbus TCP.

One `DisplayDriver` behind the `edge.driver.Driver` seam for both kinds. Points:

- `content`: a `DisplayContent` as a dict or its JSON text, e.g.
  {"message_id": 42, "lines": ["P1 Stadthaus", "frei 123"], "arrow": "left",
  "brightness": 80, "expires_at": 1795000600}. Checked against the display's profile
  before anything is sent (PointValueError, a DeviceReplyError, when it cannot be shown
  or has expired). Returns the message id the display echoes (read-back). A new content
  needs a new message id: the id is what confirms it.
- `brightness`: percent, a number; returns the read-back brightness.

Boards are confirmed by their status echoing the message id (and the rendered text);
signs by writing a slot that is not shown, activating it and reading shown_message_id
and shown_crc back. Telemetry per display: online, brightness, pixel_faults, shown
(the rendered text, "" when blank), message_id (0 when blank), arrow; signs add
active_slot and their status bits. Availability per display on transitions only.
`health()` counts missed polls so a controller can raise an alarm after
max(alarm_after_s, alarm_after_missed polls).

A board status goes through `edge.decode` (size, depth, JSON); one that is not a status of
the profile, or is stamped more than `max_clock_skew_s` ahead of the clock, is counted in
`refusals` (per reason, logged per board on transitions) and never ends the receive loop.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import structlog
from pymodbus import ModbusException
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusIOException

from devices.lighting import _quiet_pymodbus
from devices.profiles.displays import (
    BoardStatus,
    DisplayContent,
    LedBoardProfile,
    VmsProfile,
    brightness_payload,
    brightness_range,
    check_content,
    content_payload,
    crc16,
    decode_text,
    default_led_board_profile,
    default_vms_profile,
    encode_text,
    parse_content,
    parse_status_payload,
)
from devices.protocols.mqtt import MqttDeviceClient
from devices.protocols.registers import BlockDecoder, PointValueError, decode, encode
from edge.clock import Clock
from edge.decode import Refusal, Refusals, check_ts
from edge.errors import DeviceError, DeviceReplyError, DeviceTimeout, DeviceUnavailable
from edge.events import Availability, Event, Telemetry, Value
from edge.mqtt import TlsFiles
from edge.tasks import close_task_group

if TYPE_CHECKING:
    from edge.driver import Driver

log = structlog.get_logger(__name__)

POINTS = ("content", "brightness")
# brightness: a number; content: a dict, its JSON text, or a DisplayContent
WriteValue = float | str | bytes | Mapping[str, object] | DisplayContent


@dataclass(frozen=True, slots=True)
class SignEndpoint:
    """One variable message sign: a Modbus TCP server and its unit id."""

    display_id: str
    host: str
    port: int
    unit: int = 1


@dataclass(frozen=True, slots=True)
class DisplayHealth:
    """How long a display has been silent, for the controller's comm-loss alarm.

    `missed_polls` counts poll periods (boards: status periods) since the last good
    answer, or since the driver started if there was none; `silent_s` is clock seconds.
    `alarm_due` once both max(alarm_after_s, alarm_after_missed polls) have passed.
    """

    display_id: str
    online: bool | None
    missed_polls: int
    silent_s: float
    last_seen: float | None
    alarm_due: bool


@dataclass(slots=True)
class DisplayDriverStats:
    """Counters for tests, benchmarks and health checks."""

    polls: int = 0
    poll_errors: int = 0
    statuses: int = 0
    bad_statuses: int = 0
    writes: int = 0
    write_errors: int = 0
    refused: int = 0  # writes refused before anything was sent


class _State(Enum):
    UNOPENED = "unopened"
    OPENED = "opened"
    CLOSED = "closed"


class _Display:
    """What the driver knows of one display, whatever its kind."""

    def __init__(self, driver: DisplayDriver, display_id: str, period_s: float) -> None:
        self.driver = driver
        self.display_id = display_id
        self.period_s = period_s
        self.online: bool | None = None
        self.last_seen: float | None = None  # clock time of the last good answer
        self.last_good = time.monotonic()  # real time of the last good answer (or the start)
        self.since = driver.clock.now()
        self.lock = asyncio.Lock()  # one write at a time per display
        self.log = log.bind(display_id=display_id)

    def seen(self) -> None:
        self.last_good = time.monotonic()
        self.last_seen = self.driver.clock.now()

    def missed_polls(self) -> int:
        return int((time.monotonic() - self.last_good) / self.period_s)

    def set_online(self, online: bool, reason: str = "") -> None:
        """Publish and log availability on transitions only."""
        if self.online is online:
            return
        self.online = online
        d = self.driver
        d.publish(Availability(self.display_id, (self.display_id,), online, d.clock.now(), reason))
        if online:
            self.log.info("display_up")
        else:
            self.log.warning("display_down", reason=reason)


class _Board(_Display):
    """An LED board: its status topic and the writes waiting for its echo."""

    def __init__(self, driver: DisplayDriver, display_id: str) -> None:
        super().__init__(driver, display_id, driver.status_interval_s)
        p = driver.board_profile
        self.content_topic = p.topic(p.content_topic, display_id)
        self.brightness_topic = p.topic(p.brightness_topic, display_id)
        self.status_topic = p.topic(p.status_topic, display_id)
        self.waiters: list[tuple[Callable[[BoardStatus], bool], asyncio.Future[BoardStatus]]] = []
        self.status: BoardStatus | None = None

    def on_status(self, status: BoardStatus, *, retained: bool) -> None:
        d = self.driver
        if not status.online:
            self.set_online(False, "board reported offline")
            return
        if retained:
            return  # a board's last words from before we subscribed: not a sign of life now
        self.status = status
        self.seen()
        self.set_online(True)
        values: dict[str, Value] = {
            "online": True,
            "shown": status.text,
            "message_id": status.message_id,
            "arrow": status.arrow,
        }
        if status.brightness is not None:
            values["brightness"] = status.brightness
        if status.pixel_faults is not None:
            values["pixel_faults"] = status.pixel_faults
        d.publish(Telemetry(self.display_id, d.clock.now(), values))
        for pred, fut in self.waiters:
            if not fut.done() and pred(status):
                fut.set_result(status)

    async def echo(self, topic: str, payload: bytes, pred: Callable[[BoardStatus], bool]) -> BoardStatus:
        """Publish and wait for a status that satisfies `pred` (the caller bounds the time)."""
        d = self.driver
        link = d._board_link
        if link is None or not link.is_connected or not self.online:
            raise DeviceUnavailable("board offline or broker unreachable", endpoint=self.display_id)
        fut: asyncio.Future[BoardStatus] = asyncio.get_running_loop().create_future()
        entry = (pred, fut)
        self.waiters.append(entry)
        try:
            p = d.board_profile
            await link.publish(topic, payload, qos=p.qos, retain=p.retain, endpoint=self.display_id)
            return await fut
        finally:
            self.waiters.remove(entry)


class _Sign(_Display):
    """A variable message sign: its Modbus connection and poll loop."""

    def __init__(self, driver: DisplayDriver, ep: SignEndpoint) -> None:
        super().__init__(driver, ep.display_id, driver.poll_interval_s)
        self.ep = ep
        self.client: AsyncModbusTcpClient | None = None
        self.attempt = 0
        self.shown_key: tuple[int, int, int] | None = None  # (slot, message id, crc) of `shown`
        self.shown: tuple[str, str] = ("", "none")  # text, arrow
        self.log = self.log.bind(host=ep.host, port=ep.port, unit=ep.unit)

    async def connect(self) -> None:
        """Open a fresh client; a new one per attempt so no stale reply can be matched."""
        d = self.driver
        client = AsyncModbusTcpClient(
            self.ep.host,
            port=self.ep.port,
            name=self.display_id,
            reconnect_delay=0,  # we reconnect ourselves, with jittered backoff
            timeout=d.timeout_s + 1.0,  # our asyncio.timeout fires first
            retries=0,
        )
        try:
            async with asyncio.timeout(d.timeout_s):
                ok = await client.connect()
        except TimeoutError as exc:
            client.close()
            raise DeviceTimeout("connect timed out", endpoint=self.display_id) from exc
        if not ok:
            client.close()
            raise DeviceUnavailable("connect failed", endpoint=self.display_id)
        self.client = client

    def drop(self) -> None:
        """Close the connection; after a timeout a late reply must not meet a new request."""
        if self.client is not None:
            self.client.close()
            self.client = None

    async def call(self, timeout_s: float, requests: Callable[[AsyncModbusTcpClient], Awaitable[Any]]) -> Any:
        """Run `requests` alone on the connection within `timeout_s` (queue wait included).

        Library errors are translated here; a timeout or I/O error drops the connection.
        """
        eid, unit = self.display_id, self.ep.unit
        in_flight = False
        try:
            async with asyncio.timeout(timeout_s), self.lock:
                client = self.client
                if client is None:
                    raise DeviceUnavailable("not connected", endpoint=eid, unit=unit)
                in_flight = True
                return await requests(client)
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

    async def read(self, client: AsyncModbusTcpClient, address: int, count: int) -> list[int]:
        result = await client.read_holding_registers(address, count=count, device_id=self.ep.unit)
        regs: list[int] = self.checked(result, f"read {address}+{count}").registers
        if len(regs) != count:
            raise self.reply_error(f"read {address}+{count}: {len(regs)} registers")
        return regs

    async def write_regs(self, client: AsyncModbusTcpClient, address: int, regs: list[int]) -> None:
        unit = self.ep.unit
        if len(regs) == 1:
            result = await client.write_register(address, regs[0], device_id=unit)
        else:
            result = await client.write_registers(address, regs, device_id=unit)
        self.checked(result, f"write {address}+{len(regs)}")

    def checked(self, result: Any, what: str) -> Any:
        """The reply, or DeviceReplyError if it is a Modbus exception response."""
        if result.isError():
            raise self.reply_error(f"{what}: exception code {getattr(result, 'exception_code', 0)}")
        return result

    def reply_error(self, message: str) -> DeviceReplyError:
        return DeviceReplyError(message, endpoint=self.display_id, unit=self.ep.unit)

    async def poll_loop(self) -> None:
        """Poll forever; on failure mark down, back off with jitter, reconnect."""
        d = self.driver
        while True:
            try:
                if self.client is None:
                    await self.connect()
                await self.poll_once()
            except DeviceError as exc:
                d.stats.poll_errors += 1
                if not isinstance(exc, DeviceReplyError):
                    self.drop()
                self.set_online(False, reason=f"{type(exc).__name__}: {exc}")
                cap = min(d.backoff_max_s, d.backoff_base_s * 2**self.attempt)
                self.attempt = min(self.attempt + 1, 30)
                await asyncio.sleep(random.uniform(0, cap))
                continue
            self.attempt = 0
            self.seen()
            self.set_online(True)
            await asyncio.sleep(d.poll_interval_s)

    async def poll_once(self) -> None:
        """Read the control block (and the shown slot when it changed); publish telemetry."""
        d = self.driver
        v = d.vms_profile
        d.stats.polls += 1

        async def go(client: AsyncModbusTcpClient) -> tuple[dict[str, Value], str, str]:
            regs = await self.read(client, v.control.base, v.control.span)
            try:
                values = d.control_decoder.decode(regs)
            except PointValueError as exc:
                raise self.reply_error(f"control block: {exc}") from exc
            slot, shown_id, crc = (
                int(values["active_slot"]),
                int(values["shown_message_id"]),
                int(values["shown_crc"]),
            )
            if not shown_id or not slot:
                return values, "", "none"
            key = (slot, shown_id, crc)
            if key == self.shown_key:
                return values, *self.shown
            text, arrow = await self.read_slot(client, slot)
            if crc16(text) != crc:
                raise self.reply_error(f"slot {slot} text does not match shown_crc {crc}")
            self.shown_key, self.shown = key, (text, arrow)
            return values, text, arrow

        values, text, arrow = await self.call(d.timeout_s, go)
        telemetry: dict[str, Value] = {
            "online": True,
            "brightness": values["brightness"],
            "pixel_faults": values["pixel_faults"],
            "shown": text,
            "message_id": values["shown_message_id"],
            "arrow": arrow,
            "active_slot": values["active_slot"],
        }
        for bit, _ in v.control.point("status").bits:
            telemetry[bit] = values[bit]
        d.publish(Telemetry(self.display_id, d.clock.now(), telemetry))

    async def read_slot(self, client: AsyncModbusTcpClient, slot: int) -> tuple[str, str]:
        """Text and arrow held in `slot`."""
        v = self.driver.vms_profile
        regs = await self.read(client, v.slot_base(slot), v.slot_span)
        arrow_point = v.slot.point("arrow")
        try:
            code = int(decode(arrow_point, regs, arrow_point.offset))
        except PointValueError as exc:
            raise self.reply_error(f"slot {slot}: {exc}") from exc
        arrows = v.text.arrows
        return decode_text(v, regs, v.text_offset), arrows[code] if code < len(arrows) else "none"

    def slot_registers(self, content: DisplayContent) -> list[int]:
        """Registers of a whole slot (points, padding, text) for `content`."""
        v = self.driver.vms_profile
        regs = [0] * v.slot_span
        values = {
            "message_id": content.message_id,
            "arrow": v.text.arrows.index(content.arrow),
            "expires_at": 0 if content.expires_at is None else math.ceil(content.expires_at),
        }
        for name, value in values.items():
            point = v.slot.point(name)
            regs[point.offset : point.offset + point.count] = encode(point, value)
        regs[v.text_offset :] = encode_text(v, content.lines)
        return regs

    async def write_content(self, content: DisplayContent, timeout_s: float) -> float:
        """Fill a slot that is not shown, activate it, confirm by shown id and CRC."""
        v = self.driver.vms_profile
        slot_regs = self.slot_registers(content)
        brightness = self.brightness_regs(content.brightness) if content.brightness is not None else None
        want_crc = crc16(content.text)

        async def go(client: AsyncModbusTcpClient) -> float:
            ctl = self.driver.control_decoder.decode(await self.read(client, v.control.base, v.control.span))
            active = int(ctl["active_slot"])
            slot = active % v.slot_count + 1  # never the shown slot (unless there is only one)
            base = v.slot_base(slot)
            await self.write_regs(client, base, slot_regs)
            if await self.read(client, base, len(slot_regs)) != slot_regs:
                raise self.reply_error(f"slot {slot} read back differs from what was written")
            if brightness is not None:
                await self.write_regs(client, v.control_address("brightness"), brightness)
            await self.write_regs(client, v.control_address("active_slot"), [slot])
            back = self.driver.control_decoder.decode(await self.read(client, v.control.base, v.control.span))
            shown_id, crc = int(back["shown_message_id"]), int(back["shown_crc"])
            if shown_id != content.message_id or crc != want_crc:
                raise self.reply_error(
                    f"sign shows message {shown_id} (crc {crc:#06x}), expected {content.message_id} "
                    f"(crc {want_crc:#06x}); status {back['status']:#06x}"
                )
            self.shown_key, self.shown = (slot, shown_id, crc), (content.text, content.arrow)
            return float(shown_id)

        return float(await self.call(timeout_s, go))

    def brightness_regs(self, value: float) -> list[int]:
        return encode(self.driver.vms_profile.control.point("brightness"), value)

    async def write_brightness(self, value: float, timeout_s: float) -> float:
        point = self.driver.vms_profile.control.point("brightness")
        regs = self.brightness_regs(value)
        address = self.driver.vms_profile.control_address("brightness")

        async def go(client: AsyncModbusTcpClient) -> float:
            await self.write_regs(client, address, regs)
            try:
                return float(decode(point, await self.read(client, address, 1)))
            except PointValueError as exc:
                raise self.reply_error(f"read-back of brightness: {exc}") from exc

        return float(await self.call(timeout_s, go))


class DisplayDriver:
    """Driver for LED boards (one MQTT session at `mqtt_url`) and Modbus signs; an async CM.

    `poll_interval_s`, `status_interval_s` (default: the board profile's), timeouts and
    backoff are real seconds; `alarm_after_s` is clock seconds.
    """

    def __init__(
        self,
        publish: Callable[[Event], None],
        clock: Clock,
        *,
        boards: Sequence[str] = (),
        signs: Sequence[SignEndpoint] = (),
        mqtt_url: str | None = None,
        tls: TlsFiles | None = None,
        board_profile: LedBoardProfile | None = None,
        vms_profile: VmsProfile | None = None,
        poll_interval_s: float = 1.0,
        status_interval_s: float | None = None,
        timeout_s: float = 2.0,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        alarm_after_s: float = 120.0,
        alarm_after_missed: int = 10,
        max_clock_skew_s: float = 300.0,
    ) -> None:
        """`max_clock_skew_s` (real seconds): a status stamped further ahead of our clock is refused."""
        if boards and mqtt_url is None:
            raise ValueError("boards need an mqtt_url")
        self.publish = publish
        self.clock = clock
        self.board_profile = board_profile or default_led_board_profile()
        self.vms_profile = vms_profile or default_vms_profile()
        self.poll_interval_s = poll_interval_s
        self.status_interval_s = status_interval_s or self.board_profile.status_interval_s
        self.timeout_s = timeout_s
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.alarm_after_s = alarm_after_s
        self.alarm_after_missed = alarm_after_missed
        self.stats = DisplayDriverStats()
        self.refusals = Refusals("displays")
        self.max_ahead_s = max_clock_skew_s * max(1.0, clock.speed)
        self.control_decoder = BlockDecoder(self.vms_profile.control)
        # One session for every board's status (the MQTT device client every MQTT driver shares).
        p = self.board_profile
        self._board_link: MqttDeviceClient | None = None
        if boards:
            self._board_link = MqttDeviceClient(
                mqtt_url or "",
                name="edge-displays",
                subscriptions=[(p.topic(p.status_topic, b), p.qos) for b in boards],
                on_message=self._on_board_message,
                on_down=self._boards_unreachable,
                tls=tls,
                settings_key="displays.board_mqtt_url",
                timeout_s=timeout_s,
                backoff_base_s=backoff_base_s,
                backoff_max_s=backoff_max_s,
                # writes to many boards at once are expected; aiomqtt warns above 10 pending calls
                pending_calls=max(64, 2 * len(boards)),
            )
        # for logs: the URL may hold a password
        self._broker = self._board_link.where if self._board_link else ""
        self._board_ids = tuple(boards)
        self._sign_eps = tuple(signs)
        ids = [*self._board_ids, *(s.display_id for s in self._sign_eps)]
        if len(set(ids)) != len(ids):
            raise ValueError("display ids must be unique")
        self._ids = frozenset(ids)
        for display_id in ids:
            if not display_id or any(c in display_id for c in "/+#"):
                raise ValueError(f"display id {display_id!r} cannot be part of a topic")
        self._boards: dict[str, _Board] = {}
        self._signs: dict[str, _Sign] = {}
        self._by_topic: dict[str, _Board] = {}
        self._state = _State.UNOPENED
        self._tg: asyncio.TaskGroup | None = None
        self._tasks: list[asyncio.Task[None]] = []
        _quiet_pymodbus()

    async def __aenter__(self) -> Self:
        if self._state is not _State.UNOPENED:
            raise RuntimeError(f"driver is {self._state.value}; it cannot be opened again")
        self._state = _State.OPENED
        for display_id in self._board_ids:
            board = _Board(self, display_id)
            self._boards[display_id] = board
            self._by_topic[board.status_topic] = board
        for ep in self._sign_eps:
            self._signs[ep.display_id] = _Sign(self, ep)
        tg = asyncio.TaskGroup()
        await tg.__aenter__()
        self._tg = tg
        if self._boards:
            self._tasks.append(tg.create_task(self._mqtt_loop(), name="displays.mqtt"))
            self._tasks.append(tg.create_task(self._watch_boards(), name="displays.boards.watch"))
        for sign in self._signs.values():
            self._tasks.append(tg.create_task(sign.poll_loop(), name=f"vms[{sign.display_id}].poll"))
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
            for sign in self._signs.values():
                sign.drop()

    # -- boards ------------------------------------------------------------------

    async def _mqtt_loop(self) -> None:
        """The board broker session lives as long as the driver (it reconnects by itself)."""
        assert self._board_link is not None
        async with self._board_link:
            await asyncio.Event().wait()

    def _boards_unreachable(self, reason: str) -> None:
        """The board session ended: every board is out of reach until it reports again."""
        for board in self._boards.values():
            board.set_online(False, f"broker unreachable: {reason}")

    def _on_board_message(self, topic: str, payload: bytes, retained: bool) -> None:
        board = self._by_topic.get(topic)
        if board is None:
            return
        self.stats.statuses += 1
        if not payload:
            return  # a retained status being cleared
        status = parse_status_payload(self.board_profile, payload)
        if isinstance(status, BoardStatus) and status.ts is not None:
            future = check_ts(status.ts, self.clock.now(), self.max_ahead_s)
            status = status if future is None else future
        if isinstance(status, Refusal):
            self.stats.bad_statuses += 1
            self.refusals.refuse(board.display_id, status)
            return
        self.refusals.accepted(board.display_id)
        board.on_status(status, retained=retained)

    async def _watch_boards(self) -> None:
        """Mark a board down after `offline_after_missed` status periods without a status."""
        limit = self.board_profile.offline_after_missed
        while True:
            await asyncio.sleep(self.status_interval_s / 4)
            for board in self._boards.values():
                missed = board.missed_polls()
                if missed >= limit and board.online is not False:
                    board.set_online(False, f"{missed} status periods missed")

    # -- Driver --------------------------------------------------------------------

    def handles(self, device_id: str) -> bool:
        """Whether `device_id` is one of our boards or signs."""
        return device_id in self._ids

    async def write_payload(self, device_id: str, point: str, payload: str, timeout: float) -> float:  # noqa: ASYNC109
        """`write` with a JSON payload: the dispatcher's seam for structured values (PayloadDriver)."""
        return await self.write(device_id, point, payload, timeout)

    def online(self, display_id: str) -> bool | None:
        """Last known availability (None until the first answer or failure)."""
        display = self._boards.get(display_id) or self._signs.get(display_id)
        return None if display is None else display.online

    def health(self, display_id: str) -> DisplayHealth:
        """Missed polls and silence of a display, and whether its comm-loss alarm is due."""
        display = self._display(display_id)
        now = self.clock.now()
        silent = now - (display.since if display.last_seen is None else display.last_seen)
        missed = display.missed_polls()
        return DisplayHealth(
            display_id=display_id,
            online=display.online,
            missed_polls=missed,
            silent_s=silent,
            last_seen=display.last_seen,
            alarm_due=missed >= self.alarm_after_missed and silent >= self.alarm_after_s,
        )

    def _display(self, display_id: str) -> _Board | _Sign:
        display = self._boards.get(display_id) or self._signs.get(display_id)
        if display is None:
            if self.handles(display_id):
                raise DeviceUnavailable("driver is not running", endpoint=display_id)
            raise DeviceUnavailable(f"{display_id!r} is not handled by this driver")
        return display

    # The timeout is part of the Driver contract: the driver must know it to drop a
    # connection whose request timed out in flight, which a caller's wrapper cannot do.
    async def write(self, device_id: str, point: str, value: WriteValue, timeout: float) -> float:  # noqa: ASYNC109
        """Write `content` (dict or JSON text; returns the echoed message id) or `brightness` (%).

        What cannot be shown is refused before anything is sent (PointValueError, a
        DeviceReplyError). DeviceUnavailable at once while the display is down;
        DeviceTimeout after `timeout` real seconds, queue wait included.
        """
        display = self._display(device_id)
        try:
            request = self._check(display, point, value)
        except PointValueError:
            self.stats.refused += 1
            raise
        if self._state is not _State.OPENED:
            raise DeviceUnavailable("driver is not running", endpoint=device_id)
        if not display.online:
            self.stats.write_errors += 1
            raise DeviceUnavailable("display down or in backoff", endpoint=device_id)
        self.stats.writes += 1
        try:
            if isinstance(display, _Sign):
                if isinstance(request, DisplayContent):
                    return await display.write_content(request, timeout)
                return await display.write_brightness(request, timeout)
            return await self._board_write(display, request, timeout)
        except DeviceError:
            self.stats.write_errors += 1
            raise

    def _check(self, display: _Board | _Sign, point: str, value: object) -> DisplayContent | int:
        profile = self.board_profile if isinstance(display, _Board) else self.vms_profile
        if point == "content":
            content = parse_content(value)
            check_content(profile, content, self.clock.now())
            return content
        if point == "brightness":
            lo, hi = brightness_range(profile)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise PointValueError(
                    f"brightness must be a number, got {value!r}", point=point, value=math.nan
                )
            if not lo <= value <= hi:
                raise PointValueError(f"brightness={value} outside {lo}..{hi}", point=point, value=value)
            return round(value)
        raise PointValueError(
            f"{point!r} is not a display point ({', '.join(POINTS)})", point=point, value=math.nan
        )

    async def _board_write(self, board: _Board, request: DisplayContent | int, timeout_s: float) -> float:
        p = self.board_profile
        try:
            async with asyncio.timeout(timeout_s), board.lock:
                if isinstance(request, DisplayContent):
                    mid = request.message_id
                    status = await board.echo(
                        board.content_topic, content_payload(p, request), lambda s: s.message_id == mid
                    )
                else:
                    status = await board.echo(
                        board.brightness_topic,
                        brightness_payload(p, request),
                        lambda s: s.brightness == request,
                    )
        except TimeoutError as exc:
            raise DeviceTimeout(f"no echo within {timeout_s} s", endpoint=board.display_id) from exc
        if isinstance(request, DisplayContent):
            if status.text != request.text:
                raise DeviceReplyError(
                    f"board shows {status.text!r} for message {request.message_id}, expected {request.text!r}",
                    endpoint=board.display_id,
                )
            if request.brightness is not None and status.brightness != request.brightness:
                raise DeviceReplyError(
                    f"brightness {status.brightness}, expected {request.brightness}",
                    endpoint=board.display_id,
                )
            return float(status.message_id)
        return float(request if status.brightness is None else status.brightness)

    def board_status(self, display_id: str) -> BoardStatus | None:
        """The board's last live status, if any."""
        return self._boards[display_id].status


if TYPE_CHECKING:  # the seam, checked by mypy: DisplayDriver is a Driver

    def _is_driver(driver: DisplayDriver) -> Driver:
        return driver
