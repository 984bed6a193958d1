"""Simulated charge points over OCPP 1.6J: clients of a central system, on the shared car physics.

`ChargingSimulator` steps every charge point's physics; those with `protocol="ocpp"` are served
here instead of in its OPC UA address space: each is an OCPP-J client of the central system at
`{url}/{cp_id}` (subprotocol ocpp1.6, HTTP Basic auth with its password, TLS for wss://),
reconnecting with a capped, jittered backoff. It boots (BootNotification), reports its
connector's status on changes, starts a transaction when a car plugs in (StartTransaction
with the car's idTag: a car not accepted does not charge) and stops it when the car leaves or
the central system asks (RemoteStopTransaction), sends MeterValues every
MeterValueSampleInterval clock seconds and heartbeats every HeartbeatInterval, and answers
SetChargingProfile, ClearChargingProfile, ChangeConfiguration, GetConfiguration and
TriggerMessage. The charging profile in force (TxProfile of the running transaction, else the
TxDefaultProfile, capped by a ChargePointMaxProfile) is the car's limit (`limit_a`).

Its own fail-safe (devices/profiles/charging_ocpp.py): with no message from the central system
for `DosEdgeFailsafeTimeout` clock seconds (a link lost, or a central system that stopped
answering) it limits itself to `DosEdgeFailsafeCurrent` until a setpoint arrives; without any
charging profile (after a boot) it offers the fail-safe current. A charger without power (a
night-only circuit by day, a tripped fuse) has no link either: it reconnects and boots when
the power is back.

Faults (`ChargingSimulator.inject`): "disconnect" (drops the websocket and stays away until
cleared), "reboot" (at once: reconnects with a BootNotification, its profiles lost),
"reject_profile" (answers SetChargingProfile Rejected), "meter_frozen" (MeterValues repeat the
last values) and "faulted" (status Faulted, the car does not charge).
"""

from __future__ import annotations

import asyncio
import random
import ssl
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import structlog
from ocpp.v16 import call, call_result
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidHandshake, InvalidURI
from websockets.headers import build_authorization_basic
from websockets.typing import Subprotocol

from devices.profiles.charging import MIN_CHARGE_CURRENT_A
from devices.profiles.charging_ocpp import (
    CONNECTOR,
    FAILSAFE_CURRENT_KEY,
    FAILSAFE_TIMEOUT_KEY,
    MAX_CURRENT_KEY,
    SAMPLED_DATA,
    sampled_values,
)
from devices.protocols.ocpp import SUBPROTOCOL, Handler, OcppPeer, OcppStats, iso, quiet_websockets
from edge.backoff import Backoff
from edge.clock import Clock
from edge.decode import Refusals
from edge.errors import DeviceError
from edge.lifecycle import Service
from simulators import MIN_REAL_TICK_S
from simulators.charging_physics import ChargingPhysics, _Cp

__all__ = ["FAULTS", "OcppChargePoints"]

log = structlog.get_logger("simulators.charging")

FAULTS = frozenset({"disconnect", "reboot", "reject_profile", "meter_frozen", "faulted"})
DEFAULT_ID_TAG = "DOSEDGE-SIM-0001"
_TRIGGERABLE = frozenset({"BootNotification", "Heartbeat", "MeterValues", "StatusNotification"})
_MEASURANDS = frozenset({*SAMPLED_DATA, "Current.Export", "Energy.Active.Export.Register", "Power.Offered"})


