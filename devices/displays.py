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
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from devices.profiles.displays import (
    BoardStatus,
    DisplayContent,
    LedBoardProfile,
    VmsProfile,
    brightness_payload,
    brightness_range,
    check_content,
    content_payload,
    default_led_board_profile,
    default_vms_profile,
    parse_content,
    parse_status_payload,
)
from devices.protocols.link import LinkTiming
from devices.protocols.modbus import ModbusSession, quiet_pymodbus
from devices.protocols.mqtt import MqttDeviceClient
from devices.protocols.registers import PointValueError
from devices.protocols.vms import VmsLink
from edge.clock import Clock
from edge.decode import Refusal, Refusals, check_ts
from edge.errors import DeviceError, DeviceReplyError, DeviceTimeout, DeviceUnavailable
from edge.events import Availability, Event, Telemetry, Value
from edge.lifecycle import Service, ServiceState
from edge.mqtt import TlsFiles

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

    def _recent(self, status: BoardStatus) -> bool:
        """Whether a retained status was sent within the last status period (by its own ts).

        A board reports once a period; a retained status that young is as much a sign of life
        as the next live one, so a daemon (re)started beside running boards has them online at
        subscribe instead of a period later. An older one, or one without a ts, is not.
        """
        if status.ts is None:
            return False
        clock = self.driver.clock
        age = clock.now() - status.ts
        return -clock.speed <= age <= self.driver.status_interval_s * clock.speed

    def on_status(self, status: BoardStatus, *, retained: bool) -> None:
        d = self.driver
        if not status.online:
            self.set_online(False, "board reported offline")
            return
        if retained and not self._recent(status):
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
    """A variable message sign: its Modbus session, register protocol and poll loop."""

    def __init__(self, driver: DisplayDriver, ep: SignEndpoint) -> None:
        super().__init__(driver, ep.display_id, driver.poll_interval_s)
        self.ep = ep
        timing = LinkTiming(driver.timeout_s, driver.backoff_base_s, driver.backoff_max_s)
        self.session = ModbusSession(ep.display_id, ep.host, ep.port, ep.unit, timing)
        self.link = VmsLink(self.session, driver.vms_profile)
        self.log = self.log.bind(host=ep.host, port=ep.port, unit=ep.unit)

    def on_state(self, online: bool, reason: str) -> None:
        """The session's verdict after each poll: count failures, note signs of life."""
        if online:
            self.seen()
        else:
            self.driver.stats.poll_errors += 1
        self.set_online(online, reason)

    async def poll_loop(self) -> None:
        """Poll forever; the session reconnects with backoff after a failure."""
        await self.session.run(self.poll_once, self.driver.poll_interval_s, self.on_state)

    async def poll_once(self) -> None:
        """One poll of the sign, published as telemetry."""
        d = self.driver
        d.stats.polls += 1
        telemetry = await self.link.poll(d.timeout_s)
        d.publish(Telemetry(self.display_id, d.clock.now(), telemetry))


class DisplayDriver(Service):
    """Driver for LED boards (one MQTT session at `mqtt_url`) and Modbus signs; an async CM.

    `poll_interval_s`, `status_interval_s` (default: the board profile's), timeouts and
    backoff are real seconds; `alarm_after_s` is clock seconds.
    """

    service_name = "displays"

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
        super().__init__()
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
        quiet_pymodbus()

    async def _start(self) -> None:
        for display_id in self._board_ids:
            board = _Board(self, display_id)
            self._boards[display_id] = board
            self._by_topic[board.status_topic] = board
        for ep in self._sign_eps:
            self._signs[ep.display_id] = _Sign(self, ep)
        if self._boards:
            self.spawn(self._mqtt_loop(), "mqtt")
            self.spawn(self._watch_boards(), "boards.watch")
        for sign in self._signs.values():
            self.spawn(sign.poll_loop(), f"vms[{sign.display_id}].poll")

    async def _stop(self) -> None:
        for sign in self._signs.values():
            sign.session.drop()

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
        if self.state is not ServiceState.OPENED:
            raise DeviceUnavailable("driver is not running", endpoint=device_id)
        if not display.online:
            self.stats.write_errors += 1
            raise DeviceUnavailable("display down or in backoff", endpoint=device_id)
        self.stats.writes += 1
        try:
            if isinstance(display, _Sign):
                if isinstance(request, DisplayContent):
                    return await display.link.write_content(request, timeout)
                return await display.link.write_brightness(request, timeout)
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
