"""The daemon: the kernel, then every enabled domain built on it, the MQTT API and storage.

Data flows one way: drivers -> events -> state store -> controllers -> optimizer ->
commands -> dispatcher -> drivers; the MQTT API reads state and submits commands
through the same dispatcher. The daemon names no domain: it makes the kernel, builds the
domains of `edge.app.domains.BUILDS` in order, enters their services, runs their
controllers and hands their routes to the API. Everything runs in one TaskGroup of named
tasks; a stop request drains pending writes, flushes storage and the outbox, then leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field

import structlog

from devices.inventory import Inventory
from edge import __version__
from edge.alarms import DAEMON_DEVICE, Alarms, sweep_retained
from edge.app.api import MqttApi
from edge.app.domains import Site, build_all, device_kinds, site_bins, wait_ready
from edge.app.domains.handles import DomainHandles
from edge.app.ngsi import NgsiExporter, build_exporter
from edge.app.routes.base import audit_data
from edge.bus import EventBus, Subscription
from edge.clock import Clock
from edge.decode import encode_json
from edge.dispatcher import Dispatcher
from edge.events import AlarmEvent, PlanEvent, Severity, Telemetry
from edge.kernel import Domain, Kernel
from edge.lag import LagMonitor
from edge.metrics import Metrics, Sources
from edge.mqtt import LinkOptions, MqttLink
from edge.outbox import Outbox
from edge.payloads import DaemonStatus
from edge.records import AlarmRow, PlanRow, outbox_url
from edge.redact import redact_url
from edge.sdnotify import keep_alive
from edge.settings import Settings
from edge.solvers import Solvers
from edge.state import StateStore
from edge.storage import Storage
from edge.tasks import TimeSlice, cancel_and_wait

__all__ = ["Daemon", "device_kinds", "running", "site_bins"]

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class Daemon(DomainHandles):
    """Handles to the running parts, for the demo summary and for tests (each domain's
    controller and drivers through `DomainHandles`: `d.lighting`, `d.fleet`, ...)."""

    settings: Settings
    inventory: Inventory
    clock: Clock
    bus: EventBus
    state: StateStore
    storage: Storage
    dispatcher: Dispatcher
    alarms: Alarms
    api: MqttApi
    link: MqttLink
    domains: dict[str, Domain]
    started: asyncio.Event = field(default_factory=asyncio.Event)
    metrics: Metrics | None = None  # the Prometheus and health endpoint, when [metrics] enabled
    ngsi: NgsiExporter | None = None  # the NGSI-LD exporter, when [ngsi] enabled


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


HISTORY_CHUNK = 2_000
"""Rows of a history round queued ahead of the database at most: a city's 54,000 snapshots
queued at once were ~50 MB held until written (the daemon's RSS peaked there, and the heap kept
the holes), for rows nobody reads before they are written."""


async def _storage_caught_up(storage: Storage, below: int, until: float) -> None:
    """Wait (until loop time `until`) for the storage backlog to fall under `below` rows; a
    database that is down does not hold the round up longer."""
    loop = asyncio.get_running_loop()
    while storage.backlog >= below and loop.time() < until:  # noqa: ASYNC110 - the writer signals nothing
        await asyncio.sleep(0.05)


async def _sample_history(d: Daemon) -> None:
    """Downsampled state history: one snapshot per device per interval (clock time)."""
    interval = d.settings.storage.history_interval_s
    loop = asyncio.get_running_loop()
    while True:
        now = d.clock.now()
        slice_ = TimeSlice()  # keep command latency low while snapshotting thousands
        until = loop.time() + interval / max(1.0, d.clock.speed) / 2
        for i, dev in enumerate(list(d.state.devices())):
            await slice_.tick()
            if i % HISTORY_CHUNK == 0:
                await _storage_caught_up(d.storage, HISTORY_CHUNK, until)
            if dev.values:  # column values, not a StateSample each: 54,000 rows per round
                d.storage.add_data(
                    "state_sample", {"device_id": dev.device_id, "ts": now, "online": dev.online,
                                     "values": dict(dev.values)}
                )  # fmt: skip
        await d.clock.sleep(interval)


@contextlib.asynccontextmanager
async def running(
    settings: Settings, inventory: Inventory, clock: Clock, *, drain_s: float = 5.0
) -> AsyncIterator[Daemon]:
    """Start the whole daemon; on exit, drain writes, flush storage and the outbox.

    `drain_s` bounds each of the two drains (pending writes, unacknowledged messages): with
    devices still reporting they rarely run dry, and what the outbox holds survives a restart.
    """
    limit_malloc_arenas()
    bus = EventBus()
    state = StateStore(bus, {DAEMON_DEVICE: "daemon"})  # storage alarms (unreachable, backlog, ...)
    alarms = Alarms(bus, clock)
    # Subscribed before any driver or controller runs, so no alarm change or reading is missed.
    record_sub = bus.subscribe("storage", AlarmEvent, PlanEvent)
    reconcile_sub = bus.subscribe("alarms.reconcile", Telemetry)
    st, mq = settings.storage, settings.mqtt
    async with (
        Storage(
            st.url,
            flush_interval_s=st.flush_interval_s,
            retention_s=st.retention_days * 86400,
            max_backlog=st.max_backlog_rows,
            on_alarm=lambda code, active, sev, detail: alarms.set(DAEMON_DEVICE, code, active, sev, detail),
        ) as storage,
        Solvers() as solvers,
    ):
        alarms.restore(_open_alarms(await asyncio.to_thread(storage.alarms, True)))
        kernel = _kernel(settings, clock, bus, state, alarms, storage, solvers)
        site = Site(inventory, site_bins(settings))
        domains = await build_all(kernel, site)
        async with (
            kernel.lag,
            Outbox(outbox_url(st.url), max_rows=mq.outbox_max_rows, carry_from=st.url) as outbox,
            contextlib.AsyncExitStack() as stack,
        ):
            stack.enter_context(_frozen_heap())
            for dom in domains.values():  # drivers first: the dispatcher stops before them
                for service in dom.services:
                    await stack.enter_async_context(service)
            await wait_ready(site.ready)
            await stack.enter_async_context(kernel.dispatcher)
            api = MqttApi(
                kernel,
                [r for dom in domains.values() for r in dom.routes],
                inventory=inventory,
                controllers={name: c for name, dom in domains.items() for c in dom.controllers[:1]},
            )
            link = await _online(kernel, api, outbox)
            async with link, contextlib.AsyncExitStack() as ops:
                ngsi = None
                if settings.ngsi.enabled:  # stops before the link it may publish through
                    ngsi = await ops.enter_async_context(build_exporter(settings, state, site, link))
                metrics = None
                if settings.metrics.enabled:  # stops before the link: a scrape reads its counters
                    sources = Sources(link=lambda: link.stats, refused=lambda: api.refused,
                                      ngsi=None if ngsi is None else ngsi.counters)  # fmt: skip
                    metrics = await ops.enter_async_context(Metrics(kernel, settings.metrics, sources))
                d = Daemon(settings, inventory, clock, bus, state, storage, kernel.dispatcher, alarms,
                           api, link, domains, metrics=metrics, ngsi=ngsi)  # fmt: skip
                async with _running_tasks(d, record_sub, reconcile_sub, outbox, drain_s) as running_d:
                    yield running_d


GC_THRESHOLDS = (5_000, 10, 50)
"""The collector's thresholds while the daemon runs (CPython's are 700, 10, 10). A daemon that
reads 5,000 lamps a second allocates fast: the city bench counted 60 full collections in
three minutes (up to 111 ms each, the event loop stopped) and young ones by the thousand. Seven
times fewer young collections and a full one about 35 times more rarely; what they find is
little (the daemon makes few reference cycles), and memory is what is measured to hold."""


@contextlib.contextmanager
def _frozen_heap() -> Iterator[None]:
    """What is built at start-up (a city's inventory, profiles, device state) lives as long as
    the daemon: frozen out of the collector's sight, a full collection no longer walks millions
    of objects (event-loop pauses of hundreds of ms at 54,000 lamps). The collector runs less
    often (`GC_THRESHOLDS`). Both handed back on exit."""
    gc.collect()
    gc.freeze()
    before = gc.get_threshold()
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()


# When what the daemon has built since start is frozen too (real seconds after start): first once
# the dispatcher has had nothing to write for QUIET_S (a city's devices online and its first plans
# in force: 42 s at 54,000 lamps), at SETTLED_FREEZE_S[0] at the latest; again at [1], after the
# first plan steps and history rounds.
SETTLED_FREEZE_S = (120.0, 900.0)
FREEZE_PAUSE_WARN_S = 0.1  # a freeze that paused the event loop longer is logged as a warning
QUIET_S = 5.0


async def _quiet(d: Daemon, latest_s: float) -> None:
    """Until the dispatcher, having written something, has had nothing pending for QUIET_S, or
    `latest_s` after start."""
    loop = asyncio.get_running_loop()
    start, quiet_since = loop.time(), None
    while loop.time() - start < latest_s:
        await asyncio.sleep(1.0)
        if d.dispatcher.pending() or not d.dispatcher.stats.confirmed:  # not before the first writes
            quiet_since = None
        elif quiet_since is None:
            quiet_since = loop.time()
        elif loop.time() - quiet_since >= QUIET_S and loop.time() - start >= 2 * QUIET_S:
            return


async def _freeze_settled(d: Daemon) -> None:
    """Freeze what start-up built after `_frozen_heap` (every device's values, the dispatcher's
    points, the drivers' caches) once the daemon has settled. The city bench counted 19 full
    collections in two minutes, each walking those millions of objects: up to 438 ms of
    event-loop pause. Objects frozen here are still freed when their last reference goes; only
    a reference cycle among them would outlive its use, so this happens twice, not on a timer."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i, at in enumerate(SETTLED_FREEZE_S):
        if i == 0:
            await _quiet(d, at)
        else:
            await asyncio.sleep(max(0.0, start + at - loop.time()))
        t0 = time.perf_counter()
        # The young generations only: a full collection here walked the whole heap, an event-loop
        # pause of 1.0 s at 54,000 lamps (display echoes timed out behind it). A reference cycle
        # that is garbage and already old is frozen with the rest: memory, counted in the RSS.
        gc.collect(1)
        gc.freeze()
        t1 = time.perf_counter()
        trimmed = _libc_call("malloc_trim", 0)  # start-up's bursts, freed, back to the system
        t2 = time.perf_counter()
        (log.warning if t2 - t0 > FREEZE_PAUSE_WARN_S else log.info)(
            "heap_frozen", frozen=gc.get_freeze_count(), trimmed=bool(trimmed),
            collect_ms=round((t1 - t0) * 1e3, 1), trim_ms=round((t2 - t1) * 1e3, 1),
        )  # fmt: skip


M_ARENA_MAX = -8  # glibc mallopt parameter


def _libc_call(name: str, *args: int) -> int:
    """A glibc allocator call (`mallopt`, `malloc_trim`); 0 where there is no glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return int(getattr(libc, name)(*args))
    except (OSError, AttributeError):
        return 0


def limit_malloc_arenas(n: int = 2) -> None:
    """At most `n` glibc malloc arenas. glibc gives each thread that allocates its own arena (up
    to eight per core), and each keeps what its thread once held: the storage writer's batches,
    the worker threads'. Call before threads start; a no-op without glibc."""
    _libc_call("mallopt", M_ARENA_MAX, n)


def _kernel(
    settings: Settings,
    clock: Clock,
    bus: EventBus,
    state: StateStore,
    alarms: Alarms,
    storage: Storage,
    solvers: Solvers,
) -> Kernel:
    """The kernel's parts: the dispatcher starts with no driver or policy (the builds add them)."""
    ds = settings.dispatcher
    dispatcher = Dispatcher(
        bus=bus,
        clock=clock,
        state=state,
        drivers=[],
        policies={},
        audit=lambda rec: storage.add_data("command_audit", audit_data(rec)),
        write_timeout_s=ds.write_timeout_s,
        workers=ds.workers,
        reconcile_interval_s=ds.reconcile_interval_s,
    )
    lag = LagMonitor(limit_s=settings.charging.lag_limit_s, hold_s=settings.charging.lag_hold_s)
    return Kernel(settings, clock, bus, state, dispatcher, alarms, storage, lag, solvers)


async def _online(kernel: Kernel, api: MqttApi, outbox: Outbox) -> MqttLink:
    """The northbound link (not yet entered), after the retained alarm topics follow the table:
    strays cleared, open ones republished."""
    settings, alarms = kernel.settings, kernel.alarms
    mq, site = settings.mqtt, settings.site

    def status(online: bool) -> bytes:
        return encode_json(
            DaemonStatus(
                online=online, site=site.id, version=__version__, timezone=site.timezone
            ).model_dump()
        )

    await sweep_retained(
        mq.url, api.base, [(a.device_id, a.code) for a in alarms.active()], tls=settings.mqtt_link().files()
    )
    alarms.announce_restored()
    return MqttLink(
        mq.url,
        mq.client_id or f"dos-edge-{site.id}",
        outbox,
        will=(api.status_topic(), status(False), True),
        online_message=(api.status_topic(), status(True)),
        subscriptions=api.subscriptions,
        on_message=api.on_message,
        tls=settings.mqtt_link().files(),
        options=LinkOptions(
            protocol=mq.protocol, backoff_max_s=30.0, max_payload_bytes=mq.max_payload_bytes * 4
        ),
    )


@contextlib.asynccontextmanager
async def _running_tasks(
    d: Daemon, record_sub: Subscription, reconcile_sub: Subscription, outbox: Outbox, drain_s: float
) -> AsyncIterator[Daemon]:
    """Run the kernel's tasks and every domain's controllers; on exit, stop them in order."""
    settings = d.settings
    async with asyncio.TaskGroup() as tg:
        recorder = tg.create_task(_record(d, record_sub), name="storage.recorder")
        tasks = [
            tg.create_task(d.state.run(), name="state.store"),
            tg.create_task(d.api.run(d.link), name="api.publisher"),
            recorder,
            tg.create_task(_sample_history(d), name="storage.history"),
            tg.create_task(_freeze_settled(d), name="gc.freeze_settled"),
            tg.create_task(d.alarms.reconcile(reconcile_sub), name="alarms.reconcile"),
        ]
        controllers = [
            tg.create_task(c.run(), name=f"{c.name}.controller")
            for dom in d.domains.values()
            for c in dom.controllers
        ]
        tasks += controllers
        tasks.append(tg.create_task(keep_alive(), name="systemd.keep_alive"))
        d.started.set()
        log.info(
            "daemon_started",
            site=settings.site.id,
            domains=list(d.domains),
            lamps=len(d.inventory.lamps),
            controllers=len(d.inventory.controllers),
            mqtt=redact_url(settings.mqtt.url),
            storage=redact_url(settings.storage.url),
        )
        try:
            yield d
        finally:
            log.info("daemon_stopping")
            # No new commands from any controller, or the drain below chases a moving
            # target until its timeout (a busy demo took 10 s to stop).
            await cancel_and_wait(controllers)
            await d.api.close()
            with contextlib.suppress(TimeoutError):
                await d.dispatcher.drain(drain_s)
            # Let the publisher turn the last events into outbox rows, then drain.
            await asyncio.sleep(0.3)
            with contextlib.suppress(TimeoutError):
                await d.link.wait_drained(drain_s)
            d.bus.close()
            # The recorder ends by itself once it has stored what was queued.
            await asyncio.wait([recorder], timeout=2.0)
            await cancel_and_wait(tasks)
            log.info("daemon_stopped", outbox_backlog=outbox.backlog, storage_rows=d.storage.written)


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
