"""The site a dashboard bench publishes: retained state and live updates as the daemon sends them.

Sizes come from `Site` (city size by default, env `BENCH_TUI_<FIELD>`, e.g. `BENCH_TUI_LAMPS=5000`;
`--quick` is a tenth). Topics come from the topic table (`edge.topics`) and payloads from the
API's models (`edge.payloads`), filled as `edge.app.north` fills them, so the dashboard reads what
the daemon publishes. Rates per kind (`Site.rates`): lamp states at what a 10 s poll with the
power dead band produces (`lamp_changes_per_poll` of the lamps per poll), lamp telemetry every
60 s (North's default), chargers every few seconds, feeders every 2 s, trucks every 5 s, bins
about once a second, displays every minute, car parks every 5 s, controllers every 10 min, an
alarm now and then; and, once per live phase, every lamp's state within one poll round (a plan
slot starting: the daemon sees the new levels as its 10 s polls come round, `SWITCH_S`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection

import aiomqtt
import orjson
from pydantic import BaseModel

from edge.payloads import (
    AlarmMessage,
    ChargerState,
    ControllerState,
    DisplayState,
    FeederState,
    LampState,
    LampTelemetry,
    ParkingState,
)
from edge.topics import by_name

TICK_S = 0.05
SWITCH_S = 10.0  # a plan slot's new level reaches every lamp's state within one poll round


@dataclass(frozen=True)
class Site:
    """How big the published site is, and how often a lamp's state changes."""

    lamps: int = 53_800
    controllers: int = 538
    chargers: int = 680
    feeders: int = 100
    displays: int = 64
    car_parks: int = 20
    bins: int = 2000
    trucks: int = 20
    lamp_changes_per_poll: float = 0.01  # share of the lamps whose state a 10 s poll changes

    @classmethod
    def from_env(cls, quick: bool) -> Site:
        """City size (a tenth with `quick`), each size overridable by `BENCH_TUI_<FIELD>`."""
        values: dict[str, float] = {}
        for f in dataclasses.fields(cls):
            default = f.default
            assert isinstance(default, int | float)
            if quick and isinstance(default, int):
                default = max(1, default // 10)
            raw = os.environ.get(f"BENCH_TUI_{f.name.upper()}")
            values[f.name] = type(default)(raw) if raw else default
        return cls(**values)  # type: ignore[arg-type]

    def rates(self) -> dict[str, float]:
        """Messages per second of each kind in steady state."""
        return {
            "lamp_state": self.lamps * self.lamp_changes_per_poll / 10.0,
            "lamp_telemetry": self.lamps / 60.0,
            "controller": self.controllers / 600.0,
            "charger": self.chargers / 5.0,
            "feeder": self.feeders / 2.0,
            "display": self.displays / 60.0,
            "parking": self.car_parks / 5.0,
            "bin": self.bins / 1800.0,
            "truck": self.trucks / 5.0,
            "alarm": 0.2,
        }

    def describe(self) -> str:
        return (
            f"{self.lamps} lamps, {self.controllers} controllers, {self.chargers} chargers, "
            f"{self.displays} displays, {self.bins} bins, {self.trucks} trucks"
        )


def _dump(model: BaseModel) -> bytes:
    return orjson.dumps(model.model_dump(mode="json"))


def lamp_id(i: int) -> str:
    return f"L{i:05d}"


def lamp_state(base: str, i: int, level: float, segment: str = "", device: str = "") -> tuple[str, bytes]:
    """A lamp's retained state as North publishes it (`lights/{lamp}/state`)."""
    dev = device or lamp_id(i)
    seg = segment or f"segment-{i // 50:04d}"
    msg = LampState(
        device_id=dev, online=True, level_cmd=level, level_actual=level, power_w=round(7 + 0.63 * level, 1),
        failures=[], alarms=[], source="plan", segment=seg, group=f"{seg}:M4:std", ts=time.time(),
    )  # fmt: skip
    return by_name("lamp_state").topic(base, lamp=dev), _dump(msg)


class Maker:
    """Builds the messages of one site: `make(kind, i, k)` is device `i`'s k-th message of a kind."""

    def __init__(self, site: Site, base: str) -> None:
        self.site = site
        self.base = base
        self.counts = {
            "lamp_state": site.lamps, "lamp_telemetry": site.lamps, "controller": site.controllers,
            "charger": site.chargers, "feeder": site.feeders, "display": site.displays,
            "parking": site.car_parks, "bin": site.bins, "truck": site.trucks, "alarm": site.lamps,
        }  # fmt: skip
        self._makers: dict[str, Callable[[int, int], list[tuple[str, bytes]]]] = {
            "lamp_state": lambda i, k: [lamp_state(base, i, 40.0 + (k % 3) * 10)],
            "lamp_telemetry": self._telemetry, "controller": self._controller, "charger": self._charger,
            "feeder": self._feeder, "display": self._display, "parking": self._parking, "bin": self._bin,
            "truck": self._truck, "alarm": self._alarm,
        }  # fmt: skip

    def make(self, kind: str, i: int, k: int) -> list[tuple[str, bytes]]:
        return self._makers[kind](i, k)

    def _topic(self, name: str, **params: str) -> str:
        return by_name(name).topic(self.base, **params)

    def _telemetry(self, i: int, k: int) -> list[tuple[str, bytes]]:
        level = 40.0 + (k % 3) * 10
        msg = LampTelemetry(
            device_id=lamp_id(i), level_actual=level, power_w=round(7 + 0.63 * level, 1), energy_kwh=812.0 + i,
            hours=11000.0 + i + k / 60, switch_count=3000 + i, ts=time.time(),
        )  # fmt: skip
        return [(self._topic("lamp_telemetry", lamp=lamp_id(i)), _dump(msg))]

    def _controller(self, i: int, k: int) -> list[tuple[str, bytes]]:
        dev = f"ctl-{i:04d}"
        msg = ControllerState(
            device_id=dev, online=True, failsafe_active=k % 2 == 1, alarms=[], ts=time.time()
        )
        return [(self._topic("controller_state", controller=dev), _dump(msg))]

    def _charger(self, i: int, k: int) -> list[tuple[str, bytes]]:
        cid = f"cp-{i:04d}"
        car = (i + k) % 3 != 0
        msg = ChargerState(
            device_id=cid, online=True, status="Charging" if car else "Available", car_connected=car,
            current_limit_a=16.0 if car else 0.0, power_kw=3.7 if car else 0.0, session_id=f"s-{i}-{k}" if car else None,
            session_energy_kwh=float(k % 20), energy_needed_kwh=12.0, departure_ts=time.time() + 3600,
            planned_a=16.0 if car else None, feeder=f"feeder-{i % self.site.feeders:03d}", alarms=[], source="plan",
            ts=time.time(),
        )  # fmt: skip
        return [(self._topic("charger_state", charger=cid), _dump(msg))]

    def _feeder(self, i: int, k: int) -> list[tuple[str, bytes]]:
        fid = f"feeder-{i:03d}"
        msg = FeederState(
            feeder=fid, limit_a=40.0, lighting_a=4.0, setpoints_a=30.0, measured_a=20.0 + k % 7,
            chargers=self.site.chargers // max(1, self.site.feeders), ts=time.time(),
        )  # fmt: skip
        return [(self._topic("feeder_state", feeder=fid), _dump(msg))]

    def _display(self, i: int, k: int) -> list[tuple[str, bytes]]:
        did = f"led-{i:03d}"
        msg = DisplayState(
            device_id=did, online=True, shown=f"P{i % max(1, self.site.car_parks)} FREI {k % 200}\n<-",
            message_id=k, brightness=40.0, pixel_faults=0, alarms=[], ts=time.time(),
        )  # fmt: skip
        return [(self._topic("display_state", display=did), _dump(msg))]

    def _parking(self, i: int, k: int) -> list[tuple[str, bytes]]:
        pid = f"p-{i:02d}"
        msg = ParkingState(
            car_park=pid,
            name=f"P {i}",
            capacity=300,
            free=(k * 7 + i) % 300,
            open=True,
            fresh=True,
            ts=time.time(),
        )
        return [(self._topic("parking_state", car_park=pid), _dump(msg))]

    def _bin(self, i: int, k: int) -> list[tuple[str, bytes]]:
        """A bin's state as the waste controller derives it (`waste/bins/{bin}/state`)."""
        now = time.time()
        fill = ((i * 37 + k) % 100) / 100
        body = {
            "id": f"B{i:04d}", "lat": 51.505 + (i % 50) * 2e-4, "lon": 7.445 + (i // 50) * 5e-4,
            "kind": ("residential", "shopping", "park")[i % 3], "zone": f"z{i % 8}", "fill": fill,
            "rate_per_h": 0.01, "full_ts": now + 3600 * (0.8 - fill) / 0.01 if fill < 0.8 else now,
            "battery": 90.0, "temperature": 12.0, "alarms": [], "status": "ok", "last_seen_ts": now,
            "last_emptied_ts": now - 86400, "plan": "mandatory" if fill >= 0.8 else "none", "forced": False,
            "excluded": False, "ts": now,
        }  # fmt: skip
        return [(self._topic("bin_state", bin=f"B{i:04d}"), orjson.dumps(body))]

    def _truck(self, i: int, k: int) -> list[tuple[str, bytes]]:
        """A truck's state (`waste/trucks/{truck}/state`)."""
        now = time.time()
        body = {
            "id": f"T{i}", "online": True, "status": "collecting", "lat": 51.51, "lon": 7.45, "load_l": 100.0 * k,
            "load_kg": 20.0 * k, "load_pct": min(100.0, k / 2), "route_id": f"r-{i}", "stop_index": k % 40,
            "stops_total": 40, "bins_done": k % 40, "bins_total": 38, "odometer_km": k * 0.1, "last_seen_ts": now,
            "ts": now,
        }  # fmt: skip
        return [(self._topic("truck_state", truck=f"T{i}"), orjson.dumps(body))]

    def _alarm(self, i: int, k: int) -> list[tuple[str, bytes]]:
        dev = lamp_id((i * 97) % max(1, self.site.lamps))
        active = k % 2 == 0
        body = _dump(
            AlarmMessage(device_id=dev, code="power_high", severity="minor", active=active, ts=time.time())
        )
        return [
            (self._topic("alarm_events"), body),
            (self._topic("alarm_active", device=dev, code="power_high"), body if active else b""),
        ]

    def snapshot(self) -> list[tuple[str, bytes]]:
        """The retained state of the whole site, as a dashboard finds it on connecting."""
        msgs = [lamp_state(self.base, i, 40.0) for i in range(self.site.lamps)]
        for kind in ("controller", "charger", "feeder", "display", "parking", "bin", "truck"):
            for i in range(self.counts[kind]):
                msgs += self.make(kind, i, 0)
        return msgs


async def _publish(client: aiomqtt.Client, msgs: list[tuple[str, bytes]], *, retain: bool) -> None:
    for i in range(0, len(msgs), 500):
        await asyncio.gather(*(client.publish(t, p, qos=1, retain=retain) for t, p in msgs[i : i + 500]))


def publisher(conn: Connection, url: str, base: str, site: Site) -> None:
    """(child process) Publish the snapshot, then one live phase per request (seconds) until None;
    answers ("ready", retained) and ("done", published) per phase; clears the retained state at the end."""
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    from tui.client import BrokerUrl

    async def main() -> None:
        addr = BrokerUrl.parse(url)
        maker = Maker(site, base)
        async with aiomqtt.Client(
            addr.host, addr.port, identifier=f"bench-tui-pub-{uuid.uuid4().hex[:6]}",
            protocol=aiomqtt.ProtocolVersion.V311, timeout=30, max_queued_outgoing_messages=None,
        ) as client:  # fmt: skip
            client.pending_calls_threshold = 10_000_000
            retained = maker.snapshot()
            await _publish(client, retained, retain=True)
            conn.send(("ready", len(retained)))
            while (request := await asyncio.to_thread(conn.recv)) is not None:
                conn.send(("done", await live(client, maker, float(request))))
            await _publish(client, [(t, b"") for t, _ in retained], retain=True)

    asyncio.run(main())


async def live(client: aiomqtt.Client, maker: Maker, seconds: float) -> int:
    """One live phase: every kind at its rate, and a quarter in every lamp's state within SWITCH_S;
    returns the count published."""
    rates = maker.site.rates()
    due = dict.fromkeys(rates, 0.0)
    cursor = dict.fromkeys(rates, 0)
    published = 0
    t0 = time.monotonic()
    switch_at = t0 + seconds / 4
    switch = [lamp_state(maker.base, i, 60.0) for i in range(maker.site.lamps)]  # built before: no stall
    switched = 0
    while (now := time.monotonic()) < t0 + seconds:
        batch: list[tuple[str, bytes, int]] = []
        for kind, rate in rates.items():
            due[kind] += rate * TICK_S
            while due[kind] >= 1.0:
                due[kind] -= 1.0
                k = cursor[kind]
                cursor[kind] += 1
                count = maker.counts[kind]
                qos = 0 if kind in {"lamp_telemetry", "feeder", "parking"} else 1
                batch += [(t, p, qos) for t, p in maker.make(kind, k % count, k // count + 1)]
        if now >= switch_at and switched < len(switch):
            upto = min(len(switch), round(len(switch) * (now - switch_at + TICK_S) / SWITCH_S))
            batch += [(t, p, 1) for t, p in switch[switched:upto]]
            switched = upto
        for i in range(0, len(batch), 1000):
            await asyncio.gather(*(client.publish(t, p, qos=q) for t, p, q in batch[i : i + 1000]))
        published += len(batch)
        await asyncio.sleep(max(0.0, TICK_S - (time.monotonic() - now)))
    return published
