"""What the city bench measures inside the daemon's process, without changing the daemon.

- `Probes.lag`: event-loop lag samples. A task wakes every 0.1 s, as `edge.lag.LagMonitor`
  does, and records how late it woke (the daemon's monitor keeps only the last and the max).
- plan events: every `PlanEvent` on the bus, with its status and, where the plan carries it,
  its solve time (lighting and charging plans carry `solve_seconds`); the waste plan's time is
  measured from the moment the waste controller starts planning to its `PlanEvent`.
- milestones: when each start-up condition first held (link up, devices online per kind, the
  first plan of each domain made and applied, displays showing).
- `StackSampler`: a thread that samples the main thread's Python stack (`sys._current_frames`)
  `hz` times a second and counts each sample under the code area of the innermost frame that
  belongs to a device driver, a controller or a kernel part (generic helpers are skipped);
  samples with only the event loop's runner on the stack count as idle. The main thread's CPU
  time (psutil, per thread) is split over the areas in proportion to their busy samples; the
  sampler's own thread CPU is reported and subtracted from the daemon's CPU.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import threading
import time
from collections import Counter
from typing import Any

from edge.events import CommandResult, Outcome, PlanEvent

# (path fragment, area), first match wins, checked on the innermost project frame
AREAS: tuple[tuple[str, str], ...] = (
    ("/devices/lighting", "lamps: Modbus driver"),
    ("/devices/protocols/modbus", "lamps: Modbus driver"),
    ("/devices/charging", "chargers: OPC UA driver"),
    ("/devices/protocols/opcua", "chargers: OPC UA driver"),
    ("/devices/displays", "displays: driver"),
    ("/devices/protocols/vms", "displays: driver"),
    ("/devices/field", "car parks: counters"),
    ("/devices/waste", "trucks: fleet driver"),
    ("/devices/protocols/lorawan", "bins: LoRaWAN ingest"),
    ("/controllers/lighting", "lighting controller"),
    ("/controllers/charging", "charging controller"),
    ("/controllers/displays", "displays controller"),
    ("/controllers/waste", "waste controller"),
    ("/optimizer/", "optimizer (on the loop)"),
    ("/edge/state.py", "kernel: state store"),
    ("/edge/dispatcher.py", "kernel: dispatcher"),
    ("/edge/alarms.py", "kernel: alarms"),
    ("/edge/storage.py", "storage"),
    ("/edge/app/daemon.py", "storage"),  # the recorder and the history sampler
    ("/edge/app/", "north: MQTT API and publishing"),
    ("/edge/mqtt", "north: MQTT API and publishing"),
    ("/edge/outbox.py", "north: MQTT API and publishing"),
    ("/bench/city_probes", "bench probes"),
)
# library frames count only when no frame of ours is on the stack (a callback the library owns)
LIBRARIES: tuple[tuple[str, str], ...] = (
    ("/pymodbus/", "lamps and signs: pymodbus callbacks"),
    ("/asyncua/", "chargers: asyncua callbacks"),
    ("/paho/", "MQTT client callbacks (every link)"),
    ("/aiomqtt/", "MQTT client callbacks (every link)"),
    ("/sqlalchemy/", "storage"),
)
GENERIC = ("/edge/bus.py", "/edge/events.py", "/edge/tasks.py", "/edge/lifecycle.py", "/edge/clock.py",
           "/edge/decode.py", "/edge/payloads.py", "/edge/topics.py", "/edge/logs.py", "/edge/backoff.py",
           "/devices/protocols/mqtt.py", "/devices/protocols/link.py", "/devices/protocols/registers.py")  # fmt: skip
IDLE_TOPS = ("asyncio/runners.py", "uvloop/__init__.py", "/bench/city_procs.py")


class StackSampler:
    """Counts main-thread stack samples by area from a daemon thread (see the module docstring)."""

    def __init__(self, hz: float) -> None:
        self.interval = 1.0 / hz
        self.counts: Counter[str] = Counter()
        self.timeline: dict[int, Counter[str]] = {}  # wall second -> area counts (BENCH_CITY_TIMELINE)
        self.native_id = 0
        self._main = threading.main_thread().ident
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)
        self._cache: dict[str, str | None] = {}

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)

    def _area(self, filename: str) -> str | None:
        """The area of a frame's file; "" for generic helpers; None when not ours."""
        if filename in self._cache:
            return self._cache[filename]
        name = filename.replace("\\", "/")
        found: str | None = None
        if any(g in name for g in GENERIC):
            found = ""
        elif "site-packages" in name:
            found = next((f"lib:{area}" for frag, area in LIBRARIES if frag in name), None)
        else:
            for frag, area in AREAS:
                if frag in name:
                    found = area
                    break
        self._cache[filename] = found
        return found

    def classify(self, frame: Any) -> str:
        top = frame.f_code.co_filename
        if top.endswith(IDLE_TOPS):
            return "idle"
        f = frame
        lib = ""
        while f is not None:
            area = self._area(f.f_code.co_filename)
            if area and area.startswith("lib:"):
                lib = lib or area[4:]
            elif area:
                return area
            f = f.f_back
        return lib or "other: event loop and libraries"

    def _run(self) -> None:
        self.native_id = threading.get_native_id()
        while not self._stop.wait(self.interval):
            frame = sys._current_frames().get(self._main or 0)
            if frame is not None:
                area = self.classify(frame)
                self.counts[area] += 1
                self.timeline.setdefault(int(time.time()), Counter())[area] += 1


