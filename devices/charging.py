"""OPC UA driver for charge points: subscriptions, batched reads, setpoints with read-back.

Sessions, security, batching, error translation and reconnects are the shared
`devices.protocols.opcua.OpcUaSession` (a fresh client per session, a jittered backoff
after a loss). A session reads every point in batches, then monitors the telemetry points
with one subscription whose publish responses are turned into one `Telemetry` per charge
point and response; setpoint writes are read back; heartbeats keep the chargers' watchdogs
fed. At every connect, and with every setpoint, the chargers' fail-safe currents (what they
fall back to when the watchdog fires) are written, the configured value but never above the
setpoint, and read back, so a charger that did not take it shows in its telemetry.
The subscription comes back with every new session.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import structlog
from asyncua import ua
from asyncua.client.client import Client
from asyncua.ua.attribute_ids import AttributeIds

from devices.profiles.charging import ChargePointProfile, OpcUaPoint, default_profile
from devices.protocols.link import LinkTiming, Presence, wait_for_event
from devices.protocols.opcua import (
    CLIENT_APPLICATION_URI,
    ClientSecurity,
    OpcUaSession,
    good_value,
    quiet_asyncua,
    string_node_id,
)
from edge.clock import Clock
from edge.errors import ConfigError, DeviceError, DeviceReplyError, DeviceUnavailable
from edge.events import Event, Telemetry, Value
from edge.lifecycle import Service, ServiceState
from edge.tasks import cancel_and_wait

# the session pieces callers (daemon, simulator, tests) import from here
__all__ = [
    "CLIENT_APPLICATION_URI",
    "ClientSecurity",
    "DriverStats",
    "OpcUaChargingDriver",
    "OpcUaEndpoint",
    "quiet_asyncua",
    "string_node_id",
]

log = structlog.get_logger(__name__)

_WATCHDOG_FALLBACK_S = 60.0  # heartbeat period while no charger's watchdog_s is known


@dataclass(frozen=True, slots=True)
class OpcUaEndpoint:
    """One OPC UA server and the charge points (device ids = cp ids) it serves."""

    endpoint_id: str
    url: str
    charge_points: tuple[str, ...]


@dataclass(slots=True)
class DriverStats:
    """Counters for benchmarks and health checks."""

    notifications: int = 0  # monitored-item values received
    telemetry: int = 0  # Telemetry events published
    sessions: int = 0
    session_errors: int = 0
    writes: int = 0
    write_errors: int = 0
    heartbeats: int = 0
    failsafe_written: int = 0
    failsafe_mismatches: int = 0


class _Runner:
    """One server: its sessions, availability, heartbeat and the writes through it."""

    def __init__(self, driver: OpcUaChargingDriver, ep: OpcUaEndpoint) -> None:
        self.driver = driver
        self.ep = ep
        self.opc = OpcUaSession(ep.endpoint_id, ep.url, driver.timing, driver.security)
        self.nodes: dict[tuple[str, str], ua.NodeId] = {}
        self.routes: list[tuple[str, str]] = []
        self.max_current: dict[str, float] = {}
        self.watchdog: dict[str, float] = {}
        self.failsafe_read: dict[str, float] = {}
        self.limit_read: dict[str, float] = {}
        self.heartbeat_seq = 0
        self.log = log.bind(endpoint=ep.endpoint_id)
        self.presence = Presence(driver, ep.endpoint_id, ep.charge_points, "opcua_endpoint", self.log)
        # Values read while the session is being set up, published once it is online: a charger
        # seen in the state store takes setpoints, and a setpoint sent before the subscription
        # is made fails ("endpoint down"; at city size 656 of them while 680 items were created).
        self.early: dict[str, dict[str, Value]] = {}

    # -- availability ---------------------------------------------------------------

    def on_down(self, reason: str) -> None:
        """A session ended: count it and mark the endpoint down."""
        self.driver.stats.session_errors += 1
        self.early.clear()
        self.presence.set(False, reason=reason)

    # -- telemetry ------------------------------------------------------------------

    def deliver(self, batch: dict[str, dict[str, Value]], count: int) -> None:
        d = self.driver
        stats = d.stats
        stats.notifications += count
        if not batch:
            return
        if not self.presence.online:
            for cp_id, values in batch.items():
                self.remember(cp_id, values)
                self.early.setdefault(cp_id, {}).update(values)
            return
        now = d.clock.now()
        publish = d.publish
        for cp_id, values in batch.items():
            self.remember(cp_id, values)
            publish(Telemetry(cp_id, now, values))
        stats.telemetry += len(batch)

    def online(self) -> None:
        """The session is set up: online, then what was read while setting it up goes out."""
        self.presence.set(True)
        early, self.early = self.early, {}
        self.deliver(early, 0)

    def remember(self, cp_id: str, values: dict[str, Value]) -> None:
        """Keep the charger limits the driver itself needs (range checks, heartbeat period)."""
        for key, known in (
            ("max_current_a", self.max_current),
            ("watchdog_s", self.watchdog),
            ("failsafe_current_a", self.failsafe_read),
            ("current_limit_a", self.limit_read),
        ):
            v = values.get(key)
            if isinstance(v, int | float) and not isinstance(v, bool):
                known[cp_id] = float(v)

    # -- sessions -------------------------------------------------------------------

    def _node_ids(self, ns: int) -> None:
        profile = self.driver.profile
        self.nodes = {
            (cp, p.name): string_node_id(profile.node_id(cp, p.name), ns)
            for cp in self.ep.charge_points
            for p in profile.points
        }
        self.routes = [(cp, p.name) for cp in self.ep.charge_points for p in profile.subscribed]

    async def session(self) -> None:
        """Connect, read everything, subscribe, heartbeat; raise when the session is lost."""
        d, opc = self.driver, self.opc
        d.stats.sessions += 1
        client = await opc.open()
        ns = await opc.call("namespace", client.get_namespace_index(d.profile.namespace))
        self._node_ids(ns)
        await self._read_all(client)
        await self._write_failsafe(client)
        self._verify_failsafe()
        # Online only once subscribed. (Online before it, setpoints competed with creating 680
        # charge points' monitored items on a busy server; at 20,000 lamps three of them timed
        # out in a row, the session was given up, and the next one did the same, for minutes.)
        await opc.subscribe(
            client,
            d.publishing_interval_ms,
            [self.nodes[k] for k in self.routes],
            self.routes,
            self.deliver,
        )
        opc.backoff.reset()
        self.online()
        beat = asyncio.create_task(self.heartbeat_loop(), name=f"opcua[{self.ep.endpoint_id}].heartbeat")
        try:
            await opc.wait_lost()
        finally:
            await cancel_and_wait([beat])

    async def _write_failsafe(self, client: Client) -> None:
        """Write each charger's fail-safe current (one batch): the configured value, but never
        above the limit in force, so a watchdog never raises what a charger draws. Then read
        them back and publish what the chargers hold."""
        wanted = [
            (cp, min(a, self.limit_read.get(cp, a)))
            for cp in self.ep.charge_points
            if (a := self.driver.failsafe.get(cp)) is not None
        ]
        if not wanted:
            return
        nodes = [self.nodes[(cp, "failsafe_current_a")] for cp, _a in wanted]
        dvs = [ua.DataValue(ua.Variant(float(a), ua.VariantType.Double)) for _cp, a in wanted]
        results = await self.opc.write_values(client, nodes, dvs, "write_failsafe")
        for (cp, a), r in zip(wanted, results, strict=True):
            if r.is_good():
                self.driver.stats.failsafe_written += 1
            else:
                self.log.warning("opcua_failsafe_refused", cp_id=cp, failsafe_a=a, status=str(r))
        back = await self.opc.read_values(client, nodes, "read_failsafe")
        values: dict[str, dict[str, Value]] = {}
        for (cp, _a), dv in zip(wanted, back, strict=True):
            if (fs := good_value(dv)) is not None:
                values[cp] = {"failsafe_current_a": fs}
        self.deliver(values, len(values))

    def _verify_failsafe(self) -> None:
        """Log chargers whose fail-safe reads back above the configured one (they would draw more
        than the feeder's budget allows when their watchdog fires)."""
        for cp in self.ep.charge_points:
            want = self.driver.failsafe.get(cp)
            got = self.failsafe_read.get(cp)
            if want is None:
                continue
            if got is None or got > want + 0.05:
                self.driver.stats.failsafe_mismatches += 1
                self.log.error("opcua_failsafe_mismatch", cp_id=cp, configured_a=want, read_back_a=got)

    async def _read_all(self, client: Client) -> None:
        """Read every point of every charge point in batches and publish it as telemetry."""
        keys = list(self.nodes)
        dvs = await self.opc.read_values(client, [self.nodes[k] for k in keys], "read")
        now_values: dict[str, dict[str, Value]] = {}
        for (cp_id, point), dv in zip(keys, dvs, strict=True):
            if (value := good_value(dv)) is not None:
                now_values.setdefault(cp_id, {})[point] = value
        self.deliver(now_values, sum(len(v) for v in now_values.values()))

    async def run(self) -> None:
        """Sessions forever; after a failure back off (capped, jittered) and start afresh."""
        await self.opc.run(self.session, self.on_down)

    # -- heartbeat and writes ---------------------------------------------------------

    async def heartbeat_loop(self) -> None:
        """Feed every charger's watchdog: one batched write, every watchdog_s / 3 clock seconds."""
        d = self.driver
        due: float | None = None
        while True:
            client = self.opc.client
            if client is None:
                return
            started = d.clock.now()
            if due is not None and d.on_late is not None:
                d.on_late(max(0.0, started - due) / d.clock.speed)  # real seconds late
            due = started + self.heartbeat_interval()
            self.heartbeat_seq = (self.heartbeat_seq + 1) % 2_147_483_647
            variant = ua.DataValue(ua.Variant(self.heartbeat_seq, ua.VariantType.Int32))
            nodes = [self.nodes[(cp, "heartbeat")] for cp in self.ep.charge_points]
            try:
                results = await self.opc.write_values(client, nodes, [variant] * len(nodes), "heartbeat")
                refused = sum(1 for r in results if not r.is_good())
                if refused:
                    self.log.debug("opcua_heartbeat_refused", chargers=refused)
                d.stats.heartbeats += 1
            except DeviceReplyError as exc:  # e.g. a charger the gateway lost: retried next period
                self.log.debug("opcua_heartbeat_failed", error=str(exc))
            except DeviceError as exc:
                self.opc.lose(f"heartbeat: {exc}")
                return
            # on a schedule from the start of the beat: a slow answer must not delay the next one
            await d.clock.sleep(max(0.0, started + self.heartbeat_interval() - d.clock.now()))

    def heartbeat_interval(self) -> float:
        d = self.driver
        if d.heartbeat_every_s is not None:
            return d.heartbeat_every_s
        known = [w for w in self.watchdog.values() if w > 0]
        return min(known) / 3 if known else _WATCHDOG_FALLBACK_S

    async def write_read(self, cp_id: str, pt: OpcUaPoint, value: Value, timeout_s: float) -> Value:
        """Write one point and read it back, within `timeout_s` for both.

        A setpoint goes with the charger's fail-safe current in the same request: the
        configured fail-safe, but never above the setpoint (a watchdog must not raise a draw).
        """
        eid = self.ep.endpoint_id
        client = self.opc.client
        if not self.presence.online or client is None:
            raise DeviceUnavailable("endpoint down or in backoff", endpoint=eid)
        nodes = [self.nodes[(cp_id, pt.name)]]
        dvs = [ua.DataValue(ua.Variant(value, getattr(ua.VariantType, pt.type.value)))]
        configured = self.driver.failsafe.get(cp_id)
        if pt.name == "current_limit_a" and configured is not None and isinstance(value, int | float):
            nodes.append(self.nodes[(cp_id, "failsafe_current_a")])
            dvs.append(ua.DataValue(ua.Variant(float(min(configured, value)), ua.VariantType.Double)))

        async def go() -> list[ua.DataValue]:
            results = await client.uaclient.write_attributes(nodes, dvs, AttributeIds.Value)
            results[0].check()
            back: list[ua.DataValue] = await client.uaclient.read_attributes(nodes, AttributeIds.Value)
            return back

        back = await self.opc.call(f"{cp_id}.{pt.name}", go(), timeout_s, patient=True)
        result: Value = good_value(back[0])
        if result is None:
            raise DeviceReplyError(f"read-back of {cp_id}.{pt.name}: {back[0].StatusCode}", endpoint=eid)
        if len(back) > 1 and (fs := good_value(back[1])) is not None:
            self.deliver({cp_id: {pt.name: result, "failsafe_current_a": fs}}, 2)
        return result


class OpcUaChargingDriver(Service):
    """Driver for OPC UA charge point servers; an async context manager that owns its tasks.

    Publishes `Telemetry` per charge point (device_id = cp_id) for every subscription
    response and after every (re)connect, and `Availability` per endpoint on transitions.
    Timeouts and backoff are real seconds; `heartbeat_every_s` is clock seconds (default:
    a third of the smallest watchdog_s the chargers report). `failsafe` maps charge points
    to the fail-safe current written at every connect (others keep their own). `on_late`
    hears how late (real seconds) each heartbeat went out: a late heartbeat means the
    chargers' watchdogs may fire, so the daemon goes conservative (edge/lag.py).
    """

    service_name = "opcua"

    def __init__(
        self,
        endpoints: Sequence[OpcUaEndpoint],
        profile: ChargePointProfile | None,
        publish: Callable[[Event], None],
        clock: Clock,
        *,
        security: ClientSecurity | None = None,
        allow_no_security: bool = False,
        timeout_s: float = 2.0,
        backoff_max_s: float = 30.0,
        publishing_interval_ms: float = 500,
        backoff_base_s: float = 0.5,
        heartbeat_every_s: float | None = None,
        failsafe: Mapping[str, float] | None = None,
        on_late: Callable[[float], None] | None = None,
    ) -> None:
        super().__init__()
        if security is None and not allow_no_security:
            raise ConfigError(
                "OPC UA without security refused: give certificates or set allow_no_security",
                key="allow_no_security",
            )
        if security is not None:
            security.check_files()
        self.profile = profile or default_profile()
        self.publish = publish
        self.clock = clock
        self.security = security
        self.timing = LinkTiming(timeout_s, backoff_base_s, backoff_max_s)
        self.publishing_interval_ms = publishing_interval_ms
        self.heartbeat_every_s = heartbeat_every_s
        self.failsafe: Mapping[str, float] = dict(failsafe or {})
        self.on_late = on_late
        self.stats = DriverStats()
        self._endpoints = tuple(endpoints)
        ids = [e.endpoint_id for e in self._endpoints]
        if len(set(ids)) != len(ids):
            raise ValueError("endpoint ids must be unique")
        self._routes: dict[str, str] = {}
        for ep in self._endpoints:
            for cp_id in ep.charge_points:
                self.profile.check_cp_id(cp_id)
                if cp_id in self._routes:
                    raise ValueError(f"charge point {cp_id!r} appears twice")
                self._routes[cp_id] = ep.endpoint_id
        self._runners: dict[str, _Runner] = {}
        quiet_asyncua()

    async def _start(self) -> None:
        self._runners.update({ep.endpoint_id: _Runner(self, ep) for ep in self._endpoints})
        for endpoint_id, runner in self._runners.items():
            self.spawn(runner.run(), f"session[{endpoint_id}]")

    async def _stop(self) -> None:
        for runner in self._runners.values():
            await runner.opc.close()

    def handles(self, device_id: str) -> bool:
        """Whether `device_id` is a charge point behind one of our endpoints."""
        return device_id in self._routes

    def online(self, endpoint_id: str) -> bool | None:
        """Last known availability of an endpoint (None before the first attempt ends)."""
        runner = self._runners.get(endpoint_id)
        return None if runner is None else runner.presence.online

    def failsafe_read_a(self, cp_id: str) -> float | None:
        """The charger's fail-safe current as last read back (None before the first read)."""
        runner = self._runners.get(self._routes.get(cp_id, ""))
        return None if runner is None else runner.failsafe_read.get(cp_id)

    def max_current_a(self, cp_id: str) -> float | None:
        """The charger's own maximum as last read (None before the first read)."""
        runner = self._runners.get(self._routes.get(cp_id, ""))
        return None if runner is None else runner.max_current.get(cp_id)

    # The timeout is part of the Driver contract: the driver must know it to drop a
    # session whose request timed out in flight, which a caller's wrapper cannot do.
    async def write(self, device_id: str, point: str, value: float, timeout: float) -> float:  # noqa: ASYNC109
        """Write `point` of a charge point, read it back, return the read-back value.

        Writability and range (current_limit_a: 0..the charger's max_current_a) are checked
        before anything is sent (DeviceReplyError). While the endpoint is connecting or in
        backoff the write waits for its link within `timeout`, then DeviceUnavailable;
        DeviceTimeout after `timeout` real seconds.
        """
        endpoint_id = self._routes.get(device_id)
        if endpoint_id is None:
            raise DeviceUnavailable(f"{device_id!r} is not handled by this driver")
        pt = self.profile.by_name.get(point)
        if pt is None or not pt.writable:
            raise DeviceReplyError(f"{point!r} is not a writable point", endpoint=endpoint_id)
        try:
            checked = pt.check(value)
        except (TypeError, ValueError) as exc:
            raise DeviceReplyError(f"{device_id}.{point}: {exc}", endpoint=endpoint_id) from exc
        if self.state is not ServiceState.OPENED:
            raise DeviceUnavailable("driver is not running", endpoint=endpoint_id)
        runner = self._runners[endpoint_id]
        if point == "current_limit_a":
            mx = runner.max_current.get(device_id)
            if mx is not None and float(checked) > mx:
                raise DeviceReplyError(
                    f"{device_id}.{point}: {checked} A is above the charger's {mx} A", endpoint=endpoint_id
                )
        if not runner.presence.online or runner.opc.client is None:
            # still connecting (start-up), in backoff or reconnecting: wait within the timeout
            timeout = await runner.presence.wait_up(timeout)
            timeout = await wait_for_event(runner.opc.connected, timeout)
        self.stats.writes += 1
        try:
            back = await runner.write_read(device_id, pt, checked, timeout)
        except DeviceError:
            self.stats.write_errors += 1
            raise
        if isinstance(back, bool) or not isinstance(back, int | float):
            raise DeviceReplyError(f"read-back of {device_id}.{point}: {back!r}", endpoint=endpoint_id)
        return float(back)
