"""The daemon: wires drivers, state store, dispatcher, controllers, storage and the MQTT API.

Data flows one way: drivers -> events -> state store -> controllers -> optimizer ->
commands -> dispatcher -> drivers; the MQTT API reads state and submits commands
through the same dispatcher. Everything runs in one TaskGroup of named tasks; a stop
request drains pending writes, flushes storage and the outbox, then leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import structlog

from controllers.charging import (
    ChargingController,
    ChargingSafety,
    PlannedLighting,
    failsafe_a,
    failsafe_problems,
)
from controllers.displays import DisplayController, DisplaySafety, bay_id
from controllers.lighting import LightingController, LightingSafety
from controllers.waste import OPERATOR_DOMAIN, WasteController, WastePorts, WasteSafety
from controllers.waste import PLANNER_ID as WASTE_PLANNER
from controllers.waste import SUMMARY_ID as WASTE_SUMMARY
from devices.bins import Bin, load_bins
from devices.charging import ClientSecurity, OpcUaChargingDriver, OpcUaEndpoint
from devices.displays import DisplayDriver, SignEndpoint
from devices.inventory import Inventory
from devices.lighting import ModbusEndpoint, ModbusLightingDriver
from devices.profiles.displays import default_led_board_profile, default_vms_profile
from devices.profiles.lighting import default_profile
from devices.profiles.lorawan import default_profiles as lorawan_profiles
from devices.protocols.lorawan import UplinkIngest, UplinkSubscriber
from devices.waste import FleetDriver
from edge import __version__
from edge.alarms import DAEMON_DEVICE, Alarms, sweep_retained
from edge.app.api import MqttApi
from edge.bus import EventBus, Subscription
from edge.clock import Clock
from edge.dispatcher import AuditRecord, Dispatcher
from edge.driver import Driver
from edge.errors import ConfigError
from edge.events import AlarmEvent, PlanEvent, Severity, Telemetry
from edge.kernel import Kernel
from edge.lag import LagMonitor
from edge.mqtt import LinkOptions, MqttLink
from edge.outbox import Outbox
from edge.payloads import DaemonStatus
from edge.records import AlarmRow, CommandAudit, DeviceRow, PlanRow, StateSample
from edge.redact import redact_url
from edge.settings import Settings
from edge.state import StateStore
from edge.storage import Storage
from edge.tasks import cancel_and_wait

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class Daemon:
    """Handles to the running parts, for the demo summary and for tests."""

    settings: Settings
    inventory: Inventory
    clock: Clock
    bus: EventBus
    state: StateStore
    storage: Storage
    dispatcher: Dispatcher
    alarms: Alarms
    lighting: LightingController
    api: MqttApi
    link: MqttLink
    driver: ModbusLightingDriver
    charging: ChargingController | None = None
    displays: DisplayController | None = None
    display_driver: DisplayDriver | None = None
    ingest: UplinkIngest | None = None
    waste: WasteController | None = None
    fleet: FleetDriver | None = None
    started: asyncio.Event = field(default_factory=asyncio.Event)


def endpoints_of(inv: Inventory) -> list[ModbusEndpoint]:
    return [
        ModbusEndpoint(
            endpoint_id=c.id,
            host=c.host,
            port=c.port,
            unit=c.unit,
            lamps=tuple((lamp.index, lamp.id) for lamp in c.lamps),
        )
        for c in inv.controllers.values()
    ]


def opcua_driver(
    settings: Settings, inv: Inventory, publish: Any, clock: Clock, on_late: Any = None
) -> OpcUaChargingDriver | None:
    """The OPC UA driver for the site's charge points (None when it has none)."""
    if not inv.chargers:
        return None
    cs = settings.charging
    problems = failsafe_problems(cs, inv)
    if problems:  # the same rule check-config applies: a gone daemon must not blow a fuse
        error = ConfigError("\n".join(problems), key="charging.failsafe_current_a")
        error.lines = problems
        raise error
    security = None
    if cs.client_cert:
        security = ClientSecurity(
            settings.resolve(cs.client_cert),
            settings.resolve(cs.client_key),
            settings.resolve(cs.server_cert),
        )
    return OpcUaChargingDriver(
        [OpcUaEndpoint(sid, url, ids) for sid, (url, ids) in inv.charger_servers.items()],
        None,
        publish,
        clock,
        security=security,
        allow_no_security=cs.allow_no_security,
        timeout_s=cs.timeout_s,
        failsafe={c.id: failsafe_a(c, cs) for c in inv.chargers.values()},
        on_late=on_late,
    )