class Probes:
    """Lag samples, plan events and start-up milestones of a running daemon `d`."""

    def __init__(self, d: Any, sampler: StackSampler | None) -> None:
        self.d = d
        self.sampler = sampler
        self.t0 = time.time()
        self.lags: list[float] = []
        self.lag_at: list[float] = []  # wall time of each lag sample
        self.plans: list[dict[str, Any]] = []
        self.milestones: dict[str, float] = {}
        self.waste_started: float | None = None
        self._sub = d.bus.subscribe("bench.plans", PlanEvent, CommandResult)
        self.shown: set[str] = set()  # displays with content confirmed by read-back
        self.failed: Counter[str] = Counter()  # failed / expired commands by point and reason
        self._tasks: list[asyncio.Task[None]] = []
        self.applied = 0
        self._not_applied: set[str] | None = None
        self._confirmed_levels: list[tuple[str, float | None]] = []  # since the last look
        self.online: dict[str, list[int]] = {}  # the last check's [online, registered] per kind
        self._offline: dict[str, set[str]] | None = None  # per kind: not yet seen online
        self._registered: dict[str, int] = {}
        # Garbage collector pauses by generation (seconds each): a full collection walks every
        # object not frozen, and a city's heap is millions of them.
        self.gc_pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
        self.gc_long: list[tuple[float, int, float]] = []  # (wall time, generation, s) over 5 ms
        self._gc_start = 0.0
        gc.callbacks.append(self._gc)

    def _gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_start = time.perf_counter()
        else:
            took = time.perf_counter() - self._gc_start
            self.gc_pauses[info["generation"]].append(took)
            if took > 0.005:  # for the timeline: when the long ones happened
                self.gc_long.append((time.time(), info["generation"], took))

    def start(self, tg: asyncio.TaskGroup) -> None:
        self._tasks = [
            tg.create_task(self._lag(), name="bench.lag"),
            tg.create_task(self._plans(), name="bench.plans"),
            tg.create_task(self._waste_timer(), name="bench.waste_timer"),
        ]

    def stop(self) -> None:
        for t in self._tasks:
            t.cancel()

    async def _lag(self) -> None:
        interval = 0.1
        while True:
            expected = time.monotonic() + interval
            await asyncio.sleep(interval)
            self.lags.append(max(0.0, time.monotonic() - expected))
            self.lag_at.append(time.time())

    async def _waste_timer(self) -> None:
        while True:
            w = self.d.waste
            if w is not None and w.planning and self.waste_started is None:
                self.waste_started = time.time()
            await asyncio.sleep(0.05)

    async def _plans(self) -> None:
        async for ev in self._sub:
            if isinstance(ev, CommandResult):
                if ev.outcome == Outcome.CONFIRMED and ev.command.point == "content":
                    self.shown.add(ev.command.device_id)
                if (  # kept only until every lamp was seen applied (the window's memory is measured)
                    ev.outcome == Outcome.CONFIRMED
                    and ev.command.point == "level_cmd"
                    and (self._not_applied is None or self._not_applied)
                ):
                    self._confirmed_levels.append((ev.command.device_id, ev.applied_value))
                if ev.outcome in (Outcome.FAILED, Outcome.EXPIRED):
                    reason = "".join(c if not c.isdigit() else "#" for c in ev.reason)[:90]
                    self.failed[f"{ev.outcome} {ev.command.point}: {reason}"] += 1
                continue
            if not isinstance(ev, PlanEvent):
                continue
            body: Any = ev.plan
            rec: dict[str, Any] = {"domain": ev.domain, "t": time.time() - self.t0}
            for key in ("status", "solve_seconds", "solver", "reason", "mandatory", "optional",
                        "distance_km", "energy_kwh", "delivered_kwh", "requested_kwh"):  # fmt: skip
                if key in body:
                    rec[key] = body[key]
            if ev.domain == "waste":
                started = self.waste_started or time.time()
                rec["plan_s"] = time.time() - started
                rec["violations"] = len(body.get("violations") or [])
                rec["bins"] = len(self.d.waste.bins) if self.d.waste is not None else 0
                rec["routes"] = sum(1 for r in body.get("routes") or [] if r.get("stops"))
                self.waste_started = None
            elif ev.domain == "lighting":
                rec["lamps"] = len(self.d.inventory.lamps)
            elif ev.domain == "charging":
                rec["sessions"] = len(body.get("sessions") or [])
            self.plans.append(rec)

    def _online_seen(self) -> dict[str, list[int]]:
        """Per kind: [online once, registered]. The first look reads every device; later looks
        only those not yet seen online (a scan of 57,000 devices every half second was a tenth
        of the daemon's start-up CPU, and the probe's CPU counts as the daemon's)."""
        if self._offline is None:
            self._offline = {}
            self._registered = {}
            for dev in self.d.state.devices():
                self._registered[dev.kind] = self._registered.get(dev.kind, 0) + 1
                self._offline.setdefault(dev.kind, set())
                if not dev.online:
                    self._offline[dev.kind].add(dev.device_id)
        for kind, ids in self._offline.items():
            # a new set, not discards: a set keeps the table of its largest size (2 MB of the
            # daemon's RSS for the lamps' ids, held after every lamp was online)
            self._offline[kind] = {i for i in ids if (dev := self.d.state.get(i)) is None or not dev.online}
        return {k: [n - len(self._offline[k]), n] for k, n in self._registered.items()}

    def _online(self) -> dict[str, list[int]]:
        """Per kind: [online, registered]."""
        out: dict[str, list[int]] = {}
        for dev in self.d.state.devices():
            c = out.setdefault(dev.kind, [0, 0])
            c[1] += 1
            c[0] += bool(dev.online)
        return out

    def lamps_applied(self) -> int:
        """Lamps whose commanded level (read back) has been the plan's level once.

        The first look, once the plan is made, reads every lamp's state; after it only the
        level writes confirmed since the last look are looked at (the probe runs inside the
        daemon's process, and its CPU counts as the daemon's: a scan of 54,000 lamps every
        half second was 8 % of the city's start-up).
        """
        d = self.d
        plan = d.lighting.plan
        if self._not_applied is None:
            if plan is None:
                return 0
            self._not_applied = set(d.inventory.lamps)
            seen = [(lamp_id, d.state.value(lamp_id, "level_cmd")) for lamp_id in self._not_applied]
        else:
            seen, self._confirmed_levels = self._confirmed_levels, []
        if plan is not None:
            now = d.clock.now()
            level: dict[str, int] = {}  # per group, once per look
            for lamp_id, value in seen:
                lamp = d.inventory.lamps.get(lamp_id)
                if lamp is None or lamp_id not in self._not_applied:
                    continue
                want = level.get(lamp.group)
                if want is None:
                    want = level[lamp.group] = plan.level_at(lamp.group, now)
                if value == want:
                    self._not_applied.discard(lamp_id)
            if len(self._not_applied) < 1000 and seen:
                self._not_applied = set(self._not_applied)  # the table at its size (see above)
        return len(d.inventory.lamps) - len(self._not_applied)

    def _mark(self, name: str, ok: bool) -> bool:
        if ok and name not in self.milestones:
            self.milestones[name] = time.time() - self.t0
        return ok

    def _check(self) -> bool:
        d = self.d
        online = self.online = self._online_seen()
        ok = self._mark("mqtt link up", d.link.stats["connected"])
        for kind in ("controller", "lamp", "charger", "display", "truck"):
            if kind in online:
                ok &= self._mark(f"every {kind} online", online[kind][0] == online[kind][1])
        ok &= self._mark("lighting plan made", d.lighting.stats.plans >= 1)
        self.applied = self.lamps_applied() if d.lighting.stats.plans else 0
        n_lamps = len(d.inventory.lamps)
        self._mark("lighting plan applied to 99 % of the lamps", self.applied >= 0.99 * n_lamps)
        ok &= self._mark("lighting plan applied to every lamp", self.applied == n_lamps)
        if d.charging is not None:
            ok &= self._mark("charging plan made", d.charging.stats.plans >= 1)
        if d.displays is not None:
            n = len(d.settings.displays.displays)
            ok &= self._mark("every display showing (content confirmed)", len(self.shown) >= n)
        if d.waste is not None:
            ok &= self._mark("waste plan made", d.waste.plans_made >= 1)
        return ok

    async def wait_started(self, timeout_s: float, stall_s: float = 30.0) -> bool:
        """Until every start-up condition holds and the dispatcher is idle; False on timeout, or
        when it stalls: nothing pending, nothing newly online or applied for `stall_s` (a lamp
        whose first plan command failed is not sent again before the next plan step)."""
        deadline = time.monotonic() + timeout_s
        last: tuple[int, ...] = ()
        since = time.monotonic()
        while time.monotonic() < deadline:
            if self._check() and not self.d.dispatcher.pending():
                self.milestones["settled"] = time.time() - self.t0
                await self._north_caught_up(deadline)
                return True
            now = (self.applied, len(self.milestones), *(v[0] for v in self.online.values()))
            if now != last or self.d.dispatcher.pending():
                last, since = now, time.monotonic()
            elif time.monotonic() - since > stall_s:
                self.milestones["gave up (stalled)"] = time.time() - self.t0
                return False
            await asyncio.sleep(0.5)
        return False

    async def _north_caught_up(self, deadline: float) -> None:
        """The steady window starts once the start-up's device states are out: until then the
        north still publishes tens of thousands of retained states, and a command's round trip
        measures that tail, not the steady state (the start-up time above does not wait for it)."""
        while time.monotonic() < deadline:
            link = self.d.link.stats
            if link["states_pending"] == 0 and link["outbox_backlog"] == 0:
                self.milestones["north caught up (no state waiting to be published)"] = time.time() - self.t0
                return
            await asyncio.sleep(0.1)

    def stats(self) -> dict[str, Any]:
        d = self.d
        lamp, disp, fleet, ingest = d.driver.stats, d.display_driver, d.fleet, d.ingest
        ch = d.handle_of("charging", "driver", object)
        ds = d.dispatcher.stats
        link = d.link.stats
        return {
            "t": time.time(),
            "t0": self.t0,
            "online": self._online(),
            "lamps_applied": self.applied,
            "lamp_reads": lamp.lamp_reads, "reads": lamp.reads, "read_errors": lamp.read_errors,
            "writes": lamp.writes, "write_errors": lamp.write_errors,
            "charger_notifications": getattr(getattr(ch, "stats", None), "notifications", 0),
            "charger_writes": getattr(getattr(ch, "stats", None), "writes", 0),
            "charger_write_errors": getattr(getattr(ch, "stats", None), "write_errors", 0),
            "charger_session_errors": getattr(getattr(ch, "stats", None), "session_errors", 0),
            "display_writes": disp.stats.writes if disp else 0,
            "display_write_errors": disp.stats.write_errors if disp else 0,
            "display_poll_errors": disp.stats.poll_errors if disp else 0,
            "truck_states": fleet.stats.states if fleet else 0,
            "fleet_bad": fleet.stats.bad if fleet else 0,
            "uplinks": ingest.stats.received if ingest else 0,
            "uplinks_published": ingest.stats.published if ingest else 0,
            "cmd_submitted": ds.submitted, "cmd_sent": ds.sent, "cmd_confirmed": ds.confirmed,
            "cmd_failed": ds.failed, "cmd_expired": ds.expired, "cmd_refused": ds.refused,
            "pending": d.dispatcher.pending(),
            "published": link["published"], "outbox_backlog": link["outbox_backlog"],
            "states_published": link["states_published"], "published_fast": link["published_fast"],
            "mqtt_dropped": link["dropped"], "reconnects": link["reconnects"],
            "storage_written": d.storage.written, "storage_write_errors": d.storage.write_errors,
            "storage_backlog": d.storage.backlog,
            "plans": list(self.plans),
            "milestones": dict(self.milestones),
            "failed_reasons": dict(self.failed),
            "lags": list(self.lags),
            "gc_pauses": {g: list(v) for g, v in self.gc_pauses.items()},
            "areas": dict(self.sampler.counts) if self.sampler else {},
            "sampler_tid": self.sampler.native_id if self.sampler else 0,
            "protocol": d.link.protocol,
        }  # fmt: skip
