"""OPC UA driver for charge points: subscriptions, batched reads, setpoints with read-back.

One asyncua client per server and a fresh one for every session after a failure (no
library auto-reconnect: its state would outlive a broken session). A session reads every
point in batches, then monitors the telemetry points with one subscription whose publish
responses are turned into one `Telemetry` per charge point and response; setpoint writes
are read back; heartbeats keep the chargers' watchdogs fed. At every connect, and with
every setpoint, the chargers' fail-safe currents (what they fall back to when the watchdog
fires) are written, the configured value but never above the setpoint, and read back, so a
charger that did not take it shows in its telemetry.
A lost session is replaced after a capped, jittered backoff, and the subscription comes
back with it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import structlog
from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.subscription import Subscription
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.uaerrors import UaError, UaStatusCodeError

from devices.profiles.charging import ChargePointProfile, OpcUaPoint, default_profile
from edge.clock import Clock
from edge.errors import ConfigError, DeviceError, DeviceReplyError, DeviceTimeout, DeviceUnavailable
from edge.events import Availability, Event, Telemetry, Value
from edge.tasks import cancel_and_wait, close_task_group

log = structlog.get_logger(__name__)

CLIENT_APPLICATION_URI = "urn:dos-edge:edge:opcua-client"
BATCH = 1000  # nodes per read, write or create-monitored-items request
_T = TypeVar("_T")
_WATCHDOG_FALLBACK_S = 60.0  # heartbeat period while no charger's watchdog_s is known


def quiet_asyncua(level: int = logging.WARNING) -> None:
    """Keep asyncua's loggers at `level` or quieter (never louder than configured)."""
    logger = logging.getLogger("asyncua")
    if logger.getEffectiveLevel() < level:
        logger.setLevel(level)


def string_node_id(identifier: str, ns: int) -> ua.NodeId:
    """ns=<ns>;s=<identifier>."""
    return ua.NodeId(ua.String(identifier), ua.Int16(ns))


@dataclass(frozen=True, slots=True)
class OpcUaEndpoint:
    """One OPC UA server and the charge points (device ids = cp ids) it serves."""

    endpoint_id: str
    url: str
    charge_points: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ClientSecurity:
    """Basic256Sha256 SignAndEncrypt: our certificate and key, and the server's certificate."""

    cert_path: Path
    key_path: Path
    server_cert_path: Path


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


class _State(Enum):
    UNOPENED = "unopened"
    OPENED = "opened"
    CLOSED = "closed"


class _TelemetrySubscription(Subscription):
    """A subscription that turns each publish response into one Telemetry per charge point.

    It bypasses asyncua's per-notification event objects (a task or queue item per value):
    client handles index straight into the routes table.
    """

    def __init__(self, runner: _Runner, client: Client, params: ua.CreateSubscriptionParameters) -> None:
        super().__init__(client.uaclient.session, params, None, queue_maxsize=1)
        self.runner = runner

    async def publish_callback(self, publish_result: ua.PublishResult) -> None:
        self.last_publish_at = time.monotonic()
        message = publish_result.NotificationMessage
        if message.NotificationData is None:
            return
        self.last_sequence_number = int(message.SequenceNumber)
        runner = self.runner
        routes = runner.routes
        batch: dict[str, dict[str, Value]] = {}
        count = 0
        for notif in message.NotificationData:
            if isinstance(notif, ua.DataChangeNotification):
                for item in notif.MonitoredItems:
                    handle = item.ClientHandle
                    if not 0 <= handle < len(routes):
                        continue
                    dv = item.Value
                    if dv is None or dv.Value is None or (dv.StatusCode is not None and dv.StatusCode.value):
                        continue  # a bad value is no measurement
                    cp_id, point = routes[handle]
                    values = batch.get(cp_id)
                    if values is None:
                        values = batch[cp_id] = {}
                    values[point] = dv.Value.Value
                    count += 1
            elif isinstance(notif, ua.StatusChangeNotification):
                runner.lose(f"subscription status {notif.Status}")
        runner.deliver(batch, count)


