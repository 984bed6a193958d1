"""Car parks through the day: cars arrive (a Poisson process by hour), stay, and leave.

Counted car parks publish their free spaces over MQTT (`{prefix}/{site}/field/carparks/{id}`);
car parks with a LoRaWAN sensor in every bay publish each bay's state as uplinks, alternating
between ChirpStack v4 and The Things Stack v3 formats. Seeded, so a run is reproducible.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiomqtt
import orjson
import structlog

from devices.profiles.lorawan import default_profiles
from edge.clock import Clock
from simulators.lorawan import chirpstack_event, tts_uplink

log = structlog.get_logger(__name__)

# Arrivals per hour as a share of capacity, by local hour: shopping by day, events in the evening.
HOURLY_RATE = (0.02, 0.01, 0.01, 0.01, 0.01, 0.03, 0.08, 0.15, 0.2, 0.22, 0.25, 0.25,
               0.25, 0.22, 0.22, 0.25, 0.3, 0.35, 0.4, 0.35, 0.25, 0.15, 0.08, 0.04)  # fmt: skip
MEAN_STAY_H = 2.5


@dataclass(frozen=True, slots=True)
class SimCarPark:
    """A car park: a counter (no sensors) or a sensor in each bay (`sensors`, one per bay)."""

    id: str
    capacity: int
    sensors: tuple[str, ...] = ()


@dataclass(slots=True)
class _State:
    spec: SimCarPark
    departures: list[float] = field(default_factory=list)  # heap of departure times
    bays: list[bool] = field(default_factory=list)  # with sensors: which bays are taken

    @property
    def taken(self) -> int:
        return len(self.departures)


class ParkingSimulator:
    """Steps car parks on the shared clock and publishes what their counters and sensors see."""

    def __init__(
        self,
        car_parks: Sequence[SimCarPark],
        clock: Clock,
        *,
        base_topic: str,
        seed: int = 0,
        utc_offset_h: float = 1.0,
    ) -> None:
        self._rnd = random.Random(seed)
        self._clock = clock
        self._base = base_topic
        self._offset = utc_offset_h
        self._cps = {c.id: _State(c, bays=[False] * len(c.sensors)) for c in car_parks}
        self._profile = default_profiles()["parking_magnetic"]
        self._f_cnt = 0
        self._last = clock.now()
        self.arrivals = 0
        self.turned_away = 0

    def free(self, car_park: str) -> int:
        st = self._cps[car_park]
        return st.spec.capacity - st.taken

    def step(self, now: float) -> None:
        """Advance the car parks from the last step to `now`."""
        dt = max(0.0, now - self._last)
        self._last = now
        hour = int((now / 3600 + self._offset) % 24)
        for st in self._cps.values():
            while st.departures and st.departures[0] <= now:
                heapq.heappop(st.departures)
                if st.bays:
                    taken = [i for i, b in enumerate(st.bays) if b]
                    st.bays[self._rnd.choice(taken)] = False
            expected = HOURLY_RATE[hour] * st.spec.capacity * dt / 3600
            for _ in range(_poisson(self._rnd, expected)):
                self.arrivals += 1
                if st.taken >= st.spec.capacity:
                    self.turned_away += 1
                    continue
                heapq.heappush(st.departures, now + self._rnd.expovariate(1 / (MEAN_STAY_H * 3600)))
                if st.bays:
                    st.bays[self._rnd.choice([i for i, b in enumerate(st.bays) if not b])] = True

    async def publish(self, client: aiomqtt.Client) -> None:
        """Counters over MQTT; bay sensors as LoRaWAN uplinks (both formats)."""
        now = self._clock.now()
        self._f_cnt += 1
        for st in self._cps.values():
            if not st.spec.sensors:
                body = orjson.dumps({"free": self.free(st.spec.id), "ts": now})
                await client.publish(f"{self._base}/field/carparks/{st.spec.id}", body, qos=0)
                continue
            for i, (eui, taken) in enumerate(zip(st.spec.sensors, st.bays, strict=True)):
                build = chirpstack_event if i % 2 else tts_uplink
                topic, body = build(eui, f"{st.spec.id}-bay{i}", f_cnt=self._f_cnt, f_port=1,
                                    payload=self._profile.encode({"occupied": taken}), ts=now,
                                    dedup_id=f"{eui}-{self._f_cnt}")  # fmt: skip
                await client.publish(topic, body, qos=0)

    async def run(self, client: aiomqtt.Client, every_s: float = 300.0, steps: int = 1_000_000) -> None:
        """Step and publish every `every_s` clock seconds (bounded by `steps`)."""
        for _ in range(steps):
            self.step(self._clock.now())
            await self.publish(client)
            await self._clock.sleep(every_s)


def _poisson(rnd: random.Random, lam: float) -> int:
    """A Poisson draw (Knuth; fine for the small rates of one step)."""
    if lam <= 0:
        return 0
    if lam > 30:  # a long step: the normal approximation, without Knuth's long loop
        return max(0, round(rnd.gauss(lam, math.sqrt(lam))))
    limit, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rnd.random()
        if p <= limit:
            return k
        k += 1
