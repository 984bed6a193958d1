"""LED guidance boards (aiomqtt clients) and variable message signs (pymodbus servers).

Each display renders what it shows as text (`DisplaySimulator.shown`), from the same
profiles and codecs as the driver, so the two cannot drift. Faults: pixel faults,
communication loss, power loss (and door open / comm fault bits on a sign). Expired
messages blank on the device side too, and so does a display that has lost its
communication for its fail-safe time (a sign: no request for `failsafe_after_s`; a board:
no broker for the profile's `failsafe_after_s`); it stays blank until new content arrives. Time comes from a `Clock`; the boards' status period is real seconds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Literal

import structlog
from pydantic import BaseModel, ConfigDict, Field

from devices.displays import SignEndpoint
from devices.profiles.displays import (
    LedBoardProfile,
    VmsProfile,
    default_led_board_profile,
    default_vms_profile,
)
from edge.clock import Clock
from edge.lifecycle import Service, ServiceState
from edge.mqtt import BrokerAddress
from simulators import MIN_REAL_TICK_S, fault_topic
from simulators.displays_boards import BOARD_FAULTS, BoardFleet, SimBoard, _Board
from simulators.displays_signs import SIGN_FAULTS, SignBank, SimSign, _Sign
from simulators.mqtt import apply_fault_payload, run_fault_listener

__all__ = [
    "BOARD_FAULTS",
    "FAULT_TOPIC",
    "SIGN_FAULTS",
    "DisplaySimulator",
    "FaultMessage",
    "SimBoard",
    "SimSign",
]

log = structlog.get_logger(__name__)

FAULT_TOPIC = fault_topic("displays")  # `edge simulate displays` (on its broker)
_READY_TIMEOUT_S = 10.0


class FaultMessage(BaseModel):
    """`dos/sim/displays/faults`: {"target": display id, "fault": ..., "active": true, "pixels": 12}."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target: str = Field(min_length=1, max_length=64)
    fault: Literal["pixel_fault", "comm_loss", "power_loss", "door_open", "comm_fault"]
    active: bool = True
    pixels: int = Field(default=12, ge=0, le=100_000)