class _Point:
    """One simulated OCPP charge point: its link, configuration, profiles and transaction."""

    def __init__(self, front: OcppChargePoints, cp: _Cp) -> None:
        self.front, self.cp, self.clock = front, cp, front.clock
        self.cp_id = cp.spec.cp_id
        spec = cp.spec
        self.config: dict[str, str] = {
            "HeartbeatInterval": "60",
            "MeterValueSampleInterval": "60",
            "MeterValuesSampledData": "Energy.Active.Import.Register",
            FAILSAFE_CURRENT_KEY: f"{spec.failsafe_current_a:g}",
            FAILSAFE_TIMEOUT_KEY: f"{spec.watchdog_s:g}",
        }
        self.readonly: dict[str, str] = {
            MAX_CURRENT_KEY: f"{spec.max_current_a:g}",
            "NumberOfConnectors": "1",
            "ChargingScheduleAllowedChargingRateUnit": "Current",
            "StopTransactionOnInvalidId": "true",
        }
        self.profiles: dict[str, tuple[int, int, float]] = {}  # purpose -> (id, stack level, limit A)
        self.tx_id: int | None = None
        self.tx_car: str | None = None  # the session id of the car the transaction (or refusal) is for
        self.tx_refused = False  # the car's tag was refused, or the central system stopped it
        self.remote_stop = False
        self.boot_needed = True
        self.next_tag: str | None = None
        self.peer: OcppPeer | None = None
        self.ready = asyncio.Event()  # booted on the current connection: heartbeats and meter values may go
        self.changed = asyncio.Event()
        self.triggered: set[str] = set()
        self.last_seen: tuple[str, str] | None = None  # (status, car) at the last poke
        self.status_sent: str | None = None
        self.samples: list[dict[str, str]] = []  # the last MeterValues (repeated while meter_frozen)
        self.backoff = Backoff(
            front.backoff_base_s, front.backoff_max_s, rng=random.Random(front.rng.random())
        )
        self.phase = front.rng.random()  # where in each interval its heartbeats and meter values fall

    # -- state -------------------------------------------------------------------------

    def status(self) -> str:
        now = self.clock.now()
        s = self.front.world.status(self.cp, now, self.front.world.powered(self.cp, now))
        if self.cp.car is not None and not self.cp.authorized and s not in ("Faulted", "Unavailable"):
            return "Finishing" if self.tx_refused else "Preparing"
        return s

    def poke(self) -> None:
        """After a physics step: wake the reporter when the status or the car changed."""
        car = self.cp.car
        seen = (self.status(), car.session_id if car is not None else "")
        if seen != self.last_seen:
            self.last_seen = seen
            self.changed.set()

    def apply_limit(self) -> None:
        """The limit in force from the profiles (none: the fail-safe), capped by the fail-safe if it fired."""
        cp = self.cp
        tx = self.profiles.get("TxProfile")
        default = self.profiles.get("TxDefaultProfile")
        limit = tx[2] if tx is not None and self.tx_id is not None else default[2] if default else None
        base = cp.failsafe_a if limit is None else min(limit, cp.spec.max_current_a)
        if (cap := self.profiles.get("ChargePointMaxProfile")) is not None:
            base = min(base, cap[2])
        cp.limit_a = min(base, cp.failsafe_a) if cp.failsafe else base
        self.front.on_change(cp)

    def lose_profiles(self) -> None:
        """A boot: the profiles are gone and the charger offers its fail-safe current."""
        self.profiles.clear()
        self.boot_needed = True
        self.cp.failsafe = True
        self.apply_limit()

    def interval(self, key: str) -> float:
        """A configured interval in clock seconds, never under the physics' real-time tick."""
        try:
            v = float(self.config[key])
        except ValueError:
            v = 60.0
        return max(v if v > 0 else 3600.0, MIN_REAL_TICK_S * self.clock.speed)

    # -- the link ------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, serve, reconnect after a backoff; away while disconnected or without power."""
        failing = False
        while True:
            if not self._may_connect():
                await self._wait_to_connect()
                continue
            try:
                ws = await connect(
                    f"{self.front.url}/{quote(self.cp_id, safe='')}",
                    subprotocols=[Subprotocol(SUBPROTOCOL)],
                    additional_headers=self.front.headers(self.cp_id),
                    ssl=self.front.ssl,
                    proxy=None,
                    compression=None,
                    open_timeout=self.front.timeout_s,
                    close_timeout=self.front.timeout_s,
                    max_size=self.front.max_bytes,
                )
            except (OSError, InvalidHandshake, InvalidURI, TimeoutError) as exc:
                if not failing:
                    log.warning(
                        "sim_ocpp_connect_failed", cp_id=self.cp_id, error=f"{type(exc).__name__}: {exc}"
                    )
                failing = True
                await asyncio.sleep(self.backoff.next_delay())
                continue
            if failing:
                log.info("sim_ocpp_connected", cp_id=self.cp_id)
            failing = False
            self.backoff.reset()
            try:
                quick = await self._session(ws)
            except Exception:  # a bug in a handler's loop: this charger reconnects, the others go on
                log.exception("sim_ocpp_session_failed", cp_id=self.cp_id)
                quick = False
            if not quick:
                await asyncio.sleep(self.backoff.next_delay())

    def _may_connect(self) -> bool:
        now = self.clock.now()
        return "disconnect" not in self.cp.faults and self.front.world.powered(self.cp, now)

    async def _wait_to_connect(self) -> None:
        """Until the fault is cleared or the power is back (a charger that lost power boots)."""
        if not self.front.world.powered(self.cp, self.clock.now()) and not self.boot_needed:
            self.lose_profiles()
        self.changed.clear()
        await self.changed.wait()

    async def _session(self, ws: ClientConnection) -> bool:
        """Serve one connection until it closes; True when a reconnect should follow at once (reboot)."""
        front = self.front
        peer = OcppPeer(
            self.cp_id,
            ws,
            self._handlers(),
            stats=front.stats,
            refusals=front.refusals,
            timeout_s=front.timeout_s,
            max_bytes=front.max_bytes,
            on_frame=self._fed,
        )
        self.peer = peer
        self.ready = asyncio.Event()
        self.status_sent = None
        name = f"{front.service_name}[{self.cp_id}]"
        try:
            async with asyncio.TaskGroup() as tg:
                loops = [
                    tg.create_task(self._guard(peer, self._report(peer)), name=f"{name}.report"),
                    tg.create_task(
                        self._guard(
                            peer, self._every("MeterValueSampleInterval", lambda: self._send_meter(peer))
                        ),
                        name=f"{name}.meter",
                    ),
                    tg.create_task(
                        self._guard(
                            peer, self._every("HeartbeatInterval", lambda: peer.request(call.Heartbeat()))
                        ),
                        name=f"{name}.heartbeat",
                    ),
                ]
                await peer.serve()
                for task in loops:
                    task.cancel()
        finally:
            self.peer = None
            await peer.close("session ended")
        return self.boot_needed and "disconnect" not in self.cp.faults

    def _fed(self) -> None:
        self.cp.last_feed = self.clock.now()  # any message from the central system feeds the watchdog

    async def _guard(self, peer: OcppPeer, loop: Coroutine[Any, Any, None]) -> None:
        """A loop of the session; an unanswered or failed request ends the connection, not the simulator."""
        try:
            await loop
        except DeviceError as exc:
            if not peer.closed:
                log.info("sim_ocpp_request_failed", cp_id=self.cp_id, error=str(exc))
                await peer.close(f"request failed: {exc}")

    async def _report(self, peer: OcppPeer) -> None:
        """Boot if need be, then status, transactions and triggered messages as they change."""
        while self.boot_needed and not await self._boot(peer):
            await self.clock.sleep(max(10.0, self.interval("HeartbeatInterval")))
        self.ready.set()
        while True:
            self.changed.clear()  # before the sync: a change while it talks is seen at the next one
            await self._sync(peer)
            await self.changed.wait()

    async def _boot(self, peer: OcppPeer) -> bool:
        """A BootNotification; True once accepted."""
        boot = await peer.request(
            call.BootNotification(charge_point_model="LP-T2", charge_point_vendor="DOS Edge Sim")
        )
        self.front.stats.boots += 1
        if boot.interval > 0:
            self.config["HeartbeatInterval"] = str(boot.interval)
        if boot.status == "Accepted":
            self.boot_needed = False
        return not self.boot_needed

    async def _sync(self, peer: OcppPeer) -> None:
        if not self._may_connect():
            await peer.close("power lost" if "disconnect" not in self.cp.faults else "disconnected")
            return
        triggered, self.triggered = self.triggered, set()
        if "BootNotification" in triggered:
            await self._boot(peer)
        if "Heartbeat" in triggered:
            await peer.request(call.Heartbeat())
        await self._transactions(peer)
        status = self.status()
        if status != self.status_sent or "StatusNotification" in triggered:
            error = "OtherError" if status == "Faulted" else "NoError"
            await peer.request(
                call.StatusNotification(
                    connector_id=CONNECTOR, error_code=error, status=status, timestamp=iso(self.clock.now())
                )
            )
            self.status_sent = status
        if "MeterValues" in triggered:
            await self._send_meter(peer)

    async def _transactions(self, peer: OcppPeer) -> None:
        cp, car = self.cp, self.cp.car
        session = car.session_id if car is not None else None
        meter = round(cp.meter_kwh * 1000.0)
        if self.tx_id is not None and (session != self.tx_car or self.remote_stop):
            reason = "Remote" if self.remote_stop else "EVDisconnected"
            tx, self.tx_id, self.remote_stop = self.tx_id, None, False
            self.tx_refused = session == self.tx_car  # stopped by the central system: the car stays, unserved
            cp.authorized = False
            self.profiles.pop("TxProfile", None)
            self.apply_limit()
            await peer.request(
                call.StopTransaction(
                    meter_stop=meter, timestamp=iso(self.clock.now()), transaction_id=tx, reason=reason
                )
            )
        if car is not None and session != self.tx_car:
            self.tx_car, self.tx_refused = session, False
            tag, self.next_tag = self.next_tag or self.front.id_tag(), None
            start = await peer.request(
                call.StartTransaction(
                    connector_id=CONNECTOR, id_tag=tag, meter_start=meter, timestamp=iso(self.clock.now())
                )
            )
            if start.id_tag_info.get("status") == "Accepted":
                self.tx_id = start.transaction_id
                cp.authorized = cp.car is car  # a car gone meanwhile: stopped at the next sync
            else:
                self.tx_refused = True
                log.info(
                    "sim_ocpp_tag_refused",
                    cp_id=self.cp_id,
                    id_tag=tag,
                    status=start.id_tag_info.get("status"),
                )
            self.apply_limit()
        if car is None:
            self.tx_car, self.tx_refused = None, False

    async def _every(self, key: str, send: Callable[[], Awaitable[Any]]) -> None:
        """`send` every `key` seconds from a phase of the charger's own (chargers boot at different
        times, they do not report in step), on a schedule: a slow answer does not stretch the period."""
        await self.ready.wait()
        due = self.clock.now() + self.phase * self.interval(key)
        while True:
            await self.clock.sleep(max(0.0, due - self.clock.now()))
            await send()
            due = max(due + self.interval(key), self.clock.now())  # behind: once now, no burst

    async def _send_meter(self, peer: OcppPeer) -> None:
        measurands = {m.strip() for m in self.config["MeterValuesSampledData"].split(",")}
        if "meter_frozen" not in self.cp.faults or not self.samples:
            self.samples = sampled_values(self.front.world.values(self.cp, self.clock.now()), measurands)
        entry = {"timestamp": iso(self.clock.now()), "sampledValue": self.samples}
        await peer.request(
            call.MeterValues(connector_id=CONNECTOR, meter_value=[entry], transaction_id=self.tx_id)
        )

    # -- what the central system asks ------------------------------------------------------

    def _handlers(self) -> dict[str, Handler]:
        return {
            "SetChargingProfile": self.on_set_profile,
            "ClearChargingProfile": self.on_clear_profile,
            "ChangeConfiguration": self.on_change_configuration,
            "GetConfiguration": self.on_get_configuration,
            "TriggerMessage": self.on_trigger,
            "RemoteStopTransaction": self.on_remote_stop,
        }

    async def on_set_profile(self, connector_id: int, cs_charging_profiles: dict[str, Any], **_: Any) -> Any:
        prof = cs_charging_profiles
        schedule = prof["charging_schedule"]
        periods = sorted(schedule["charging_schedule_period"], key=lambda p: p["start_period"])
        purpose = prof["charging_profile_purpose"]
        refused = (
            "reject_profile" in self.cp.faults
            or connector_id not in (0, CONNECTOR)
            or schedule["charging_rate_unit"] != "A"
            or (
                purpose == "TxProfile"
                and (self.tx_id is None or prof.get("transaction_id") not in (None, self.tx_id))
            )
        )
        if refused:
            return call_result.SetChargingProfile(status="Rejected")
        limit = float(periods[0]["limit"])
        self.profiles[purpose] = (int(prof["charging_profile_id"]), int(prof["stack_level"]), limit)
        if self.cp.failsafe:
            log.info("sim_failsafe_cleared", cp_id=self.cp_id)
        self.cp.failsafe = False  # a setpoint ends the watchdog's fall-back
        self.apply_limit()
        return call_result.SetChargingProfile(status="Accepted")

    async def on_clear_profile(
        self,
        id: int | None = None,  # the OCPP field's name
        charging_profile_purpose: str | None = None,
        stack_level: int | None = None,
        **_: Any,
    ) -> Any:
        gone = [
            purpose
            for purpose, (pid, level, _limit) in self.profiles.items()
            if (id is None or id == pid)
            and (charging_profile_purpose in (None, purpose))
            and (stack_level in (None, level))
        ]
        for purpose in gone:
            del self.profiles[purpose]
        self.apply_limit()
        return call_result.ClearChargingProfile(status="Accepted" if gone else "Unknown")

    async def on_change_configuration(self, key: str, value: str, **_: Any) -> Any:
        if key in self.readonly:
            return call_result.ChangeConfiguration(status="Rejected")
        if key not in self.config:
            return call_result.ChangeConfiguration(status="NotSupported")
        if not self._valid(key, value):
            return call_result.ChangeConfiguration(status="Rejected")
        self.config[key] = value
        if key == FAILSAFE_CURRENT_KEY:
            self.cp.failsafe_a = float(value)
            self.apply_limit()
        elif key == FAILSAFE_TIMEOUT_KEY:
            self.cp.watchdog_s = float(value)
        return call_result.ChangeConfiguration(status="Accepted")

    def _valid(self, key: str, value: str) -> bool:
        if key == "MeterValuesSampledData":
            return all(m.strip() in _MEASURANDS for m in value.split(","))
        try:
            v = float(value)
        except ValueError:
            return False
        if key == FAILSAFE_CURRENT_KEY:  # IEC 61851: 0, or at least 6 A up to the charger's maximum
            return v == 0 or MIN_CHARGE_CURRENT_A <= v <= self.cp.spec.max_current_a
        return v >= 0 and (key == FAILSAFE_TIMEOUT_KEY or v == int(v))

    async def on_get_configuration(self, key: list[str] | None = None, **_: Any) -> Any:
        every = {**self.config, **self.readonly}
        wanted = key or list(every)
        known = [{"key": k, "readonly": k in self.readonly, "value": every[k]} for k in wanted if k in every]
        unknown = [k for k in wanted if k not in every]
        return call_result.GetConfiguration(configuration_key=known, unknown_key=unknown or None)

    async def on_trigger(self, requested_message: str, **_: Any) -> Any:
        if requested_message not in _TRIGGERABLE:
            return call_result.TriggerMessage(status="NotImplemented")
        self.triggered.add(requested_message)  # sent by the reporter, after this answer
        self.changed.set()
        return call_result.TriggerMessage(status="Accepted")

    async def on_remote_stop(self, transaction_id: int, **_: Any) -> Any:
        if self.tx_id is None or transaction_id != self.tx_id:
            return call_result.RemoteStopTransaction(status="Rejected")
        self.remote_stop = True
        self.changed.set()
        return call_result.RemoteStopTransaction(status="Accepted")


