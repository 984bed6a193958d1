"""LoRaWAN sensors as a network server's MQTT integration shows them: ChirpStack v4 and TTS v3.

Parking sensors and bin fill sensors publish uplinks over MQTT (aiomqtt) in either
format, with what the field shows: fields at their default value left out (fCnt 0, snr 0
...), the same frame published twice with the same deduplication id (several gateways,
several integrations), occasional out-of-order frames, and frame counter resets (rejoin).
Payload bytes come from the same profiles the ingest decodes with (`LorawanProfile.encode`),
so the two cannot drift. Values come from a callback; `parking_occupancy` and `bin_fill`
are seeded processes for tests, demos and the bench.

The message builders (`chirpstack_event`, `tts_uplink`) are pure and usable on their own.
"""

from __future__ import annotations

import asyncio
import base64
import random
import zlib
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Self

import aiomqtt
import orjson
import structlog

from devices.profiles.lorawan import LorawanProfile, default_profiles
from edge.clock import Clock
from edge.events import Value
from edge.lifecycle import Service, ServiceState
from edge.mqtt import BrokerAddress
from simulators.mqtt import bulk_client, open_client

log = structlog.get_logger(__name__)

Format = Literal["chirpstack", "tts"]
Gateway = tuple[str, float, float]
"""(gateway id, rssi dBm, snr dB) of one gateway that heard a frame."""

APPLICATION_ID = "7d1b3f4e-2c8a-4c55-9d8e-0a1b2c3d4e5f"
TENANT_ID = "52f14cd4-c6f1-4fbd-8f87-4025e1d49242"
TTS_APP = "dortmund-sensors"
TTS_TENANT = "dos"
CONNECT_TIMEOUT_S = 10.0


def rfc3339(ts: float) -> str:
    """Epoch seconds as an RFC 3339 UTC time with microseconds."""
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def chirpstack_event(
    dev_eui: str,
    device_name: str,
    *,
    f_cnt: int,
    f_port: int,
    payload: bytes,
    ts: float,
    dedup_id: str,
    gateways: Sequence[Gateway] = (),
    decoded: Mapping[str, Any] | None = None,
    confirmed: bool = False,
    profile_name: str = "",
    dr: int = 5,
    application_id: str = APPLICATION_ID,
) -> tuple[str, bytes]:
    """A ChirpStack v4 `event/up` (topic, JSON), with default-valued fields left out as it does."""
    info: dict[str, Any] = {
        "tenantId": TENANT_ID,
        "tenantName": "DOS",
        "applicationId": application_id,
        "applicationName": "city-sensors",
        "deviceProfileName": profile_name,
        "deviceName": device_name,
        "devEui": dev_eui,
        "tags": {},
    }
    msg: dict[str, Any] = {
        "deduplicationId": dedup_id,
        "time": rfc3339(ts),
        "deviceInfo": {k: v for k, v in info.items() if v not in ("", {})},
        "devAddr": dev_eui[-8:],
        "adr": True,
        "dr": dr,
        "fCnt": f_cnt,
        "fPort": f_port,
        "confirmed": confirmed,
        "data": base64.b64encode(payload).decode(),
        "object": decoded,
        "rxInfo": [
            {k: v for k, v in (("gatewayId", gw), ("rssi", int(rssi)), ("snr", snr)) if v}
            for gw, rssi, snr in gateways
        ],
        "txInfo": {
            "frequency": 868100000,
            "modulation": {"lora": {"bandwidth": 125000, "spreadingFactor": 12 - dr, "codeRate": "CR_4_5"}},
        },
    }
    body = {k: v for k, v in msg.items() if v not in (0, False, "", None, [], {})}
    return f"application/{application_id}/device/{dev_eui}/event/up", orjson.dumps(body)