class DisplaySimulator(Service):
    """Runs boards (one aiomqtt client each, on `mqtt_url`) and signs until the context exits.

    `status_interval_s` overrides the board profile's status period (real seconds);
    expiry is checked every `tick_s` clock seconds (at least MIN_REAL_TICK_S real seconds apart).
    Entering waits until every board has subscribed and published its first status.
    """

    service_name = "display_sim"

    def __init__(
        self,
        clock: Clock,
        *,
        boards: Sequence[SimBoard] = (),
        signs: Sequence[SimSign] = (),
        mqtt_url: str | None = None,
        board_profile: LedBoardProfile | None = None,
        vms_profile: VmsProfile | None = None,
        status_interval_s: float | None = None,
        tick_s: float = 1.0,
    ) -> None:
        if boards and mqtt_url is None:
            raise ValueError("boards need an mqtt_url")
        super().__init__()
        self.clock = clock
        self.board_profile = board_profile or default_led_board_profile()
        self.vms_profile = vms_profile or default_vms_profile()
        self.status_interval_s = status_interval_s or self.board_profile.status_interval_s
        self.tick_s = tick_s
        self._boards: dict[str, _Board] = {}
        seen: set[str] = set()
        for display_id in [*(b.display_id for b in boards), *(s.display_id for s in signs)]:
            self._check_new(display_id, seen)
        for b in boards:
            self._boards[b.display_id] = _Board(b, b.brightness)
        address = BrokerAddress.parse(mqtt_url) if mqtt_url else None
        self._fleet = BoardFleet(
            clock,
            self.board_profile,
            address,
            self.status_interval_s,
            lambda: self.state is ServiceState.OPENED,
        )
        self._bank = SignBank(clock, self.vms_profile, signs)
        self._signs = self._bank.signs

    @staticmethod
    def _check_new(display_id: str, seen: set[str]) -> None:
        if display_id in seen:
            raise ValueError(f"duplicate display id {display_id!r}")
        if not display_id or any(c in display_id for c in "/+#"):
            raise ValueError(f"display id {display_id!r} cannot be part of a topic")
        seen.add(display_id)

    # -- views -------------------------------------------------------------------

    def shown(self, display_id: str) -> str:
        """The text the display shows now ("" when blank or dark)."""
        board = self._boards.get(display_id)
        if board is not None:
            return board.shown
        return self._bank.shown(self._sign(display_id))

    def message_id(self, display_id: str) -> int:
        """Id of the message shown (0: blank)."""
        board = self._boards.get(display_id)
        if board is not None:
            return board.message_id
        return self._bank.reg(self._sign(display_id), "shown_message_id", 2)

    def arrow(self, display_id: str) -> str:
        """Arrow shown ("none" when blank)."""
        board = self._boards.get(display_id)
        if board is not None:
            return board.arrow
        return self._bank.arrow(self._sign(display_id))

    def brightness(self, display_id: str) -> int:
        """Brightness in % the display is set to."""
        board = self._boards.get(display_id)
        if board is not None:
            return board.brightness
        return self._bank.reg(self._sign(display_id), "brightness")

    def faults(self, display_id: str) -> frozenset[str]:
        """Active faults of a display."""
        board = self._boards.get(display_id)
        return frozenset(board.faults if board is not None else self._sign(display_id).faults)

    def board_sessions(self, display_id: str) -> int:
        """How many MQTT sessions the board has opened (for reconnection tests)."""
        return self._boards[display_id].sessions

    def sign_endpoints(self) -> list[SignEndpoint]:
        """Driver endpoints of the signs, with the ports actually used."""
        return [
            SignEndpoint(s.spec.display_id, s.spec.host, s.port, s.spec.unit) for s in self._signs.values()
        ]

    def board_ids(self) -> list[str]:
        """Display ids of the boards."""
        return list(self._boards)

    def _sign(self, display_id: str) -> _Sign:
        try:
            return self._signs[display_id]
        except KeyError:
            raise KeyError(f"unknown display {display_id!r}") from None

    # -- faults ------------------------------------------------------------------

    def inject(self, display_id: str, fault: str, *, pixels: int = 12) -> None:
        """Start a fault: pixel_fault (`pixels` dead), comm_loss, power_loss; door_open/comm_fault on signs."""
        self._fault(display_id, fault, active=True, pixels=pixels)

    def clear(self, display_id: str, fault: str | None = None) -> None:
        """End one fault (or all of them)."""
        for f in sorted(self.faults(display_id)) if fault is None else [fault]:
            self._fault(display_id, f, active=False, pixels=0)

    def _fault(self, display_id: str, fault: str, *, active: bool, pixels: int) -> None:
        board = self._boards.get(display_id)
        known = BOARD_FAULTS if board is not None else SIGN_FAULTS
        if board is None and display_id not in self._signs:
            raise ValueError(f"unknown display {display_id!r}")
        if fault not in known:
            raise ValueError(f"unknown fault {fault!r}; known: {', '.join(sorted(known))}")
        faults = board.faults if board is not None else self._signs[display_id].faults
        if active:
            faults.add(fault)
        else:
            faults.discard(fault)
        if board is not None:
            self._fleet.fault(board, fault, active=active, pixels=pixels)
        else:
            self._bank.fault(self._signs[display_id], fault, active=active, pixels=pixels)
        log.info("sim_display_fault", display_id=display_id, fault=fault, active=active)

    # -- MQTT fault injection ------------------------------------------------------

    def apply_fault_payload(self, payload: bytes | str) -> bool:
        """Apply one JSON fault message; a bad one is refused with a log line, never raised."""
        return apply_fault_payload(
            payload,
            FaultMessage,
            lambda m: self._fault(m.target, m.fault, active=m.active, pixels=m.pixels if m.active else 0),
        )

    async def run_mqtt_faults(self, url: str, topic: str = FAULT_TOPIC) -> None:
        """Take fault injections from MQTT until cancelled; reconnects with jittered backoff."""
        await run_fault_listener(url, topic, self.apply_fault_payload, name="displays")

    # -- time and lifecycle --------------------------------------------------------

    async def _ticker(self) -> None:
        """Blank expired messages on the device side."""
        while True:
            await self.clock.sleep(max(self.tick_s, MIN_REAL_TICK_S * self.clock.speed))
            now = self.clock.now()
            for sign in self._signs.values():
                self._bank.refresh(sign)
            for board in self._boards.values():
                self._fleet.tick(board, now)

    async def _start(self) -> None:
        for sign in self._signs.values():
            await self._bank.listen(sign)
        for board in self._boards.values():
            board.reachable.set()
            self.spawn(self._fleet.run(board), f"board[{board.spec.display_id}]")
        self.spawn(self._ticker(), "ticker")
        self.spawn(self._bank.servers_loop(), "servers")
        async with asyncio.timeout(_READY_TIMEOUT_S):
            for board in self._boards.values():
                await board.ready.wait()
        log.info("sim_displays_started", boards=len(self._boards), signs=len(self._signs))

    async def _stop(self) -> None:
        for sign in self._signs.values():
            self._bank.silence(sign)
        await asyncio.sleep(0)  # let pymodbus finish its pending request handlers
