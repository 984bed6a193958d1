"""The LED guidance boards of the display simulator: one aiomqtt client per board.

A board subscribes to its content and brightness topics, shows what it is sent (from the
same profile and codec as the driver), publishes its status on every change and every
status period, and leaves a last will. It reconnects after a broker outage with the shared
backoff; lost for the profile's `failsafe_after_s`, it blanks and stays blank until new
(not retained) content arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import aiomqtt
import structlog

from devices.profiles.displays import (
    BoardStatus,
    DisplayContent,
    LedBoardProfile,
    brightness_range,
    check_content,
    parse_content_payload,
    status_payload,
)
from devices.protocols.registers import PointValueError
from edge.backoff import Backoff
from edge.clock import Clock
from edge.decode import Refusal, decode_json
from edge.mqtt import BrokerAddress

log = structlog.get_logger("simulators.displays")

BOARD_FAULTS = frozenset({"pixel_fault", "comm_loss", "power_loss"})
_MQTT_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class SimBoard:
    """One MQTT LED guidance board."""

    display_id: str
    brightness: int = 80


@dataclass(slots=True)
class _Board:
    spec: SimBoard
    brightness: int
    content: DisplayContent | None = None  # what it shows; None: blank
    pixel_faults: int = 0
    faults: set[str] = field(default_factory=set)
    reachable: asyncio.Event = field(default_factory=asyncio.Event)
    lost: asyncio.Event = field(default_factory=asyncio.Event)
    dirty: asyncio.Event = field(default_factory=asyncio.Event)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    sessions: int = 0
    lost_since: float | None = None  # clock time the broker connection was lost
    failsafe: bool = False  # blanked on comm loss: retained content is not new content

    @property
    def shown(self) -> str:
        """The text the board shows now ("" when blank or dark)."""
        return "" if self.content is None or "power_loss" in self.faults else self.content.text

    @property
    def message_id(self) -> int:
        """Id of the message shown (0: blank)."""
        return 0 if self.content is None or "power_loss" in self.faults else self.content.message_id

    @property
    def arrow(self) -> str:
        """Arrow shown ("none" when blank)."""
        return "none" if self.content is None or not self.shown else self.content.arrow


class BoardFleet:
    """The boards' MQTT sessions, content and status; `running()` tells while the simulator is open."""

    def __init__(
        self,
        clock: Clock,
        profile: LedBoardProfile,
        address: BrokerAddress | None,
        status_interval_s: float,
        running: Callable[[], bool],
    ) -> None:
        self.clock = clock
        self.board_profile = profile
        self.status_interval_s = status_interval_s
        self._address = address
        self._running = running
        self._token = uuid.uuid4().hex[:8]

    def fault(self, board: _Board, fault: str, *, active: bool, pixels: int) -> None:
        """Apply a fault already recorded in `board.faults`: pixels, reachability, status."""
        if fault == "pixel_fault":
            board.pixel_faults = pixels if active else 0
        if board.faults & {"comm_loss", "power_loss"}:
            if board.lost_since is None:
                board.lost_since = self.clock.now()
            board.reachable.clear()
            board.lost.set()
        else:
            board.lost.clear()
            board.reachable.set()
        board.dirty.set()

    def tick(self, board: _Board, now: float) -> None:
        """Blank an expired message, and the content of a board lost for its fail-safe time."""
        after = self.board_profile.failsafe_after_s
        c = board.content
        if c is not None and c.expires_at is not None and now >= c.expires_at:
            board.content = None
            board.dirty.set()
            log.info("sim_display_expired", display_id=board.spec.display_id)
        lost = board.lost_since
        if board.content is not None and after and lost is not None and now - lost >= after:
            board.content = None
            board.failsafe = True
            log.info("sim_display_failsafe", display_id=board.spec.display_id, after_s=after)

    def _status(self, board: _Board) -> BoardStatus:
        return BoardStatus(
            online=True,
            brightness=board.brightness,
            pixel_faults=board.pixel_faults,
            message_id=board.message_id,
            text=board.shown,
            arrow=board.arrow,
            ts=self.clock.now(),
        )

    def _client(self, board: _Board) -> aiomqtt.Client:
        address = self._address
        if address is None:
            raise RuntimeError("boards need an mqtt_url")
        p = self.board_profile
        will = aiomqtt.Will(
            p.topic(p.status_topic, board.spec.display_id),
            status_payload(p, BoardStatus(online=False)),
            qos=p.qos,
            retain=p.retain,
        )
        return aiomqtt.Client(
            address.host,
            address.port,
            username=address.username,
            password=address.password,
            identifier=f"sim-display-{board.spec.display_id}-{self._token}",
            will=will,
            timeout=_MQTT_TIMEOUT_S,
            tls_context=address.ssl_context(),
        )

    async def run(self, board: _Board) -> None:
        """Connect while reachable; reconnect after a broker outage with jittered backoff."""
        backoff = Backoff(base_s=0.1, max_s=5.0)
        while self._running():
            await board.reachable.wait()
            try:
                await self._board_session(board)
                backoff.reset()
            except* (aiomqtt.MqttError, TimeoutError) as group:
                if board.lost_since is None:
                    board.lost_since = self.clock.now()
                if backoff.attempt == 0:
                    log.warning(
                        "sim_display_mqtt_down",
                        display_id=board.spec.display_id,
                        error=str(group.exceptions[0]),
                    )
                await backoff.wait()

    async def _board_session(self, board: _Board) -> None:
        p = self.board_profile
        did = board.spec.display_id
        async with self._client(board) as client:
            board.sessions += 1
            board.lost_since = None
            await client.subscribe(
                [(p.topic(p.content_topic, did), p.qos), (p.topic(p.brightness_topic, did), p.qos)],
                timeout=_MQTT_TIMEOUT_S,
            )
            await self._publish_status(client, board)
            board.ready.set()
            async with asyncio.TaskGroup() as tg:
                reader = tg.create_task(self._board_read(client, board), name=f"display_sim[{did}].read")
                ticker = tg.create_task(self._board_status(client, board), name=f"display_sim[{did}].status")
                await board.lost.wait()
                reader.cancel()
                ticker.cancel()
        log.info("sim_display_board_offline", display_id=did)

    async def _publish_status(self, client: aiomqtt.Client, board: _Board) -> None:
        p = self.board_profile
        await client.publish(
            p.topic(p.status_topic, board.spec.display_id),
            status_payload(p, self._status(board)),
            qos=p.qos,
            retain=p.retain,
            timeout=_MQTT_TIMEOUT_S,
        )

    async def _board_status(self, client: aiomqtt.Client, board: _Board) -> None:
        """Publish status on every change and every status period.

        The loop tests the state because on 3.11 aiomqtt's `wait_for` can swallow the
        cancellation of a publish; the nested task group would then wait for ever.
        """
        while self._running():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.status_interval_s):
                    await board.dirty.wait()
            board.dirty.clear()
            await self._publish_status(client, board)

    async def _board_read(self, client: aiomqtt.Client, board: _Board) -> None:
        p = self.board_profile
        did = board.spec.display_id
        content_topic = p.topic(p.content_topic, did)
        brightness_topic = p.topic(p.brightness_topic, did)
        async for message in client.messages:
            payload = message.payload
            if not isinstance(payload, bytes | str):
                continue
            try:  # one bad message must not end the board's session
                if message.topic.matches(content_topic):
                    self._board_content(board, payload, retained=bool(message.retain))
                elif message.topic.matches(brightness_topic):
                    self._board_brightness(board, payload)
                else:
                    continue
            except Exception:
                log.exception("sim_display_message_failed", display_id=did)
                continue
            board.dirty.set()

    def _board_content(self, board: _Board, payload: bytes | str, *, retained: bool) -> None:
        if retained and board.failsafe:
            return  # blanked on comm loss: stays blank until the controller sends anew
        if not payload:  # a cleared retained message
            board.content = None
            return
        try:
            content = parse_content_payload(self.board_profile, payload)
            check_content(self.board_profile, content, self.clock.now())
        except PointValueError as exc:
            # a real board ignores what it cannot show; its status keeps the old message id
            log.warning("sim_display_content_refused", display_id=board.spec.display_id, error=str(exc))
            return
        board.content = content  # no lines: a blank message that still echoes its id
        board.failsafe = False
        if content.brightness is not None:
            board.brightness = content.brightness

    def _board_brightness(self, board: _Board, payload: bytes | str) -> None:
        lo, hi = brightness_range(self.board_profile)
        raw = decode_json(payload, max_bytes=1024, max_depth=2)
        try:
            value = None if isinstance(raw, Refusal) else raw[self.board_profile.content_keys["brightness"]]
        except (TypeError, KeyError):
            value = None
        if value is None:
            log.warning("sim_display_brightness_refused", display_id=board.spec.display_id)
            return
        if isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi:
            board.brightness = value
