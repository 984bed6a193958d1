"""Waste bins that fill and trucks that empty them: `edge simulate waste`, the demo and the bench.

The parts, one module each: `simulators.waste_bins` (the fill process, the sensors and
their uplinks: `FillModel`, pure and synchronous, so the bench steps it through weeks in
seconds), `simulators.waste_trucks` (`TruckSim`, a truck's state machine) and
`simulators.waste_wire` (the truck wire format, docs/fleet-protocol.md, in one place).
This module is the entry a user imports: `WasteSimulator` runs bins and trucks on a
`Clock` and speaks MQTT: uplinks on the LoRaWAN broker and the truck protocol on the fleet
broker; and `edge simulate waste` (`run_waste_simulator`, `main`).

Faults (sensor): stuck, out_of_range, duplicate, out_of_order, silent, lid_open, tilt, fire;
(truck): breakdown, repair. Injected at start (`--fault B0007:fire`), by `inject()`, on
MQTT (`fleet/{truck}/fault`, and `dos/sim/waste/faults` with {"target", "fault", "active"})
or at random with `fault_rate_per_day` per bin. Everything random is seeded per bin, so the
same seed gives the same fill series whatever the step size.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiomqtt
import orjson
import structlog
from pydantic import BaseModel, ConfigDict, Field

from devices.inventory import Bin, load_bins
from edge.backoff import Backoff
from edge.clock import Clock
from edge.lifecycle import Service, ServiceState
from edge.mqtt import BrokerAddress
from edge.settings import Settings, WasteSettings
from simulators import fault_topic, sim_clock
from simulators.mqtt import bulk_client, open_client
from simulators.waste_bins import PROFILE, SENSOR_FAULTS, FillModel, FormatChoice, Reading, UplinkEncoder
from simulators.waste_trucks import TRUCK_FAULTS, Status, TruckSim, TruckView, leg
from simulators.waste_wire import (
    MAX_MESSAGE_BYTES,
    RouteError,
    event_message,
    parse_route,
    parse_truck_fault,
    state_message,
)

__all__ = [
    "FAULT_TOPIC",
    "FillModel",
    "Reading",
    "SimState",
    "TruckSim",
    "TruckView",
    "UplinkEncoder",
    "WasteSimStats",
    "WasteSimulator",
    "leg",
    "parse_fault",
    "run_waste_simulator",
    "site_config",
]

log = structlog.get_logger(__name__)

FAULT_TOPIC = fault_topic("waste")  # `edge simulate waste`
CONNECT_TIMEOUT_S = 10.0


class FaultMessage(BaseModel):
    """`dos/sim/waste/faults`: {"target": bin or truck id, "fault": ..., "active": true}."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target: str = Field(min_length=1, max_length=128)
    fault: Literal[
        "stuck", "out_of_range", "duplicate", "out_of_order", "silent", "lid_open", "tilt", "fire",
        "breakdown", "repair",
    ]  # fmt: skip
    active: bool = True
    duration_s: float | None = Field(default=None, gt=0)


# -- the simulator on MQTT ---------------------------------------------------------


SimState = ServiceState  # the name this module exported before the shared lifecycle


@dataclass(slots=True)
class WasteSimStats:
    """What the simulator did and sent."""

    uplinks: int = 0  # frames
    messages: int = 0  # uplink messages on the wire (duplicates included)
    events: int = 0
    states: int = 0
    dropped: int = 0  # messages lost while a broker was away
    refused: int = 0  # bad route or fault messages


@dataclass(slots=True)
class _Link:
    url: str
    subscriptions: tuple[str, ...]
    queue: collections.deque[tuple[str, bytes, int, bool]]
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    ready: asyncio.Event = field(default_factory=asyncio.Event)


def parse_fault(spec: str) -> tuple[str, str]:
    """ "TARGET:FAULT" (a bin or truck id and a fault) or a ValueError saying what is wrong."""
    target, sep, fault = spec.rpartition(":")
    known = (*SENSOR_FAULTS, *TRUCK_FAULTS)
    if not sep or not target or fault not in known:
        raise ValueError(f"fault {spec!r}: expected TARGET:FAULT with FAULT one of {', '.join(known)}")
    return target, fault