def _audit_row(rec: AuditRecord) -> CommandAudit:
    c = rec.command
    return CommandAudit(
        command_id=c.id,
        device_id=c.device_id,
        point=c.point,
        requested=c.requested if c.requested is not None else c.value,  # what was asked, even once clamped
        applied=rec.value,
        priority=c.priority.name.lower(),
        source=c.source,
        outcome=str(rec.outcome),
        reason=rec.reason[:500],
        ts=rec.ts,
    )


async def _record(d: Daemon, sub: Subscription) -> None:
    """Write alarms and plans to storage as they happen (`sub` is taken before anything runs)."""
    async for ev in sub:
        if isinstance(ev, AlarmEvent):
            if ev.restored:
                continue  # its row is open already
            if ev.active:
                d.storage.add(
                    AlarmRow(
                        device_id=ev.device_id,
                        code=ev.code,
                        severity=str(ev.severity),
                        detail=ev.detail[:500],
                        raised_at=ev.ts,
                    )
                )
            else:
                d.storage.clear_alarm(ev.device_id, ev.code, ev.ts)
        elif isinstance(ev, PlanEvent):
            d.storage.add(
                PlanRow(
                    domain=ev.domain,
                    created_at=ev.ts,
                    status=str(ev.plan.get("status", "")),
                    body=dict(ev.plan),
                )
            )


async def _sample_history(d: Daemon) -> None:
    """Downsampled state history: one snapshot per device per interval (clock time)."""
    interval = d.settings.storage.history_interval_s
    while True:
        now = d.clock.now()
        for i, dev in enumerate(list(d.state.devices())):
            if i % 500 == 499:
                await asyncio.sleep(0)  # keep command latency low while snapshotting thousands
            if dev.values:
                d.storage.add(
                    StateSample(device_id=dev.device_id, ts=now, online=dev.online, values=dict(dev.values))
                )
        await d.clock.sleep(interval)


def device_kinds(settings: Settings, inventory: Inventory, bins: list[Bin]) -> dict[str, str]:
    """Every device the site configures, by id, with its kind: what the state store registers.

    One list for every domain, so that telemetry, availability and alarms about a configured
    device (a feeder near its limit, a car park whose count is stale) always find it; only
    ids no configuration names are unknown.
    """
    ccfg = settings.charging
    dcfg = settings.displays
    kinds = (
        dict.fromkeys(inventory.lamps, "lamp")
        | dict.fromkeys(inventory.controllers, "controller")
        | dict.fromkeys(inventory.chargers, "charger")
        | dict.fromkeys(inventory.charger_servers, "charger_server")
        | {f.cabinet: "cabinet" for f in ccfg.feeders}
        | {c.id: "cabinet" for c in ccfg.cabinets}
        | {f.id: "feeder" for f in ccfg.feeders}
        | {d.id: "display" for d in dcfg.displays}
        | {cp.id: "car_park" for cp in dcfg.car_parks}
        | {bay_id(e): "sensor" for cp in dcfg.car_parks for e in cp.sensors}
        | {b.id: "bin" for b in bins}
    )
    if bins:
        kinds |= {t.id: "truck" for t in settings.waste.trucks} | {
            WASTE_PLANNER: "planner",
            WASTE_SUMMARY: "planner",
        }
    kinds[DAEMON_DEVICE] = "daemon"  # storage alarms (unreachable, backlog, dead letters)
    return kinds