def tts_uplink(
    dev_eui: str,
    device_id: str,
    *,
    f_cnt: int,
    f_port: int,
    payload: bytes,
    ts: float,
    dedup_id: str,
    gateways: Sequence[Gateway] = (),
    decoded: Mapping[str, Any] | None = None,
    confirmed: bool = False,
    app: str = TTS_APP,
) -> tuple[str, bytes]:
    """A The Things Stack v3 `up` message (topic, JSON), empty fields left out as it does."""
    when = rfc3339(ts)
    uplink: dict[str, Any] = {
        "session_key_id": "AXA50K8eVvg3kzHyBavuVQ==",
        "f_port": f_port,
        "f_cnt": f_cnt,
        "frm_payload": base64.b64encode(payload).decode(),
        "decoded_payload": decoded,
        "confirmed": confirmed,
        "rx_metadata": [
            {
                k: v
                for k, v in (
                    ("gateway_ids", {"gateway_id": gw, "eui": gw.upper()[-16:]}),
                    ("rssi", rssi),
                    ("channel_rssi", rssi),
                    ("snr", snr),
                    ("received_at", when),
                )
                if v
            }
            for gw, rssi, snr in gateways
        ],
        "settings": {
            "data_rate": {"lora": {"bandwidth": 125000, "spreading_factor": 7, "coding_rate": "4/5"}},
            "frequency": "868100000",
        },
        "received_at": when,
        "consumed_airtime": "0.061696s",
    }
    body = {
        "end_device_ids": {
            "device_id": device_id,
            "application_ids": {"application_id": app},
            "dev_eui": dev_eui.upper(),
            "dev_addr": dev_eui[-8:].upper(),
        },
        "correlation_ids": [f"as:up:{dedup_id}", f"rpc:/ttn.lorawan.v3.AppAs/Up:{dedup_id}"],
        "received_at": when,
        "uplink_message": {k: v for k, v in uplink.items() if v not in (0, False, "", None, [], {})},
    }
    return f"v3/{app}@{TTS_TENANT}/devices/{device_id}/up", orjson.dumps(body)


def network_decoded(profile: LorawanProfile, payload: bytes) -> dict[str, Value]:
    """What the network server's codec would report for `payload`, under its own key names."""
    values, _ = profile.decode(payload)
    return {profile.decoded_keys.get(n, n): v for n, v in values.items()}


# -- value processes -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SimSensor:
    """One simulated LoRaWAN sensor: identity, profile and the format its server speaks."""

    dev_eui: str
    device_id: str
    profile: str
    format: Format


ValuesFn = Callable[[SimSensor, int, float], Mapping[str, Value]]
"""(sensor, frame index from 0, epoch seconds) -> values to encode with its profile."""


def parking_occupancy(seed: int, p_arrive: float = 0.3, p_leave: float = 0.2) -> ValuesFn:
    """A seeded two-state process per bay: free -> occupied with p_arrive per frame, back with p_leave."""
    state: dict[str, tuple[bool, int, float]] = {}

    def values(sensor: SimSensor, frame: int, _ts: float) -> Mapping[str, Value]:
        rng = random.Random(f"{seed}:{sensor.dev_eui}:{frame}")
        occupied, arrivals, battery = state.get(sensor.dev_eui, (False, 0, 100.0 - rng.uniform(0, 30)))
        if rng.random() < (p_leave if occupied else p_arrive):
            occupied = not occupied
            arrivals += occupied
        battery = max(0.0, battery - 0.01)
        state[sensor.dev_eui] = (occupied, arrivals & 0xFFFF, battery)
        return {
            "occupied": occupied,
            "battery": round(battery),
            "temperature": rng.randint(-5, 30),
            "arrivals": arrivals & 0xFFFF,
        }

    return values


def bin_fill(seed: int, height_mm: int = 1100, blind_mm: int = 150, fill_per_frame: float = 0.03) -> ValuesFn:
    """A seeded fill process per bin: fill grows with noise, the bin is emptied near full.

    The sensor sees the distance to the surface: height - fill x (height - blind zone).
    """
    fill: dict[str, float] = {}

    def values(sensor: SimSensor, frame: int, _ts: float) -> Mapping[str, Value]:
        rng = random.Random(f"{seed}:{sensor.dev_eui}:{frame}")
        level = fill.get(sensor.dev_eui, rng.uniform(0, 0.5)) + rng.uniform(0, 2 * fill_per_frame)
        if level > 0.95:
            level = rng.uniform(0, 0.05)  # emptied
        fill[sensor.dev_eui] = level
        distance = round(height_mm - level * (height_mm - blind_mm) + rng.gauss(0, 5))
        return {
            "distance_mm": max(0, min(5000, distance)),
            "battery": rng.randint(60, 100),
            "lid_open": rng.random() < 0.02,
            "tilt": rng.random() < 0.005,
            "fire": False,
            "temperature": rng.randint(-5, 35),
            "battery_v": round(rng.uniform(3.3, 3.6), 3),
        }

    return values


def demo_values(seed: int) -> ValuesFn:
    """Parking occupancy for parking profiles, bin fill for bin profiles."""
    parking, bins = parking_occupancy(seed), bin_fill(seed)

    def values(sensor: SimSensor, frame: int, ts: float) -> Mapping[str, Value]:
        return (bins if sensor.profile.startswith("bin") else parking)(sensor, frame, ts)

    return values


def demo_sensors(parking: int, bins: int, *, prefix: int = 0xA8) -> list[SimSensor]:
    """`parking` bay sensors and `bins` bin sensors, formats alternating ChirpStack / TTS."""
    out = []
    for i in range(parking + bins):
        kind = "parking" if i < parking else "bin"
        out.append(
            SimSensor(
                dev_eui=f"{prefix:02x}4040{i:010x}",
                device_id=f"{kind}-{i + 1:04d}",
                profile="parking_magnetic" if kind == "parking" else "bin_ultrasonic",
                format="chirpstack" if i % 2 == 0 else "tts",
            )
        )
    return out


