"""OCPP 1.6J central system for charge points: the daemon as the chargers' server, setpoints confirmed.

Charge points connect to ws(s)://host:port/ocpp/{cp_id} (`devices.protocols.ocpp` checks the
handshake and decodes every frame). After a BootNotification (or on a reconnect of a charger that
booted before) the central system pushes HeartbeatInterval, MeterValueSampleInterval,
MeterValuesSampledData and the vendor keys of the charger's own fail-safe
(devices/profiles/charging_ocpp.py), reads them back and publishes `failsafe_current_a`,
`watchdog_s` and `max_current_a`, re-sends the last setpoint (a reboot loses the charging
profiles), and the charge point is online (`Availability`, one endpoint per charge point).
Telemetry has the point names of the OPC UA profile: controller and interlock see no difference.

A setpoint (`write`, `current_limit_a`) is a SetChargingProfile: a TxProfile while a transaction
runs, else a TxDefaultProfile on connector 1. It is confirmed only when the charger answers
Accepted AND the next MeterValues (asked for with TriggerMessage) reports Current.Offered at the
setpoint (+-0.05 A): the read-back of this protocol.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from functools import partial
from typing import Any

import structlog
from ocpp.v16 import call, call_result
from ocpp.v16.datatypes import IdTagInfo
from websockets.asyncio.server import Server, ServerConnection

from devices.profiles.charging import MIN_CHARGE_CURRENT_A, default_profile
from devices.profiles.charging_ocpp import (
    CONNECTED_STATUSES,
    CONNECTOR,
    FAILSAFE_CURRENT_KEY,
    FAILSAFE_TIMEOUT_KEY,
    MAX_CURRENT_KEY,
    NOT_REPORTED,
    SAMPLED_DATA,
    TX_PROFILE_ID,
    number,
    point_status,
    read_meter_values,
    set_charging_profile,
)
from devices.protocols.link import Presence, wait_for_event
from devices.protocols.ocpp import (
    Handler,
    Handshake,
    OcppPeer,
    OcppSecurity,
    OcppStats,
    iso,
    listen,
    quiet_websockets,
)
from edge.clock import Clock
from edge.decode import Refusals, is_id
from edge.errors import ConfigError, DeviceError, DeviceReplyError, DeviceTimeout, DeviceUnavailable
from edge.events import Event, Telemetry, Value
from edge.lifecycle import Service, ServiceState
from edge.tasks import cancel_and_wait

__all__ = ["OcppCentralSystem", "OcppSecurity", "OcppStats"]

log = structlog.get_logger(__name__)

OFFERED_TOLERANCE_A = 0.05  # Current.Offered this close to the setpoint confirms it
_PROFILE_STEP_A = 0.1  # the OCPP 1.6 schema: a limit is a multiple of 0.1


class _Link:
    """One websocket connection of a charge point: its peer, its jobs, the writes waiting on it."""

    peer: OcppPeer  # made once the link's handlers exist

    def __init__(self) -> None:
        self.booted = asyncio.Event()  # a BootNotification came over this connection
        self.setup_begun = False
        self.setup_queued = False  # one set-up waiting at most, however often a charger boots
        self.jobs: asyncio.Queue[tuple[str, Callable[[], Awaitable[None]]]] = asyncio.Queue()
        self.offered: list[asyncio.Future[float]] = []  # writes waiting for Current.Offered

    def offer(self, amps: float) -> None:
        waiting, self.offered = self.offered, []
        for fut in waiting:
            if not fut.done():
                fut.set_result(amps)

    def fail(self, reason: str) -> None:
        waiting, self.offered = self.offered, []
        for fut in waiting:
            if not fut.done():
                fut.set_exception(DeviceUnavailable(reason, endpoint=self.peer.name))


class _Station:
    """One charge point as the central system knows it, across its connections; its inbound handlers."""

    def __init__(self, cs: OcppCentralSystem, cp_id: str) -> None:
        self.cs = cs
        self.cp_id = cp_id
        self.log = log.bind(cp_id=cp_id)
        self.presence = Presence(cs, cp_id, (cp_id,), "ocpp_charge_point", self.log)
        self.link: _Link | None = None
        self.booted_ever = False
        self.setpoint: float | None = None  # the last one asked for: re-sent after a boot
        self.tx_id: int | None = None
        self.meter_start_wh: float | None = None
        self.max_current = cs.max_current.get(cp_id)
        self.failsafe_read: float | None = None
        self.early: dict[str, Value] = {}  # read before the station is online, published then

    def handlers(self, link: _Link) -> dict[str, Handler]:
        """The actions a charge point may call, for the connection `link`."""
        return {
            "BootNotification": partial(self.on_boot, link),
            "Heartbeat": self.on_heartbeat,
            "StatusNotification": self.on_status,
            "MeterValues": partial(self.on_meter_values, link),
            "StartTransaction": self.on_start,
            "StopTransaction": partial(self.on_stop, link),
            "Authorize": self.on_authorize,
        }

    def report(self, values: Mapping[str, Value]) -> None:
        """Telemetry now, or once online (a reading marks a device online in the state store)."""
        if not values:
            return
        if self.presence.online:
            self.cs.publish(Telemetry(self.cp_id, self.cs.clock.now(), dict(values)))
        else:
            self.early.update(values)

    def online(self) -> None:
        self.presence.set(True)
        early, self.early = {**NOT_REPORTED, **self.early}, {}
        self.report(early)

    def offline(self, reason: str) -> None:
        self.early.clear()
        self.presence.set(False, reason=reason)

    # -- from the charge point -------------------------------------------------------

    async def on_boot(self, link: _Link, **_: Any) -> Any:
        self.cs.stats.boots += 1
        self.booted_ever = True
        link.booted.set()
        if link.setup_begun:  # booted again on a connection already set up: configure it afresh
            self.cs.queue_setup(self, link)
        self.log.info("ocpp_boot")
        return call_result.BootNotification(
            current_time=iso(self.cs.clock.now()),
            interval=int(self.cs.heartbeat_interval_s),
            status="Accepted",
        )

    async def on_heartbeat(self, **_: Any) -> Any:
        return call_result.Heartbeat(current_time=iso(self.cs.clock.now()))

    async def on_status(self, connector_id: int, status: str, error_code: str, **_: Any) -> Any:
        if connector_id == CONNECTOR or (connector_id == 0 and status in ("Faulted", "Unavailable")):
            self.report({"status": point_status(status), "car_connected": status in CONNECTED_STATUSES})
        if error_code != "NoError":
            self.log.info(
                "ocpp_connector_error", connector=connector_id, status=status, error_code=error_code
            )
        return call_result.StatusNotification()

    async def on_meter_values(self, link: _Link, connector_id: int, meter_value: list[Any], **_: Any) -> Any:
        if connector_id == CONNECTOR:
            reading = read_meter_values(meter_value, self.meter_start_wh if self.tx_id is not None else None)
            self.report(reading.values)
            if reading.offered_a is not None:
                link.offer(reading.offered_a)
        return call_result.MeterValues()

    async def on_start(self, connector_id: int, id_tag: str, meter_start: int, **_: Any) -> Any:
        tx_id = self.cs.next_transaction_id()
        status = self.cs.authorize(id_tag)
        if status == "Accepted":
            self.tx_id, self.meter_start_wh = tx_id, float(meter_start)
            self.report({"session_id": str(tx_id), "session_energy_kwh": 0.0})
        self.log.info("ocpp_transaction_start", connector=connector_id, transaction_id=tx_id, status=status)
        return call_result.StartTransaction(transaction_id=tx_id, id_tag_info=IdTagInfo(status=status))

    async def on_stop(
        self, link: _Link, transaction_id: int, meter_stop: int, reason: str | None = None, **_: Any
    ) -> Any:
        if transaction_id == self.tx_id:
            start = self.meter_start_wh or 0.0
            self.report(
                {
                    "session_id": "",
                    "session_energy_kwh": round(max(0.0, meter_stop - start) / 1000.0, 3),
                    "meter_energy_kwh": round(meter_stop / 1000.0, 3),
                }
            )
            self.tx_id = self.meter_start_wh = None
            # the TxProfile is gone: the next car meets the TxDefault
            self.cs.queue_after_transaction(self, link)
        self.log.info("ocpp_transaction_stop", transaction_id=transaction_id, reason=reason or "Local")
        return call_result.StopTransaction(id_tag_info=IdTagInfo(status="Accepted"))

    async def on_authorize(self, id_tag: str, **_: Any) -> Any:
        return call_result.Authorize(id_tag_info=IdTagInfo(status=self.cs.authorize(id_tag)))


class OcppCentralSystem(Service):
    """OCPP 1.6J central system for `charge_points`; an async context manager that owns its server.

    Timeouts are real seconds; `heartbeat_interval_s`, `meter_interval_s` and
    `failsafe_timeout_s` are clock seconds (they configure the chargers, which count on their
    clock). `failsafe` maps charge points to the fail-safe current written to them at every
    connect (others keep their own). `max_current` (the inventory's maxima) bounds setpoints
    until a charger reports its own `DosEdgeMaxCurrent`. `id_tags` is the local authorisation
    list (empty: every tag is accepted, the chargers authorise on their own). `on_late` hears
    how late (real seconds) the central system's periodic check ran: a late loop answers the
    chargers late, and their watchdogs may fire.
    """

    service_name = "ocpp"

    def __init__(
        self,
        charge_points: Sequence[str],
        publish: Callable[[Event], None],
        clock: Clock,
        *,
        security: OcppSecurity,
        host: str = "127.0.0.1",
        port: int = 0,
        path: str = "/ocpp",
        timeout_s: float = 5.0,
        heartbeat_interval_s: float = 60.0,
        meter_interval_s: float = 60.0,
        failsafe: Mapping[str, float] | None = None,
        failsafe_timeout_s: float = 120.0,
        max_current: Mapping[str, float] | None = None,
        id_tags: Collection[str] = (),
        max_message_bytes: int = 65_536,
        on_late: Callable[[float], None] | None = None,
    ) -> None:
        super().__init__()
        self.publish, self.clock, self.security, self.on_late = publish, clock, security, on_late
        self.host, self.port, self.path = host, port, "/" + path.strip("/")
        self.timeout_s, self.max_message_bytes = timeout_s, max_message_bytes
        self.heartbeat_interval_s, self.meter_interval_s = heartbeat_interval_s, meter_interval_s
        self.failsafe: Mapping[str, float] = dict(failsafe or {})
        self.failsafe_timeout_s = failsafe_timeout_s
        self.max_current: Mapping[str, float] = dict(max_current or {})
        self.id_tags = frozenset(id_tags)
        self.stats = OcppStats()
        self.refusals = Refusals("ocpp")
        self._check(charge_points)
        security.check_charge_points(charge_points)
        self._stations = {cp: _Station(self, cp) for cp in charge_points}
        self._server: Server | None = None
        self._tx_seq = int(clock.now()) % 1_000_000 * 1000  # unique enough across restarts, int32
        quiet_websockets()
        if not self.id_tags:
            log.info("ocpp_no_local_list", note="every idTag is accepted")

    def _check(self, charge_points: Sequence[str]) -> None:
        """ConfigError naming the first setting that cannot work."""
        if len(set(charge_points)) != len(charge_points):
            raise ConfigError("a charge point appears twice", key="charge_points")
        for cp in charge_points:
            if not is_id(cp):
                raise ConfigError(f"charge point id {cp!r} breaks the id grammar", key="charge_points")
        for key, v in (("timeout_s", self.timeout_s), ("heartbeat_interval_s", self.heartbeat_interval_s),
                       ("meter_interval_s", self.meter_interval_s)):  # fmt: skip
            if not v > 0:
                raise ConfigError(f"must be positive, got {v}", key=key)
        if self.failsafe_timeout_s < 0:
            raise ConfigError("must be 0 (off) or positive", key="failsafe_timeout_s")
        if self.failsafe_timeout_s and self.heartbeat_interval_s * 2 > self.failsafe_timeout_s:
            # a charger hears from us in answer to its heartbeats: two must fit in its watchdog
            raise ConfigError(
                f"{self.heartbeat_interval_s:g} s is more than half the fail-safe timeout "
                f"({self.failsafe_timeout_s:g} s): the chargers' watchdogs would fire",
                key="heartbeat_interval_s",
            )
        for cp, a in self.failsafe.items():
            if cp not in charge_points:
                raise ConfigError(f"fail-safe for unknown charge point {cp!r}", key="failsafe")
            if a < 0 or 0 < a < MIN_CHARGE_CURRENT_A:
                raise ConfigError(f"{cp}: {a:g} A is not 0 or at least 6 A (IEC 61851)", key="failsafe")

    # -- lifecycle ---------------------------------------------------------------------

    async def _start(self) -> None:
        self._server = await listen(
            self._connection,
            self.host,
            self.port,
            Handshake(self.path, self._stations, self.security, self.stats, Refusals("ocpp_handshake")),
            timeout_s=self.timeout_s,
            max_bytes=self.max_message_bytes,
        )
        self.port = next(iter(self._server.sockets)).getsockname()[1]
        if self.on_late is not None:
            self.spawn(self._lateness(), "lateness")
        log.info(
            "ocpp_listening", url=self.url, profile=self.security.profile, charge_points=len(self._stations)
        )

    async def _stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            try:
                async with asyncio.timeout(self.timeout_s * 2):
                    await server.wait_closed()
            except TimeoutError:
                log.warning("ocpp_close_timed_out")

    @property
    def url(self) -> str:
        """Where charge points connect, without their id (ws://127.0.0.1:PORT/ocpp)."""
        return f"{self.security.scheme}://{self.host}:{self.port}{self.path}"

    async def _lateness(self) -> None:
        """How late this loop wakes, in real seconds, for `on_late` (the chargers wait on our answers)."""
        period = self.heartbeat_interval_s
        if self.failsafe_timeout_s:
            period = min(period, self.failsafe_timeout_s / 3)
        while True:
            due = self.clock.now() + period
            await self.clock.sleep(period)
            if self.on_late is not None:
                self.on_late(max(0.0, self.clock.now() - due) / self.clock.speed)

    # -- connections -------------------------------------------------------------------

    async def _connection(self, ws: ServerConnection) -> None:
        """One accepted connection (the handshake named its charge point): serve it until it closes."""
        st = self._stations[ws.username]
        link = _Link()
        link.peer = OcppPeer(
            st.cp_id,
            ws,
            st.handlers(link),
            stats=self.stats,
            refusals=self.refusals,
            timeout_s=self.timeout_s,
            max_bytes=self.max_message_bytes,
        )
        old, st.link = st.link, link
        self.stats.connections += 1
        if old is not None:  # the charger has given the old socket up: no closing handshake to wait for
            await old.peer.close("replaced by a new connection", abort=True)
        st.log.info("ocpp_connected", replaced=old is not None)
        self.queue_setup(st, link)
        worker = asyncio.create_task(self._work(st, link), name=f"{self.service_name}.jobs[{st.cp_id}]")
        try:
            await link.peer.serve()
        finally:
            await cancel_and_wait([worker])
            reason = link.peer.close_reason or "connection closed"
            link.fail(reason)
            if st.link is link:
                st.link = None
                if self.state is ServiceState.OPENED:  # not at our own shutdown: 680 lines of noise
                    st.offline(reason)

    async def _work(self, st: _Station, link: _Link) -> None:
        """The connection's jobs (set-up, after a transaction), one at a time, beside its reader."""
        while True:
            name, job = await link.jobs.get()
            try:
                await job()
            except DeviceError as exc:
                st.log.warning("ocpp_job_failed", job=name, error=str(exc))
                if name == "setup":  # a charger we could not configure is not online: it reconnects
                    await link.peer.close(f"set-up failed: {exc}")
                    return

    def queue_setup(self, st: _Station, link: _Link) -> None:
        if not link.setup_queued:
            link.setup_queued = True
            link.jobs.put_nowait(("setup", lambda: self._set_up(st, link)))

    def queue_after_transaction(self, st: _Station, link: _Link) -> None:
        link.jobs.put_nowait(("after_transaction", lambda: self._after_transaction(st, link)))

    async def _set_up(self, st: _Station, link: _Link) -> None:
        """Boot (waited for, or asked for), configuration pushed and read back, setpoint re-sent: online."""
        link.setup_queued = False
        if not st.booted_ever:  # a charger we never saw boot (we restarted): wait, then ask for it
            await wait_for_event(link.booted, self.timeout_s)
            if not link.booted.is_set():
                await link.peer.request(call.TriggerMessage(requested_message="BootNotification"))
                await wait_for_event(link.booted, self.timeout_s)
            if not link.booted.is_set():
                raise DeviceTimeout("no BootNotification", endpoint=st.cp_id)
        link.setup_begun = True
        await self._configure(st, link)
        if (
            st.setpoint is not None
            and (status := await self._send_setpoint(st, link, st.setpoint)) != "Accepted"
        ):
            st.log.warning("ocpp_setpoint_not_restored", limit_a=st.setpoint, status=status)
        if st.link is link:
            st.online()

    async def _send_setpoint(self, st: _Station, link: _Link, limit: float) -> str:
        """SetChargingProfile: the transaction's TxProfile, else (none, or refused: the charger may not
        have our answer to its StartTransaction yet) the TxDefaultProfile. The charger's answer."""
        ack = await link.peer.request(set_charging_profile(limit, st.tx_id))
        if ack.status != "Accepted" and st.tx_id is not None:
            ack = await link.peer.request(set_charging_profile(limit, None))
        return str(ack.status)

    async def _configure(self, st: _Station, link: _Link) -> None:
        """Push the intervals, the sampled data and the fail-safe keys; read the vendor keys back."""
        changes = [
            ("HeartbeatInterval", f"{round(self.heartbeat_interval_s)}"),
            ("MeterValueSampleInterval", f"{round(self.meter_interval_s)}"),
            ("MeterValuesSampledData", ",".join(SAMPLED_DATA)),
            (FAILSAFE_TIMEOUT_KEY, f"{round(self.failsafe_timeout_s)}"),
        ]
        want = self.failsafe.get(st.cp_id)
        if want is not None:
            changes.append((FAILSAFE_CURRENT_KEY, f"{want:g}"))
        for key, value in changes:
            ack = await link.peer.request(call.ChangeConfiguration(key=key, value=value))
            if ack.status not in ("Accepted", "RebootRequired"):
                st.log.warning("ocpp_configuration_refused", key=key, value=value, status=ack.status)
        conf = await link.peer.request(
            call.GetConfiguration(key=[FAILSAFE_CURRENT_KEY, FAILSAFE_TIMEOUT_KEY, MAX_CURRENT_KEY])
        )
        read = {
            str(k.get("key")): number(k.get("value"))
            for k in conf.configuration_key or []
            if isinstance(k, dict)
        }
        values: dict[str, Value] = {}
        for key, point in (
            (FAILSAFE_CURRENT_KEY, "failsafe_current_a"),
            (FAILSAFE_TIMEOUT_KEY, "watchdog_s"),
        ):
            if (v := read.get(key)) is not None:
                values[point] = v
        if (mx := read.get(MAX_CURRENT_KEY)) is not None:
            st.max_current = mx
        if st.max_current is not None:
            values["max_current_a"] = st.max_current
        st.failsafe_read = read.get(FAILSAFE_CURRENT_KEY)
        if want is not None and (st.failsafe_read is None or st.failsafe_read > want + OFFERED_TOLERANCE_A):
            st.log.error("ocpp_failsafe_mismatch", configured_a=want, read_back_a=st.failsafe_read)
        st.report(values)

    async def _after_transaction(self, st: _Station, link: _Link) -> None:
        """Clear what is left of the transaction's profile; the TxDefault holds the last setpoint."""
        await link.peer.request(call.ClearChargingProfile(id=TX_PROFILE_ID))
        if st.setpoint is not None:
            await self._send_setpoint(st, link, st.setpoint)

    # -- the daemon's side -------------------------------------------------------------

    def handles(self, device_id: str) -> bool:
        """Whether `device_id` is one of our charge points."""
        return device_id in self._stations

    def online(self, cp_id: str) -> bool | None:
        """Whether the charge point is connected and set up (None before its first connection ended)."""
        st = self._stations.get(cp_id)
        return None if st is None else st.presence.online

    def failsafe_read_a(self, cp_id: str) -> float | None:
        """The charger's fail-safe current as last read back (None before the first read)."""
        st = self._stations.get(cp_id)
        return None if st is None else st.failsafe_read

    def max_current_a(self, cp_id: str) -> float | None:
        """The charger's maximum: its own DosEdgeMaxCurrent, else the inventory's (None: neither)."""
        st = self._stations.get(cp_id)
        return None if st is None else st.max_current

    def next_transaction_id(self) -> int:
        self._tx_seq = (self._tx_seq + 1) % 2_147_483_647
        return self._tx_seq

    def authorize(self, id_tag: str) -> str:
        """ "Accepted" for a tag on the local list (or any tag without one), else "Invalid"."""
        return "Accepted" if not self.id_tags or id_tag in self.id_tags else "Invalid"

    def _setpoint(self, st: _Station, point: str, value: float) -> float:
        """The limit to send for `value`, or DeviceReplyError before anything is sent."""
        if point != "current_limit_a":
            raise DeviceReplyError(f"{point!r} is not a writable point", endpoint=st.cp_id)
        try:
            checked = float(default_profile().point(point).check(value))
        except (TypeError, ValueError) as exc:
            raise DeviceReplyError(f"{st.cp_id}.{point}: {exc}", endpoint=st.cp_id) from exc
        if st.max_current is not None and checked > st.max_current:
            raise DeviceReplyError(
                f"{st.cp_id}.{point}: {checked} A is above the charger's {st.max_current} A",
                endpoint=st.cp_id,
            )
        if 0 < checked < MIN_CHARGE_CURRENT_A:
            raise DeviceReplyError(
                f"{st.cp_id}.{point}: {checked} A: IEC 61851 allows 0 or at least 6 A", endpoint=st.cp_id
            )
        return round(math.floor(checked / _PROFILE_STEP_A + 1e-6) * _PROFILE_STEP_A, 1)  # never above the ask

    def _station(self, cp_id: str) -> _Station:
        st = self._stations.get(cp_id)
        if st is None:
            raise DeviceUnavailable(f"{cp_id!r} is not handled by this central system")
        return st

    async def _ready(self, st: _Station, timeout: float) -> _Link:  # noqa: ASYNC109
        """The station's link once online, waiting at most `timeout` (a charger reconnecting)."""
        if not st.presence.online or st.link is None:
            await st.presence.wait_up(timeout)
        link = st.link
        if not st.presence.online or link is None or link.peer.closed:
            raise DeviceUnavailable("charge point not connected", endpoint=st.cp_id)
        return link

    async def write(self, device_id: str, point: str, value: float, timeout: float) -> float:  # noqa: ASYNC109
        """Set the charger's current limit; return Current.Offered from its next MeterValues.

        Range (0..its maximum, 0 or at least 6 A) is checked before anything is sent
        (DeviceReplyError). Rejected, or a Current.Offered off the setpoint: DeviceReplyError;
        no answer or no MeterValues within `timeout` real seconds: DeviceTimeout; not connected
        within `timeout`: DeviceUnavailable.
        """
        st = self._station(device_id)
        limit = self._setpoint(st, point, value)
        if self.state is not ServiceState.OPENED:
            raise DeviceUnavailable("central system is not running", endpoint=device_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        st.setpoint = limit  # the latest ask: a charger that reboots gets it again
        self.stats.writes += 1
        try:
            link = await self._ready(st, timeout)
            async with asyncio.timeout_at(deadline):  # every request of the write within its timeout
                return await self._apply(st, link, limit)
        except TimeoutError as exc:
            self.stats.write_errors += 1
            raise DeviceTimeout(f"{device_id}: {limit:g} A not confirmed within {timeout} s") from exc
        except DeviceError:
            self.stats.write_errors += 1
            raise

    async def _apply(self, st: _Station, link: _Link, limit: float) -> float:
        if (status := await self._send_setpoint(st, link, limit)) != "Accepted":
            raise DeviceReplyError(f"{st.cp_id}: SetChargingProfile {status}", endpoint=st.cp_id)
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        link.offered.append(fut)
        try:
            trig = await link.peer.request(
                call.TriggerMessage(requested_message="MeterValues", connector_id=CONNECTOR)
            )
            status = str(trig.status)
        except DeviceReplyError as exc:  # a CALLERROR: no TriggerMessage there
            status = str(exc)
        if status != "Accepted":  # then the next periodic MeterValues has to do
            st.log.debug("ocpp_trigger_refused", status=status)
        offered = await fut
        if abs(offered - limit) > OFFERED_TOLERANCE_A:
            raise DeviceReplyError(
                f"{st.cp_id}: Current.Offered reads {offered:g} A after a setpoint of {limit:g} A",
                endpoint=st.cp_id,
            )
        return offered

    async def remote_stop(self, cp_id: str, timeout: float) -> bool:  # noqa: ASYNC109
        """Stop the running transaction (an operator's pause): True if the charger accepted it."""
        st = self._station(cp_id)
        if st.tx_id is None:
            return False
        link = await self._ready(st, timeout)
        ack = await link.peer.request(call.RemoteStopTransaction(transaction_id=st.tx_id), timeout)
        return bool(ack.status == "Accepted")

    async def clear_profile(self, cp_id: str, timeout: float) -> bool:  # noqa: ASYNC109
        """Clear every charging profile of the connector (an operator's clear; the charger falls back
        to its fail-safe current) and forget the setpoint: True if the charger cleared one."""
        st = self._station(cp_id)
        link = await self._ready(st, timeout)
        st.setpoint = None
        ack = await link.peer.request(call.ClearChargingProfile(connector_id=CONNECTOR), timeout)
        return bool(ack.status == "Accepted")

    async def trigger(self, cp_id: str, message: str, timeout: float) -> str:  # noqa: ASYNC109
        """TriggerMessage (e.g. "MeterValues", "StatusNotification"): the charger's answer status."""
        st = self._station(cp_id)
        link = await self._ready(st, timeout)
        connector = CONNECTOR if message in ("MeterValues", "StatusNotification") else None
        ack = await link.peer.request(
            call.TriggerMessage(requested_message=message, connector_id=connector), timeout
        )
        return str(ack.status)