@contextlib.asynccontextmanager
async def running(
    settings: Settings, inventory: Inventory, clock: Clock, *, drain_s: float = 5.0
) -> AsyncIterator[Daemon]:
    """Start the whole daemon; on exit, drain writes, flush storage and the outbox.

    `drain_s` bounds each of the two drains (pending writes, unacknowledged messages): with
    devices still reporting they rarely run dry, and what the outbox holds survives a restart.
    """
    bus = EventBus()
    bins = site_bins(settings)
    wcfg = settings.waste
    kinds = device_kinds(settings, inventory, bins)
    state = StateStore(bus, kinds)
    mq = settings.mqtt
    site = settings.site
    # LoRaWAN sensors report every 10-60 min: their restored alarms settle at the 2nd uplink.
    alarms = Alarms(
        bus, clock, confirm_readings_of={d: 2 for d, k in kinds.items() if k in {"bin", "sensor"}}
    )
    # Subscribed before any driver or controller runs, so no alarm change or reading is missed.
    record_sub = bus.subscribe("storage", AlarmEvent, PlanEvent)
    reconcile_sub = bus.subscribe("alarms.reconcile", Telemetry)
    async with Storage(
        settings.storage.url,
        flush_interval_s=settings.storage.flush_interval_s,
        retention_s=settings.storage.retention_days * 86400,
        max_backlog=settings.storage.max_backlog_rows,
        on_alarm=lambda code, active, sev, detail: alarms.set(DAEMON_DEVICE, code, active, sev, detail),
    ) as storage:
        alarms.restore(_open_alarms(await asyncio.to_thread(storage.alarms, True)))
        await asyncio.to_thread(
            storage.upsert_devices,
            [
                DeviceRow(
                    id=lamp.id,
                    kind="lamp",
                    segment=lamp.segment,
                    group=lamp.group,
                    controller=lamp.controller,
                    lat=lamp.lat,
                    lon=lamp.lon,
                    attrs={"class": lamp.lighting_class, "flags": sorted(lamp.flags), "feeder": lamp.feeder},
                )
                for lamp in inventory.lamps.values()
            ],
        )
        lc = settings.lighting
        driver = ModbusLightingDriver(
            endpoints_of(inventory),
            default_profile(),
            bus.publish,
            clock,
            poll_interval_s=lc.poll_interval_s,
            timeout_s=lc.timeout_s,
            backoff_max_s=lc.backoff_max_s,
        )
        ds = settings.dispatcher
        safety = LightingSafety(inventory, site, lc)
        lag = LagMonitor(limit_s=settings.charging.lag_limit_s, hold_s=settings.charging.lag_hold_s)
        chargers = opcua_driver(settings, inventory, bus.publish, clock, on_late=lag.record)
        drivers: list[Driver] = [driver] if chargers is None else [driver, chargers]
        dcfg = settings.displays
        display_driver: DisplayDriver | None = None
        display_profiles = {
            x.id: default_led_board_profile() if x.kind == "board" else default_vms_profile()
            for x in dcfg.displays
        }
        policies: dict[str, Any] = {}
        if dcfg.displays:
            display_driver = DisplayDriver(
                bus.publish,
                clock,
                boards=[x.id for x in dcfg.displays if x.kind == "board"],
                signs=[SignEndpoint(x.id, x.host, x.port, x.unit) for x in dcfg.displays if x.kind == "sign"],
                mqtt_url=dcfg.board_mqtt_url or mq.url,
                tls=settings.board_link().files(),
                max_clock_skew_s=mq.max_clock_skew_s,
            )
            drivers.append(display_driver)
            policies["display"] = DisplaySafety(display_profiles)
        fleet: FleetDriver | None = None
        if bins:
            fleet = FleetDriver(
                bus.publish,
                clock,
                [t.id for t in wcfg.trucks],
                mqtt_url=wcfg.fleet_mqtt_url or mq.url,
                tls=settings.fleet_link().files(),
                max_clock_skew_s=mq.max_clock_skew_s,
            )
            drivers.append(fleet)
            policies["truck"] = WasteSafety()
        dispatcher = Dispatcher(
            bus=bus,
            clock=clock,
            state=state,
            drivers=drivers,
            policies={"lamp": safety, **policies},
            audit=lambda rec: storage.add(_audit_row(rec)),
            write_timeout_s=ds.write_timeout_s,
            workers=ds.workers,
            reconcile_interval_s=ds.reconcile_interval_s,
        )
        kernel = Kernel(settings, clock, bus, state, dispatcher, alarms, storage, lag)
        lighting = LightingController(kernel, lc, inv=inventory)
        # The interlock sees the lighting plan and the dispatcher's view from the start.
        charging_safety = ChargingSafety(
            inventory,
            settings.charging,
            lighting=PlannedLighting(inventory, lighting, clock, settings.charging.stale_after_s),
            lagging=lag.lagging,
        )
        dispatcher.register_policy("charger", charging_safety)
        async with (
            lag,
            Outbox(settings.storage.url, max_rows=mq.outbox_max_rows) as outbox,
            driver,
            contextlib.AsyncExitStack() as stack,
            dispatcher,
        ):
            if chargers is not None:
                await stack.enter_async_context(chargers)
            if display_driver is not None:
                await stack.enter_async_context(display_driver)
            if fleet is not None:
                await stack.enter_async_context(fleet)
            charging: ChargingController | None = None
            if inventory.chargers:
                charging = ChargingController(
                    kernel, settings.charging, inv=inventory, safety=charging_safety
                )
            displays: DisplayController | None = None
            ingest: UplinkIngest | None = None
            if display_driver is not None:
                dd = display_driver
                displays = DisplayController(
                    kernel,
                    dcfg,
                    lighting=lighting,
                    profiles=display_profiles,
                    silent=lambda x: dd.health(x).alarm_due,
                )
            waste: WasteController | None = None
            if bins:
                waste = WasteController(
                    WastePorts(ZoneInfo(site.timezone), clock, alarms, dispatcher.submit, bus),
                    wcfg,
                    bins=bins,
                    # a route must survive the truck's answer in real seconds, whatever the clock speed
                    command_ttl_s=max(ds.command_ttl_s, 900.0, 10 * ds.write_timeout_s * clock.speed),
                )
                await asyncio.to_thread(restore_waste, waste, storage, clock.now())
            # One LoRaWAN ingest for every sensor: parking bays and bins.
            sensors = {e.lower(): (bay_id(e), "parking_magnetic") for c in dcfg.car_parks for e in c.sensors}
            if display_driver is None:
                sensors = {}
            sensors |= {b.dev_eui: (b.id, "bin_ultrasonic") for b in bins}
            uplink_topics = list(
                dict.fromkeys([*dcfg.lorawan_topics, *(wcfg.lorawan_topics if bins else [])])
            )
            if sensors:
                ingest = UplinkIngest(
                    lorawan_profiles(),
                    sensors,
                    bus.publish,
                    clock,
                    on_late=waste.on_late if waste is not None else None,
                    max_clock_skew_s=mq.max_clock_skew_s,
                )
                # The ingest subscribes its uplink topics itself (C-in), ready before we go online.
                uplinks = await stack.enter_async_context(
                    UplinkSubscriber(
                        ingest, mqtt_url=mq.url, topics=uplink_topics, tls=settings.mqtt_link().files()
                    )
                )
                with contextlib.suppress(TimeoutError):
                    await uplinks.wait_connected(10.0)
            api = MqttApi(
                site=site.id,
                prefix=mq.topic_prefix,
                bus=bus,
                clock=clock,
                state=state,
                dispatcher=dispatcher,
                lighting=lighting,
                max_payload_bytes=mq.max_payload_bytes,
                command_ttl_s=ds.command_ttl_s,
                result_timeout_s=ds.write_timeout_s * 2 + 1,
                telemetry_interval_s=mq.telemetry_interval_s,
                charging=charging,
                audit=lambda rec: storage.add(_audit_row(rec)),
                displays=displays,
                waste=waste,
                alarm_ack=storage.ack_alarm,
                reply_prefix=mq.reply_prefix,
                max_clock_skew_s=mq.max_clock_skew_s,
            )
            online = orjson.dumps(
                DaemonStatus(
                    online=True, site=site.id, version=__version__, timezone=site.timezone
                ).model_dump()
            )
            offline = orjson.dumps(
                DaemonStatus(
                    online=False, site=site.id, version=__version__, timezone=site.timezone
                ).model_dump()
            )
            # The retained alarm topics follow the table: strays cleared, open ones republished.
            await sweep_retained(
                mq.url,
                api.base,
                [(a.device_id, a.code) for a in alarms.active()],
                tls=settings.mqtt_link().files(),
            )
            alarms.announce_restored()
            link = MqttLink(
                mq.url,
                mq.client_id or f"dos-edge-{site.id}",
                outbox,
                will=(api.status_topic(), offline, True),
                online_message=(api.status_topic(), online),
                subscriptions=api.subscriptions,
                on_message=api.on_message,
                tls=settings.mqtt_link().files(),
                options=LinkOptions(
                    protocol=mq.protocol, backoff_max_s=30.0, max_payload_bytes=mq.max_payload_bytes * 4
                ),
            )
            async with link:
                d = Daemon(
                    settings,
                    inventory,
                    clock,
                    bus,
                    state,
                    storage,
                    dispatcher,
                    alarms,
                    lighting,
                    api,
                    link,
                    driver,
                    charging,
                    displays,
                    display_driver,
                    ingest,
                    waste,
                    fleet,
                )
                async with asyncio.TaskGroup() as tg:
                    recorder = tg.create_task(_record(d, record_sub), name="storage.recorder")
                    tasks = [
                        tg.create_task(state.run(), name="state.store"),
                        tg.create_task(api.run(link), name="api.publisher"),
                        recorder,
                        tg.create_task(_sample_history(d), name="storage.history"),
                        tg.create_task(alarms.reconcile(reconcile_sub), name="alarms.reconcile"),
                    ]
                    controllers = [tg.create_task(lighting.run(), name="lighting.controller")]
                    if charging is not None:
                        controllers.append(tg.create_task(charging.run(), name="charging.controller"))
                    if displays is not None:
                        controllers.append(tg.create_task(displays.run(), name="displays.controller"))
                    if waste is not None:
                        controllers.append(tg.create_task(waste.run(), name="waste.controller"))
                    tasks += controllers
                    d.started.set()
                    log.info(
                        "daemon_started",
                        site=site.id,
                        lamps=len(inventory.lamps),
                        controllers=len(inventory.controllers),
                        mqtt=redact_url(mq.url),
                        storage=redact_url(settings.storage.url),
                    )
                    try:
                        yield d
                    finally:
                        log.info("daemon_stopping")
                        # No new commands from any controller, or the drain below chases a moving
                        # target until its timeout (a busy demo took 10 s to stop).
                        await cancel_and_wait(controllers)
                        await api.close()
                        with contextlib.suppress(TimeoutError):
                            await dispatcher.drain(drain_s)
                        # Let the publisher turn the last events into outbox rows, then drain.
                        await asyncio.sleep(0.3)
                        with contextlib.suppress(TimeoutError):
                            await link.wait_drained(drain_s)
                        bus.close()
                        # The recorder ends by itself once it has stored what was queued.
                        await asyncio.wait([recorder], timeout=2.0)
                        await cancel_and_wait(tasks)
                        log.info(
                            "daemon_stopped", outbox_backlog=outbox.backlog, storage_rows=storage.written
                        )