class WasteSimulator(Service):
    """Bins with fill sensors and collection trucks on one clock, talking MQTT.

    Uplinks go to `mqtt_url`; the truck protocol runs on `fleet_mqtt_url` (the settings'
    `fleet_mqtt_url`, else `mqtt_url`). `async with` connects (and waits until subscribed),
    runs the step loop, and on exit cancels and awaits everything it started.
    """

    service_name = "waste_sim"

    def __init__(
        self,
        settings: WasteSettings,
        bins: Sequence[Bin],
        clock: Clock,
        *,
        mqtt_url: str,
        fleet_mqtt_url: str | None = None,
        seed: int = 0,
        timezone: str = "Europe/Berlin",
        faults: Sequence[str] = (),
        fault_rate_per_day: float = 0.0,
        formats: FormatChoice = "both",
        step_s: float = 10.0,
        state_every_s: float = 20.0,
        duplicate_p: float = 0.03,
        out_of_order_p: float = 0.01,
        initial: tuple[float, float] = (0.05, 0.6),
        app: str | None = None,
        client_id: str = "",
        uplink_qos: int = 1,
    ) -> None:
        super().__init__()
        BrokerAddress.parse(mqtt_url)  # a bad URL fails here, naming itself
        if uplink_qos not in (0, 1):
            raise ValueError(f"uplink_qos must be 0 or 1, not {uplink_qos!r}")
        # A network server forwards uplinks at QoS 0 or 1; the ingest copes with both
        # (duplicates and out-of-order frames are expected either way).
        self._uplink_qos = uplink_qos
        fleet_url = fleet_mqtt_url or settings.fleet_mqtt_url or mqtt_url
        BrokerAddress.parse(fleet_url)
        self._clock = clock
        self._settings = settings
        self._seed = seed
        now = clock.now()
        self.model = FillModel(bins, start=now, seed=seed, timezone=timezone, initial=initial,
                               fault_rate_per_day=fault_rate_per_day)  # fmt: skip
        self.encoder = UplinkEncoder(bins, seed=seed, formats=formats, duplicate_p=duplicate_p,
                                     out_of_order_p=out_of_order_p, app=app)  # fmt: skip
        self._trucks = {t.id: TruckSim(t, settings, self.model, now) for t in settings.trucks}
        self._seq = dict.fromkeys(self._trucks, 0)
        self._state_at = dict.fromkeys(self._trucks, -math.inf)
        self._start_faults = [parse_fault(f) for f in faults]
        for target, fault in self._start_faults:
            self._check_target(target, fault)
        self._step_s = step_s
        self._state_every_s = state_every_s
        self.stats = WasteSimStats()
        self._client_id = client_id or f"waste-sim-{seed}-{id(self):x}"
        subs = (*(f"fleet/{t}/{kind}" for t in self._trucks for kind in ("route", "fault")), FAULT_TOPIC)
        self._links: dict[str, _Link] = {}
        self._uplink = self._link(mqtt_url, ())
        self._fleet = self._link(fleet_url, subs)
        self._stepped = asyncio.Event()

    def _link(self, url: str, subs: tuple[str, ...]) -> _Link:
        link = self._links.get(url)
        if link is None:
            link = self._links[url] = _Link(url, subs, collections.deque(maxlen=100_000))
        elif subs:
            link.subscriptions = link.subscriptions + subs
        return link

    def _check_target(self, target: str, fault: str) -> None:
        if fault in TRUCK_FAULTS:
            if target not in self._trucks:
                raise ValueError(f"fault {target}:{fault}: no truck {target!r} ({', '.join(self._trucks)})")
        elif target not in self.model.bins:
            raise ValueError(f"fault {target}:{fault}: no bin {target!r}")

    # -- views for tests and the demo -----------------------------------------------

    @property
    def bins(self) -> dict[str, Bin]:
        return self.model.bins

    def devices(self) -> dict[str, tuple[str, str]]:
        """DevEUI -> (bin id, profile name): the mapping `UplinkIngest` takes."""
        return {b.dev_eui: (b.id, PROFILE) for b in self.model.bins.values()}

    def fills(self) -> dict[str, float]:
        """True fill fractions now (the sensors report them with noise)."""
        return self.model.fills()

    def trucks(self) -> dict[str, TruckView]:
        return {k: t.view() for k, t in self._trucks.items()}

    def truck_positions(self) -> dict[str, tuple[float, float]]:
        return {k: (t.lat, t.lon) for k, t in self._trucks.items()}

    @property
    def emptied(self) -> int:
        return self.model.emptied

    @property
    def overflow_events(self) -> int:
        return self.model.overflow_events

    @property
    def overflow_hours(self) -> float:
        return self.model.overflow_hours

    @property
    def km_driven(self) -> float:
        return sum(t.km_total for t in self._trucks.values())

    def uplink_topics(self) -> tuple[str, str]:
        return self.encoder.topics()

    # -- faults ----------------------------------------------------------------------

    def inject(
        self, target: str, fault: str, *, active: bool = True, duration_s: float | None = None
    ) -> None:
        """Start (or with active=False end) a fault on a bin or a truck; ValueError if unknown."""
        self._check_target(target, fault)
        now = self._clock.now()
        if fault == "breakdown" and active:
            self._emit(target, self._trucks[target].breakdown(now))
        elif fault in {"repair", "breakdown"}:
            self._emit(target, self._trucks[target].repair(now))
        elif active:
            self.model.inject(target, fault, now, duration_s)
        else:
            self.model.clear(target, fault, now)
        self._wake_step()

    # -- lifecycle -------------------------------------------------------------------

    async def _start(self) -> None:
        for i, link in enumerate(self._links.values()):
            self.spawn(self._link_main(link, i), f"mqtt[{link.url}]")
        async with asyncio.timeout(CONNECT_TIMEOUT_S + 2):
            for link in self._links.values():
                await link.ready.wait()
        for target, fault in self._start_faults:
            self.inject(target, fault)
        now = self._clock.now()
        for tid in self._trucks:
            self._publish_state(tid, now)
        self.spawn(self._step_loop(), "step")
        log.info("sim_waste_started", bins=len(self.model.bins), trucks=len(self._trucks), seed=self._seed)

    # -- stepping ----------------------------------------------------------------------

    def step(self, now: float | None = None) -> None:
        """Move trucks and bins on to `now` and queue what they send (the loop calls this)."""
        now = self._clock.now() if now is None else now
        for tid, truck in self._trucks.items():
            self._emit(tid, truck.step(now))
        self.model.advance(now)
        for r in self.model.take_readings():
            self.stats.uplinks += 1
            for topic, payload in self.encoder.encode(r):
                self.stats.messages += 1
                self._send(self._uplink, topic, payload, self._uplink_qos, False)
        for tid, truck in self._trucks.items():
            every = self._state_every_s if truck.status not in (Status.IDLE, Status.BROKEN) else 300.0
            if truck.changed or now - self._state_at[tid] >= every:
                self._publish_state(tid, now)

    def _wake_step(self) -> None:
        self._stepped.set()

    async def _step_loop(self) -> None:
        min_real_s = 0.02
        for _ in range(100_000_000):
            self.step()
            interval = max(self._step_s, min_real_s * self._clock.speed)
            self._stepped.clear()
            try:
                async with asyncio.timeout(interval / self._clock.speed):
                    await self._stepped.wait()  # an injected fault or a new route: step at once
            except TimeoutError:
                pass

    def _emit(self, truck_id: str, events: Iterable[tuple[str, dict[str, Any]]]) -> None:
        for kind, fields in events:
            self._seq[truck_id] += 1
            self.stats.events += 1
            self._send(
                self._fleet,
                f"fleet/{truck_id}/event",
                event_message(kind, fields, self._seq[truck_id]),
                1,
                False,
            )
            log.info(
                "sim_truck_event",
                truck=truck_id,
                kind=kind,
                bin=fields.get("bin"),
                route=fields.get("route_id"),
            )

    def _publish_state(self, truck_id: str, now: float) -> None:
        truck = self._trucks[truck_id]
        truck.changed = False
        self._state_at[truck_id] = now
        self.stats.states += 1
        self._send(self._fleet, f"fleet/{truck_id}/state", state_message(truck, now), 0, True)

    def _send(self, link: _Link, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        if len(link.queue) == link.queue.maxlen:
            self.stats.dropped += 1
        link.queue.append((topic, payload, qos, retain))
        link.wake.set()

    # -- MQTT in ---------------------------------------------------------------------------

    def handle(self, topic: str, payload: bytes | bytearray | str) -> None:
        """One message from the fleet broker: a route, a truck fault or a simulator fault."""
        parts = topic.split("/")
        now = self._clock.now()
        try:
            if len(payload) > MAX_MESSAGE_BYTES:
                raise ValueError(f"oversized: {len(payload)} bytes")
            if topic == FAULT_TOPIC:
                msg = FaultMessage.model_validate_json(payload)
                self.inject(msg.target, msg.fault, active=msg.active, duration_s=msg.duration_s)
                return
            if len(parts) != 3 or parts[0] != "fleet" or parts[1] not in self._trucks:
                return
            tid = parts[1]
            truck = self._trucks[tid]
            if parts[2] == "fault":
                kind = parse_truck_fault(payload)
                self._emit(tid, truck.breakdown(now) if kind == "breakdown" else truck.repair(now))
            elif parts[2] == "route":
                if not payload:
                    return  # a cleared retained route
                try:
                    route = parse_route(payload)
                except RouteError as exc:
                    if exc.route_id is not None:
                        rejected = {"ts": now, "route_id": exc.route_id, "reason": exc.reason}
                        self._emit(tid, [("route_rejected", rejected)])
                    raise
                self._emit(tid, truck.take_route(route, now))
            self._wake_step()
        except (ValueError, KeyError, orjson.JSONDecodeError) as exc:
            self.stats.refused += 1
            log.warning("sim_waste_message_refused", topic=topic[:120], reason=str(exc).splitlines()[0][:200])

    async def _link_main(self, link: _Link, index: int) -> None:
        address = BrokerAddress.parse(link.url)
        backoff = Backoff(base_s=0.5, max_s=30.0)
        for _ in range(1_000_000):
            try:
                client = bulk_client(address, f"{self._client_id}-{index}", timeout_s=CONNECT_TIMEOUT_S)
                await open_client(client, CONNECT_TIMEOUT_S + 1)
                try:
                    for sub in link.subscriptions:
                        async with asyncio.timeout(CONNECT_TIMEOUT_S):
                            await client.subscribe(sub, qos=1)
                    if backoff.attempt:
                        log.info("sim_waste_mqtt_connected", url=link.url)
                    backoff.reset()
                    link.ready.set()
                    async with asyncio.TaskGroup() as tg:
                        tg.create_task(self._pump(link, client), name=f"waste_sim.pump[{link.url}]")
                        if link.subscriptions:
                            tg.create_task(self._receive(client), name=f"waste_sim.receive[{link.url}]")
                finally:
                    await client.__aexit__(None, None, None)
            except* (aiomqtt.MqttError, TimeoutError, OSError) as eg:
                if backoff.attempt == 0:
                    log.warning("sim_waste_mqtt_down", url=link.url, error=str(eg.exceptions[0]))
                await backoff.wait()

    async def _pump(self, link: _Link, client: aiomqtt.Client) -> None:
        queue = link.queue
        for _ in range(1_000_000_000):
            if not queue:
                link.wake.clear()
                await link.wake.wait()
                continue
            topic, payload, qos, retain = queue[0]
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                await client.publish(topic, payload, qos=qos, retain=retain)
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # 3.11: aiomqtt's `wait_for` can swallow a cancel that lands as the publish
                # completes; the TaskGroup cancels only once, so honour it here or hang.
                raise asyncio.CancelledError
            queue.popleft()

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = message.payload
            if isinstance(payload, bytes | bytearray | str):
                try:  # one bad message must not end the simulator's session
                    self.handle(str(message.topic), payload)
                except Exception:
                    self.stats.refused += 1
                    log.exception("sim_waste_message_failed", topic=str(message.topic)[:120])


# -- entry points -------------------------------------------------------------------------


async def run_waste_simulator(
    settings: Settings,
    *,
    mqtt_url: str | None = None,
    seed: int = 0,
    speed: float = 1.0,
    start: float | None = None,
    faults: Sequence[str] = (),
    fault_rate_per_day: float = 0.0,
    formats: FormatChoice = "both",
    until: float | None = None,
) -> WasteSimStats:
    """Run the site's bins and trucks until cancelled (or until clock time `until`): `edge simulate waste`.

    `start` is the clock's epoch start (default: now), so a daemon given the same start and
    speed shares the simulated time. Raises ConfigError for a bad site, ValueError for a bad fault.
    """
    path = settings.bins_path()
    if path is None:
        raise ValueError("the site has no [waste] bins inventory (waste.bins)")
    bins = load_bins(path, [z.id for z in settings.waste.zones])
    clock = sim_clock(speed, start)
    url = mqtt_url or settings.mqtt.url
    async with WasteSimulator(
        settings.waste,
        bins,
        clock,
        mqtt_url=url,
        seed=seed,
        timezone=settings.site.timezone,
        faults=faults,
        fault_rate_per_day=fault_rate_per_day,
        formats=formats,
    ) as sim:
        log.info("sim_waste_serving", url=url, bins=len(bins), trucks=len(settings.waste.trucks), speed=speed)
        for _ in range(100_000_000):
            await clock.sleep(60.0)
            if until is not None and clock.now() >= until:
                break
        return sim.stats


SITES = Path(__file__).resolve().parent.parent / "edge" / "app" / "sites"


def site_config(name_or_path: str) -> Path:
    """A site name under edge/app/sites (kreuzviertel, schwerte) or a path to a site.toml."""
    p = Path(name_or_path)
    if p.suffix == ".toml" or p.exists():
        return p
    return SITES / name_or_path / "site.toml"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `edge simulate waste` (for a CLI that wants to reuse them)."""
    p.add_argument("--site", default="", help="site name under edge/app/sites (kreuzviertel, schwerte)")
    p.add_argument("--config", type=Path, help="a site.toml with a [waste] section")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--speed", type=float, default=1.0, help="simulated seconds per real second")
    p.add_argument("--fault", action="append", default=[], metavar="TARGET:FAULT", help="inject at start")
    p.add_argument("--fault-rate", type=float, default=0.0, help="random sensor faults per bin per day")
    p.add_argument("--formats", choices=["both", "chirpstack", "tts"], default="both")
    p.add_argument("--mqtt", default="", help="broker URL (default: the site's mqtt.url)")


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m simulators.waste --site kreuzviertel --speed 300 --fault B0007:fire`."""
    from edge import logs
    from edge.errors import ConfigError
    from edge.settings import load_settings

    p = argparse.ArgumentParser(prog="python -m simulators.waste", description=__doc__.splitlines()[0])
    add_arguments(p)
    args = p.parse_args(argv)
    if args.speed <= 0:
        p.error("--speed must be positive")
    logs.configure("info", "auto")
    try:
        config = args.config or site_config(args.site or "kreuzviertel")
        settings = load_settings(config)
        asyncio.run(
            run_waste_simulator(
                settings,
                mqtt_url=args.mqtt or None,
                seed=args.seed,
                speed=args.speed,
                faults=args.fault,
                fault_rate_per_day=args.fault_rate,
                formats=args.formats,
            )
        )
    except (ConfigError, ValueError) as exc:
        print(f"edge simulate waste: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