class OcppChargePoints(Service):
    """The OCPP charge points of a `ChargingSimulator`, each a client of the central system at `url`.

    `on_change(cp)` is the simulator's: it steps the charger's physics after a profile changed its
    limit and refreshes what the simulator shows. `passwords` per charge point (else `password`)
    for HTTP Basic auth; `ca_file` the certificate a wss:// central system is checked against.
    """

    service_name = "charging_sim.ocpp"

    def __init__(
        self,
        world: ChargingPhysics,
        cps: Sequence[_Cp],
        clock: Clock,
        url: str,
        on_change: Callable[[_Cp], None],
        *,
        password: str | None = None,
        passwords: Mapping[str, str] | None = None,
        ca_file: Path | None = None,
        id_tags: Sequence[str] = (DEFAULT_ID_TAG,),
        timeout_s: float = 5.0,
        backoff_base_s: float = 0.1,
        backoff_max_s: float = 10.0,
        max_bytes: int = 65_536,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not url.startswith(("ws://", "wss://")):
            raise ValueError(f"central system URL must be ws:// or wss://, got {url!r}")
        if not id_tags:
            raise ValueError("the cars need at least one idTag")
        self.world, self.clock, self.url = world, clock, url.rstrip("/")
        self.on_change = on_change
        self._password, self._passwords = password, dict(passwords or {})
        self.ssl = ssl.create_default_context(cafile=ca_file) if url.startswith("wss://") else None
        self.id_tags = tuple(id_tags)
        self.timeout_s, self.max_bytes = timeout_s, max_bytes
        self.backoff_base_s, self.backoff_max_s = backoff_base_s, backoff_max_s
        self.rng = random.Random(seed)
        self.stats = OcppStats()
        self.refusals = Refusals("sim_ocpp")
        self.points = {cp.spec.cp_id: _Point(self, cp) for cp in cps}
        quiet_websockets()

    async def _start(self) -> None:
        for cp_id, point in self.points.items():
            self.spawn(point.run(), f"point[{cp_id}]")

    def headers(self, cp_id: str) -> dict[str, str]:
        password = self._passwords.get(cp_id, self._password)
        return {} if password is None else {"Authorization": build_authorization_basic(cp_id, password)}

    def id_tag(self) -> str:
        """The idTag of a car that arrives on its own (a random one of `id_tags`)."""
        return self.rng.choice(self.id_tags)

    def poke(self, cp_id: str) -> None:
        """The simulator stepped the charger's physics: report what changed."""
        self.points[cp_id].poke()

    def connected(self, cp_id: str) -> bool:
        """Whether the charge point has an open link to the central system (booted or not)."""
        peer = self.points[cp_id].peer
        return peer is not None and not peer.closed

    def set_id_tag(self, cp_id: str, tag: str) -> None:
        """The idTag the next car at `cp_id` presents."""
        self.points[cp_id].next_tag = tag

    async def fault(self, cp_id: str, fault: str, *, active: bool) -> None:
        """Act on a fault the simulator recorded in the charger's `faults` ("reboot": at once)."""
        point = self.points[cp_id]
        if fault == "reboot" and active:
            point.lose_profiles()
            if point.peer is not None:
                await point.peer.close("reboot")
        elif fault == "disconnect" and active and point.peer is not None:
            await point.peer.close("disconnected", abort=True)
        point.last_seen = None
        point.changed.set()