class _Runner:
    """One server: its sessions, availability, heartbeat and the writes through it."""

    def __init__(self, driver: OpcUaChargingDriver, ep: OpcUaEndpoint) -> None:
        self.driver = driver
        self.ep = ep
        self.client: Client | None = None
        self.online: bool | None = None
        self.up = asyncio.Event()
        self.lost = asyncio.Event()
        self.lost_reason = ""
        self.attempt = 0
        self.nodes: dict[tuple[str, str], ua.NodeId] = {}
        self.routes: list[tuple[str, str]] = []
        self.max_current: dict[str, float] = {}
        self.watchdog: dict[str, float] = {}
        self.failsafe_read: dict[str, float] = {}
        self.limit_read: dict[str, float] = {}
        self.heartbeat_seq = 0
        self.log = log.bind(endpoint=ep.endpoint_id)

    # -- availability ---------------------------------------------------------------

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
                device_ids=self.ep.charge_points,
                online=online,
                ts=d.clock.now(),
                reason=reason,
            )
        )
        if online:
            self.log.info("opcua_endpoint_up")
        else:
            self.log.warning("opcua_endpoint_down", reason=reason)

    def lose(self, reason: str) -> None:
        """End the current session (the session loop replaces the client)."""
        if not self.lost.is_set():
            self.lost_reason = reason
            self.lost.set()

    async def _on_connection_lost(self, exc: Exception) -> None:
        self.lose(f"connection lost: {type(exc).__name__}: {exc}")

    # -- telemetry ------------------------------------------------------------------

    def deliver(self, batch: dict[str, dict[str, Value]], count: int) -> None:
        d = self.driver
        stats = d.stats
        stats.notifications += count
        if not batch:
            return
        now = d.clock.now()
        publish = d.publish
        for cp_id, values in batch.items():
            self.remember(cp_id, values)
            publish(Telemetry(cp_id, now, values))
        stats.telemetry += len(batch)

    def remember(self, cp_id: str, values: dict[str, Value]) -> None:
        """Keep the charger limits the driver itself needs (range checks, heartbeat period)."""
        mx = values.get("max_current_a")
        if isinstance(mx, int | float) and not isinstance(mx, bool):
            self.max_current[cp_id] = float(mx)
        wd = values.get("watchdog_s")
        if isinstance(wd, int | float) and not isinstance(wd, bool):
            self.watchdog[cp_id] = float(wd)
        fs = values.get("failsafe_current_a")
        if isinstance(fs, int | float) and not isinstance(fs, bool):
            self.failsafe_read[cp_id] = float(fs)
        lim = values.get("current_limit_a")
        if isinstance(lim, int | float) and not isinstance(lim, bool):
            self.limit_read[cp_id] = float(lim)

    # -- sessions -------------------------------------------------------------------

    def _node_ids(self, ns: int) -> None:
        profile = self.driver.profile
        self.nodes = {
            (cp, p.name): string_node_id(profile.node_id(cp, p.name), ns)
            for cp in self.ep.charge_points
            for p in profile.points
        }
        self.routes = [(cp, p.name) for cp in self.ep.charge_points for p in profile.subscribed]

    async def _call(self, what: str, coro: Any) -> Any:
        """Await one request under the driver's timeout; library errors become DeviceErrors."""
        eid = self.ep.endpoint_id
        timeout_s = self.driver.timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                return await coro
        except TimeoutError as exc:
            raise DeviceTimeout(f"{what}: no answer within {timeout_s} s", endpoint=eid) from exc
        except UaStatusCodeError as exc:
            raise DeviceReplyError(f"{what}: {exc}", endpoint=eid) from exc
        except (UaError, OSError, ConnectionError, EOFError) as exc:
            raise DeviceUnavailable(f"{what}: {type(exc).__name__}: {exc}", endpoint=eid) from exc

    async def _new_client(self) -> Client:
        d = self.driver
        client = Client(self.ep.url, timeout=d.timeout_s, watchdog_intervall=max(0.2, d.timeout_s))
        client.session_timeout = 600_000  # what asyncua servers grant; asking more only logs a warning
        client.application_uri = CLIENT_APPLICATION_URI
        client.name = client.description = "DOS Edge"
        client.connection_lost_callback = self._on_connection_lost
        sec = d.security
        if sec is not None:
            try:
                await client.set_security(
                    SecurityPolicyBasic256Sha256,
                    certificate=str(sec.cert_path),
                    private_key=str(sec.key_path),
                    server_certificate=str(sec.server_cert_path),
                    mode=ua.MessageSecurityMode.SignAndEncrypt,
                )
            except (OSError, ValueError, UaError) as exc:
                raise ConfigError(f"cannot load certificates: {exc}", key="security") from exc
        return client

    async def session(self) -> None:
        """Connect, read everything, subscribe, heartbeat; return when the session is lost."""
        d = self.driver
        self.lost = asyncio.Event()
        self.lost_reason = ""
        client = await self._new_client()
        self.client = client
        d.stats.sessions += 1
        await self._call("connect", client.connect())
        ns = await self._call("namespace", client.get_namespace_index(d.profile.namespace))
        self._node_ids(ns)
        await self._read_all(client)
        await self._write_failsafe(client)
        self._verify_failsafe()
        params = ua.CreateSubscriptionParameters(
            RequestedPublishingInterval=d.publishing_interval_ms,
            RequestedLifetimeCount=10_000,
            RequestedMaxKeepAliveCount=client.get_keepalive_count(d.publishing_interval_ms),
            MaxNotificationsPerPublish=0,  # no limit: one response per interval
            PublishingEnabled=True,
            Priority=0,
        )
        sub = _TelemetrySubscription(self, client, params)
        await self._call("create_subscription", sub.init())
        await self._monitor(sub)
        self.attempt = 0
        self.set_online(True)
        beat = asyncio.create_task(self.heartbeat_loop(), name=f"opcua[{self.ep.endpoint_id}].heartbeat")
        try:
            await self.lost.wait()
        finally:
            await cancel_and_wait([beat])
        raise DeviceUnavailable(self.lost_reason or "session lost", endpoint=self.ep.endpoint_id)

    async def _write_failsafe(self, client: Client) -> None:
        """Write each charger's fail-safe current (one batch): the configured value, but never
        above the limit in force, so a watchdog never raises what a charger draws. Then read
        them back and publish what the chargers hold."""
        wanted = [
            (cp, min(a, self.limit_read.get(cp, a)))
            for cp in self.ep.charge_points
            if (a := self.driver.failsafe.get(cp)) is not None
        ]
        for chunk in _chunks(wanted, BATCH):
            nodes = [self.nodes[(cp, "failsafe_current_a")] for cp, _a in chunk]
            dvs = [ua.DataValue(ua.Variant(float(a), ua.VariantType.Double)) for _cp, a in chunk]
            results = await self._call(
                "write_failsafe", client.uaclient.write_attributes(nodes, dvs, AttributeIds.Value)
            )
            for (cp, a), r in zip(chunk, results, strict=True):
                if r.is_good():
                    self.driver.stats.failsafe_written += 1
                else:
                    self.log.warning("opcua_failsafe_refused", cp_id=cp, failsafe_a=a, status=str(r))
            back = await self._call(
                "read_failsafe", client.uaclient.read_attributes(nodes, AttributeIds.Value)
            )
            values: dict[str, dict[str, Value]] = {}
            for (cp, _a), dv in zip(chunk, back, strict=True):
                if dv.Value is not None and not (dv.StatusCode is not None and dv.StatusCode.value):
                    values[cp] = {"failsafe_current_a": dv.Value.Value}
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
        now_values: dict[str, dict[str, Value]] = {}
        for chunk in _chunks(keys, BATCH):
            dvs = await self._call(
                "read", client.uaclient.read_attributes([self.nodes[k] for k in chunk], AttributeIds.Value)
            )
            for (cp_id, point), dv in zip(chunk, dvs, strict=True):
                if dv.Value is None or (dv.StatusCode is not None and dv.StatusCode.value):
                    continue
                now_values.setdefault(cp_id, {})[point] = dv.Value.Value
        self.deliver(now_values, sum(len(v) for v in now_values.values()))

    async def _monitor(self, sub: _TelemetrySubscription) -> None:
        requests = []
        for handle, key in enumerate(self.routes):
            mparams = ua.MonitoringParameters(
                ClientHandle=handle, SamplingInterval=0.0, QueueSize=1, DiscardOldest=True
            )
            requests.append(
                ua.MonitoredItemCreateRequest(
                    ItemToMonitor=ua.ReadValueId(NodeId=self.nodes[key], AttributeId=AttributeIds.Value),
                    MonitoringMode=ua.MonitoringMode.Reporting,
                    RequestedParameters=mparams,
                )
            )
        for chunk in _chunks(requests, BATCH):
            results = await self._call("create_monitored_items", sub.create_monitored_items(chunk))
            bad = [r for r in results if isinstance(r, ua.StatusCode)]
            if bad:
                raise DeviceReplyError(
                    f"{len(bad)} monitored items refused: {bad[0]}", endpoint=self.ep.endpoint_id
                )

    async def close(self) -> None:
        """Close the session's client; a dead transport is only torn down, not talked to."""
        client, self.client = self.client, None
        if client is None:
            return
        try:
            async with asyncio.timeout(self.driver.timeout_s):
                if client.uaclient.state.value == "connected":
                    await client.disconnect()
                else:
                    await client.close_session()
        except (TimeoutError, UaError, OSError, ConnectionError):
            pass
        finally:
            client.disconnect_socket()

    async def run(self) -> None:
        """Sessions forever; after a failure back off (capped, jittered) and start afresh."""
        d = self.driver
        while True:
            try:
                await self.session()
            except DeviceError as exc:
                reason = f"{type(exc).__name__}: {exc}"
            except ConfigError:
                raise
            except (UaError, OSError, ConnectionError) as exc:  # anything the boundary missed
                reason = f"{type(exc).__name__}: {exc}"
            finally:
                await self.close()
            d.stats.session_errors += 1
            self.set_online(False, reason=reason)
            cap = min(d.backoff_max_s, d.backoff_base_s * 2**self.attempt)
            self.attempt = min(self.attempt + 1, 30)
            await asyncio.sleep(random.uniform(0, cap))

    # -- heartbeat and writes ---------------------------------------------------------

    async def heartbeat_loop(self) -> None:
        """Feed every charger's watchdog: one batched write, every watchdog_s / 3 clock seconds."""
        d = self.driver
        due: float | None = None
        while True:
            client = self.client
            if client is None:
                return
            started = d.clock.now()
            if due is not None and d.on_late is not None:
                d.on_late(max(0.0, started - due) / d.clock.speed)  # real seconds late
            due = started + self.heartbeat_interval()
            self.heartbeat_seq = (self.heartbeat_seq + 1) % 2_147_483_647
            variant = ua.DataValue(ua.Variant(self.heartbeat_seq, ua.VariantType.Int32))
            keys = [(cp, "heartbeat") for cp in self.ep.charge_points]
            try:
                for chunk in _chunks(keys, BATCH):
                    results = await self._call(
                        "heartbeat",
                        client.uaclient.write_attributes(
                            [self.nodes[k] for k in chunk], [variant] * len(chunk), AttributeIds.Value
                        ),
                    )
                    refused = sum(1 for r in results if not r.is_good())
                    if refused:
                        self.log.debug("opcua_heartbeat_refused", chargers=refused)
                d.stats.heartbeats += 1
            except DeviceReplyError as exc:  # e.g. a charger the gateway lost: retried next period
                self.log.debug("opcua_heartbeat_failed", error=str(exc))
            except DeviceError as exc:
                self.lose(f"heartbeat: {exc}")
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
        client = self.client
        if not self.online or client is None:
            raise DeviceUnavailable("endpoint down or in backoff", endpoint=eid)
        nodes = [self.nodes[(cp_id, pt.name)]]
        dvs = [ua.DataValue(ua.Variant(value, getattr(ua.VariantType, pt.type.value)))]
        configured = self.driver.failsafe.get(cp_id)
        if pt.name == "current_limit_a" and configured is not None and isinstance(value, int | float):
            nodes.append(self.nodes[(cp_id, "failsafe_current_a")])
            dvs.append(ua.DataValue(ua.Variant(float(min(configured, value)), ua.VariantType.Double)))
        try:
            async with asyncio.timeout(timeout_s):
                results = await client.uaclient.write_attributes(nodes, dvs, AttributeIds.Value)
                results[0].check()
                back = await client.uaclient.read_attributes(nodes, AttributeIds.Value)
        except TimeoutError as exc:
            self.lose("write timed out in flight")  # a late answer must not meet the next request
            raise DeviceTimeout(f"no answer within {timeout_s} s", endpoint=eid) from exc
        except UaStatusCodeError as exc:
            raise DeviceReplyError(f"{cp_id}.{pt.name}: {exc}", endpoint=eid) from exc
        except (UaError, OSError, ConnectionError) as exc:
            self.lose(f"write: {type(exc).__name__}")
            raise DeviceUnavailable(f"{type(exc).__name__}: {exc}", endpoint=eid) from exc
        got = back[0]
        if got.Value is None or (got.StatusCode is not None and got.StatusCode.value):
            raise DeviceReplyError(f"read-back of {cp_id}.{pt.name}: {got.StatusCode}", endpoint=eid)
        result: Value = got.Value.Value
        if (
            len(back) > 1
            and back[1].Value is not None
            and not (back[1].StatusCode and back[1].StatusCode.value)
        ):
            fs = back[1].Value.Value
            self.deliver({cp_id: {pt.name: result, "failsafe_current_a": fs}}, 2)
        return result