def _open_alarms(rows: Sequence[AlarmRow]) -> list[AlarmEvent]:
    """Open alarm rows as events to restore (an unknown severity reads as major)."""
    sev = {s.value: s for s in Severity}
    return [
        AlarmEvent(
            r.device_id,
            r.code,
            sev.get(r.severity, Severity.MAJOR),
            True,
            r.raised_at,
            r.detail,
            acked_by=r.acked_by,
            ack_comment=r.ack_comment or "",
        )
        for r in rows
    ]


def site_bins(settings: Settings) -> list[Bin]:
    """The site's bin inventory ([waste] bins), empty when the site has no waste domain."""
    path = settings.bins_path()
    if path is None:
        return []
    return load_bins(path, [z.id for z in settings.waste.zones])


def restore_waste(waste: WasteController, storage: Storage, now: float) -> None:
    """Bring the waste controller back after a restart: fill history from the stored state
    samples, operator flags and today's plan from the plans table (runs in a thread)."""
    since = now - 14 * 86400
    for bin_id in waste.bins:
        samples = [(s.ts, s.values) for s in storage.history(bin_id) if s.ts >= since]
        waste.restore_history(bin_id, samples)
    flags = storage.plans(OPERATOR_DOMAIN)
    if flags:
        waste.restore_flags(dict(flags[-1].body))
    # The newest usable plan: a failed re-plan is stored too (for the record) but never restored.
    usable = [p for p in storage.plans("waste") if not dict(p.body).get("violations")]
    if usable:
        waste.restore_plan(dict(usable[-1].body), now)