# -- simulator -----------------------------------------------------------------


@dataclass(slots=True)
class SimStats:
    """What the simulator sent: messages on the wire, distinct frames, and the quirks."""

    messages: int = 0
    frames: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    rejoins: int = 0
    sent_frames: list[tuple[str, int, float]] = field(default_factory=list)
    """(device_id, f_cnt, ts) of every distinct frame, in the order frames were made."""


SimState = ServiceState  # the name this module exported before the shared lifecycle


class LorawanSimulator(Service):
    """Sensors publishing uplinks; `frames()` is pure, `publish_round()` sends over MQTT.

    Per frame, with the seeded RNG: `duplicate_p` publishes it twice (same dedup id,
    gateways in another order), `out_of_order_p` makes a second frame and publishes it
    before the first, `rejoin_p` resets the frame counter to 0 first, `decoded_p` adds
    the network server's decoded object. Frame counters start at 0, so every sensor's
    first ChirpStack frame has no `fCnt` and its first TTS frame no `f_cnt`.
    """

    service_name = "lorawan_sim"

    def __init__(
        self,
        sensors: Sequence[SimSensor],
        values: ValuesFn,
        clock: Clock,
        *,
        seed: int = 0,
        profiles: Mapping[str, LorawanProfile] | None = None,
        duplicate_p: float = 0.2,
        out_of_order_p: float = 0.05,
        rejoin_p: float = 0.0,
        decoded_p: float = 0.5,
        record: bool = True,
        app: str | None = None,
    ) -> None:
        super().__init__()
        self.sensors = list(sensors)
        self._profiles = profiles if profiles is not None else default_profiles()
        for s in self.sensors:
            if s.profile not in self._profiles:
                raise ValueError(f"{s.device_id}: unknown profile {s.profile!r}")
        self._values = values
        self._clock = clock
        self._rng = random.Random(seed)
        self._seed = seed
        self._dup_p = duplicate_p
        self._ooo_p = out_of_order_p
        self._rejoin_p = rejoin_p
        self._decoded_p = decoded_p
        self._record = record
        self._app = app
        self._f_cnt = {s.dev_eui: 0 for s in self.sensors}
        self._frame_no = {s.dev_eui: 0 for s in self.sensors}
        self._last_ts = {s.dev_eui: 0.0 for s in self.sensors}
        self._ids = 0
        self._fleet = zlib.crc32(",".join(sorted(s.dev_eui for s in self.sensors)).encode())
        self.stats = SimStats()
        self._client: aiomqtt.Client | None = None
        self._url = ""
        self._qos = 1

    def devices(self) -> dict[str, tuple[str, str]]:
        """DevEUI -> (device_id, profile name), the mapping `UplinkIngest` takes."""
        return {s.dev_eui: (s.device_id, s.profile) for s in self.sensors}

    def _build(
        self,
        sensor: SimSensor,
        *,
        f_cnt: int,
        f_port: int,
        payload: bytes,
        ts: float,
        dedup_id: str,
        gateways: Sequence[Gateway],
        decoded: Mapping[str, Any] | None,
    ) -> tuple[str, bytes]:
        if sensor.format == "chirpstack":
            return chirpstack_event(
                sensor.dev_eui,
                sensor.device_id,
                f_cnt=f_cnt,
                f_port=f_port,
                payload=payload,
                ts=ts,
                dedup_id=dedup_id,
                gateways=gateways,
                decoded=decoded,
                profile_name=sensor.profile,
                application_id=self._app or APPLICATION_ID,
            )
        return tts_uplink(
            sensor.dev_eui,
            sensor.device_id,
            f_cnt=f_cnt,
            f_port=f_port,
            payload=payload,
            ts=ts,
            dedup_id=dedup_id,
            gateways=gateways,
            decoded=decoded,
            app=self._app or TTS_APP,
        )

    def topics(self) -> tuple[str, str]:
        """MQTT subscriptions that match exactly this simulator's uplinks (both formats)."""
        return (
            f"application/{self._app or APPLICATION_ID}/device/+/event/up",
            f"v3/{self._app or TTS_APP}@{TTS_TENANT}/devices/+/up",
        )

    def _frame(self, sensor: SimSensor, ts: float) -> list[tuple[str, bytes]]:
        rng = self._rng
        profile = self._profiles[sensor.profile]
        f_cnt = self._f_cnt[sensor.dev_eui]
        self._f_cnt[sensor.dev_eui] = f_cnt + 1
        frame = self._frame_no[sensor.dev_eui]
        self._frame_no[sensor.dev_eui] = frame + 1
        values = self._values(sensor, frame, ts)
        self._ids += 1
        # Unique across simulators too: two with one seed (a demo's bins and its storm) made the
        # same ids, and the ingest dropped one's frames as duplicates of the other's.
        dedup_id = f"{self._seed:08x}-{self._fleet:08x}-{self._ids:016x}"
        gateways = [
            (f"{0xB827EB000000 + g:016x}", float(rng.randint(-120, -60)), round(rng.uniform(-12, 10), 1))
            for g in rng.sample(range(8), rng.randint(1, 3))
        ]
        if rng.random() < 0.1:
            gateways[0] = (gateways[0][0], gateways[0][1], 0.0)  # snr 0: left out on the wire
        payload = profile.encode(values)
        decoded = network_decoded(profile, payload) if rng.random() < self._decoded_p else None
        port = profile.f_ports[0]
        out = [
            self._build(
                sensor,
                f_cnt=f_cnt,
                f_port=port,
                payload=payload,
                ts=ts,
                dedup_id=dedup_id,
                gateways=gateways,
                decoded=decoded,
            )
        ]
        self.stats.frames += 1
        if self._record:
            self.stats.sent_frames.append((sensor.device_id, f_cnt, ts))
        if rng.random() < self._dup_p:
            # another integration (or gateway path) delivers the same frame again
            dup = self._build(
                sensor,
                f_cnt=f_cnt,
                f_port=port,
                payload=payload,
                ts=ts,
                dedup_id=dedup_id,
                gateways=gateways[::-1],
                decoded=decoded,
            )
            out.append(dup)
            self.stats.duplicates += 1
        return out

    def frames(self, ts: float | None = None, only: Collection[str] | None = None) -> list[tuple[str, bytes]]:
        """One round: a frame (or two) per sensor at `ts` (default: the clock), as (topic, JSON);
        `only`: just these sensors (by device id), as an event-driven uplink (a button) is."""
        now = self._clock.now() if ts is None else ts
        out: list[tuple[str, bytes]] = []
        for i, sensor in enumerate(self.sensors):
            if only is not None and sensor.device_id not in only:
                continue
            # each sensor's times strictly increase, a little apart within a round
            t = max(now + i * 1e-3, self._last_ts[sensor.dev_eui] + 1e-3)
            if self._rng.random() < self._rejoin_p and self._f_cnt[sensor.dev_eui] > 0:
                self._f_cnt[sensor.dev_eui] = 0
                self.stats.rejoins += 1
            if self._rng.random() < self._ooo_p:
                first = self._frame(sensor, t)
                t += 1e-3
                second = self._frame(sensor, t)
                out += second + first  # the newer frame overtakes the older one
                self.stats.out_of_order += 1
            else:
                out += self._frame(sensor, t)
            self._last_ts[sensor.dev_eui] = t
        self.stats.messages += len(out)
        return out

    # -- MQTT --------------------------------------------------------------------

    def connect_to(self, url: str, *, qos: int = 1) -> Self:
        """Set the broker (`mqtt://host:port`) and QoS for `async with`."""
        self._url = url
        self._qos = qos
        return self

    async def _start(self) -> None:
        if not self._url:
            raise RuntimeError("call connect_to(url) before opening the simulator")
        address = BrokerAddress.parse(self._url)
        client = bulk_client(address, f"lorawan-sim-{self._seed}-{id(self):x}", timeout_s=CONNECT_TIMEOUT_S)
        await open_client(client, CONNECT_TIMEOUT_S + 1)
        self._client = client

    async def _stop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.__aexit__(None, None, None)

    async def publish(self, messages: Sequence[tuple[str, bytes]]) -> None:
        """Publish (topic, payload) pairs in order."""
        client = self._client
        if client is None:
            raise RuntimeError("simulator is not connected (use `async with sim.connect_to(url)`)")
        qos = self._qos
        for topic, payload in messages:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                await client.publish(topic, payload, qos=qos)

    async def publish_round(self, ts: float | None = None) -> int:
        """Make one round of frames and publish it; returns the messages sent."""
        messages = self.frames(ts)
        await self.publish(messages)
        return len(messages)

    async def run(self, interval_s: float, rounds: int | None = None) -> None:
        """Publish a round every `interval_s` of clock time, `rounds` times or until cancelled.

        Rounds keep to a grid: a round that took long to publish (a busy broker, a fast clock)
        does not push every later uplink back, as a sensor's own timer would not."""
        done = 0
        start = self._clock.now()
        while rounds is None or done < rounds:
            await self.publish_round()
            done += 1
            await self._clock.sleep(max(0.0, start + done * interval_s - self._clock.now()))