def _chunks(items: Sequence[_T], size: int) -> Iterator[Sequence[_T]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class OpcUaChargingDriver:
    """Driver for OPC UA charge point servers; an async context manager that owns its tasks.

    Publishes `Telemetry` per charge point (device_id = cp_id) for every subscription
    response and after every (re)connect, and `Availability` per endpoint on transitions.
    Timeouts and backoff are real seconds; `heartbeat_every_s` is clock seconds (default:
    a third of the smallest watchdog_s the chargers report). `failsafe` maps charge points
    to the fail-safe current written at every connect (others keep their own). `on_late`
    hears how late (real seconds) each heartbeat went out: a late heartbeat means the
    chargers' watchdogs may fire, so the daemon goes conservative (edge/lag.py).
    """

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
        if security is None and not allow_no_security:
            raise ConfigError(
                "OPC UA without security refused: give certificates or set allow_no_security",
                key="allow_no_security",
            )
        if security is not None:
            for key, path in (
                ("security.cert_path", security.cert_path),
                ("security.key_path", security.key_path),
                ("security.server_cert_path", security.server_cert_path),
            ):
                if not Path(path).is_file():
                    raise ConfigError(f"no such file: {path}", key=key)
        self.profile = profile or default_profile()
        self.publish = publish
        self.clock = clock
        self.security = security
        self.timeout_s = timeout_s
        self.backoff_max_s = backoff_max_s
        self.backoff_base_s = backoff_base_s
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
        self._state = _State.UNOPENED
        self._tg: asyncio.TaskGroup | None = None
        self._tasks: list[asyncio.Task[None]] = []
        quiet_asyncua()

    async def __aenter__(self) -> Self:
        if self._state is not _State.UNOPENED:
            raise RuntimeError(f"driver is {self._state.value}; it cannot be opened again")
        self._state = _State.OPENED
        tg = asyncio.TaskGroup()
        await tg.__aenter__()
        self._tg = tg
        for ep in self._endpoints:
            runner = _Runner(self, ep)
            self._runners[ep.endpoint_id] = runner
            self._tasks.append(tg.create_task(runner.run(), name=f"opcua[{ep.endpoint_id}].session"))
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
                await runner.close()

    def handles(self, device_id: str) -> bool:
        """Whether `device_id` is a charge point behind one of our endpoints."""
        return device_id in self._routes

    def online(self, endpoint_id: str) -> bool | None:
        """Last known availability of an endpoint (None before the first attempt ends)."""
        runner = self._runners.get(endpoint_id)
        return None if runner is None else runner.online

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
        before anything is sent (DeviceReplyError). DeviceUnavailable at once while the
        endpoint is down or in backoff; DeviceTimeout after `timeout` real seconds.
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
        if self._state is not _State.OPENED:
            raise DeviceUnavailable("driver is not running", endpoint=endpoint_id)
        runner = self._runners[endpoint_id]
        if point == "current_limit_a":
            mx = runner.max_current.get(device_id)
            if mx is not None and float(checked) > mx:
                raise DeviceReplyError(
                    f"{device_id}.{point}: {checked} A is above the charger's {mx} A", endpoint=endpoint_id
                )
        self.stats.writes += 1
        try:
            back = await runner.write_read(device_id, pt, checked, timeout)
        except DeviceError:
            self.stats.write_errors += 1
            raise
        if isinstance(back, bool) or not isinstance(back, int | float):
            raise DeviceReplyError(f"read-back of {device_id}.{point}: {back!r}", endpoint=endpoint_id)
        return float(back)
