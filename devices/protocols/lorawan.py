"""LoRaWAN uplinks from a network server's MQTT integration: parse, dedupe, order, decode.

Two formats, told apart by the topic:

- ChirpStack v4 (`application/{applicationId}/device/{devEui}/event/up`): protobuf JSON,
  so every field at its default value is left out (fCnt 0, fPort 0, confirmed false, no
  `object`, snr 0 ...). `parse_chirpstack` fills in the defaults.
- The Things Stack v3 (`v3/{app}@{tenant}/devices/{id}/up`, or `v3/{app}/devices/{id}/up`
  on a single-tenant install): empty fields left out the same way. `parse_tts`.

Both return an `Uplink` or raise `PayloadError` with a short reason (those of
`edge.decode`: `payload_too_large`, `invalid_utf8`, `too_deep`, `malformed_json`; and
`not_an_uplink`, `bad_base64`, `missing_field`, `bad_field`,
`topic_mismatch`): never anything else, whatever the bytes.

`UplinkIngest` turns uplinks into `Telemetry(device_id, received_at, values)`:

- Duplicates are dropped: the same deduplication id (ChirpStack `deduplicationId`, the
  TTS `as:up:` correlation id; an LRU of recent ids), or the same frame counter of the
  same device within `dup_window_s` (a bounded window of recent counters per device).
- Late frames (a lower frame counter than the newest seen, received earlier) never reach
  `publish`: the state store keeps the newest value of a point whatever the timestamp,
  so a late "free" would overwrite a current "occupied". They go to `on_late` instead,
  flagged `late=True`, for consumers that keep history (fill-rate estimation).
- A frame counter reset (rejoin, reboot, or a 16-bit counter wrapping) is a lower counter
  received *after* the newest frame that is either small (< `reset_below`) or far behind
  (> `reorder_window`): a new session starts and the frame is current.
- Unknown devices and frames on ports the profile does not describe are counted and
  dropped; payloads that do not fit the profile are refused and counted by reason, and so
  is a frame whose time lies more than `max_clock_skew_s` ahead of the daemon's clock
  (`future_ts`: it would stay "current" until then).
"""

from __future__ import annotations

import binascii
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from enum import Enum
from typing import Any, Literal

import structlog
from paho.mqtt.client import topic_matches_sub

from devices.profiles.lorawan import LorawanProfile
from devices.protocols.mqtt import MqttDeviceClient, MqttDriver
from edge.clock import Clock
from edge.decode import Refusal, check_ts, decode_json
from edge.errors import ConfigError, PayloadError
from edge.events import Telemetry, Value
from edge.mqtt import TlsFiles

log = structlog.get_logger(__name__)

Source = Literal["chirpstack", "tts"]

MAX_UPLINK_BYTES = 64 * 1024
"""A network server's uplink event is 1-3 kB; anything near this is not one."""
MAX_UPLINK_DEPTH = 16
"""An uplink nests 4-5 levels (rxInfo[].metadata, a decoded object); far more is not one."""

TOPICS = ("application/+/device/+/event/up", "v3/+/devices/+/up")
"""MQTT subscriptions that carry uplinks in the two formats (default topic templates)."""

_F_CNT_MAX = (1 << 32) - 1
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True, slots=True)
class Uplink:
    """One LoRaWAN uplink as the network server reported it, defaults filled in.

    `received_at` is the network server's time (epoch seconds). `rssi`/`snr` are those of
    the best gateway (highest RSSI, then SNR), None without gateway metadata.
    """

    dev_eui: str
    device_name: str
    f_cnt: int
    f_port: int
    payload: bytes
    decoded: Mapping[str, Any] | None
    received_at: float
    dedup_id: str | None
    rssi: float | None
    snr: float | None
    source: Source
    confirmed: bool = False
    gateways: int = 0


# -- parsing -------------------------------------------------------------------


def _load(payload: bytes | bytearray | str) -> dict[str, Any]:
    data = decode_json(payload, max_bytes=MAX_UPLINK_BYTES, max_depth=MAX_UPLINK_DEPTH)
    if isinstance(data, Refusal):
        raise PayloadError(data.reason, data.detail)
    if not isinstance(data, dict):
        raise PayloadError("not_an_uplink", f"a JSON {type(data).__name__}, not an object")
    return data


def _table(obj: Mapping[str, Any], key: str, path: str) -> Mapping[str, Any] | None:
    value = obj.get(key)
    if value is None or isinstance(value, dict):
        return value
    raise PayloadError("bad_field", f"{path}{key}: expected an object")


def _string(obj: Mapping[str, Any] | None, key: str, path: str) -> str | None:
    if obj is None:
        return None
    value = obj.get(key)
    if value is None or isinstance(value, str):
        return value
    raise PayloadError("bad_field", f"{path}{key}: expected a string")


def _integer(obj: Mapping[str, Any], key: str, path: str, hi: int) -> int:
    """An unsigned integer field; absent means 0 (protobuf JSON leaves defaults out)."""
    value = obj.get(key)
    if value is None:
        return 0
    # protobuf JSON may render 64-bit integers as strings
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= hi:
        raise PayloadError("bad_field", f"{path}{key}: expected an integer 0..{hi}, got {value!r}")
    return value


def _number(obj: Mapping[str, Any], key: str, path: str) -> float | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PayloadError("bad_field", f"{path}{key}: expected a number")
    return float(value)


def _dev_eui(value: str, path: str) -> str:
    eui = value.lower()
    if len(eui) != 16 or not _HEX.issuperset(eui):
        raise PayloadError("bad_field", f"{path}: not a 64-bit EUI in hex: {value[:32]!r}")
    return eui


def _time(value: Any, path: str) -> float:
    if not isinstance(value, str):
        raise PayloadError("bad_field", f"{path}: expected an RFC 3339 time")
    try:
        dt = datetime.fromisoformat(value)
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        return dt.timestamp()
    except (ValueError, OverflowError):
        raise PayloadError("bad_field", f"{path}: not an RFC 3339 time: {value[:40]!r}") from None


def _base64(value: Any, path: str) -> bytes:
    if value is None:
        return b""
    if not isinstance(value, str):
        raise PayloadError("bad_field", f"{path}: expected a base64 string")
    try:
        return binascii.a2b_base64(value, strict_mode=True)
    except ValueError as exc:  # binascii.Error, or non-ASCII text
        raise PayloadError("bad_base64", f"{path}: {exc}") from None


def _decoded(obj: Mapping[str, Any], key: str, path: str) -> Mapping[str, Any] | None:
    value = obj.get(key)
    if value is None or isinstance(value, dict):
        return value
    raise PayloadError("bad_field", f"{path}{key}: expected an object")


def _gateways(
    obj: Mapping[str, Any], key: str, path: str, rssi_keys: tuple[str, ...]
) -> tuple[float | None, float | None, int, list[Mapping[str, Any]]]:
    """Best (rssi, snr) over the gateways that heard the frame, their count, the entries.

    A gateway entry without rssi or snr had them at 0 (left out as defaults).
    """
    entries = obj.get(key)
    if entries is None:
        return None, None, 0, []
    if not isinstance(entries, list):
        raise PayloadError("bad_field", f"{path}{key}: expected an array")
    best: tuple[float, float] | None = None
    for i, gw in enumerate(entries):
        where = f"{path}{key}[{i}]."
        if not isinstance(gw, dict):
            raise PayloadError("bad_field", f"{where[:-1]}: expected an object")
        rssi = None
        for rk in rssi_keys:
            rssi = _number(gw, rk, where)
            if rssi is not None:
                break
        snr = _number(gw, "snr", where)
        cand = (rssi or 0.0, snr or 0.0)
        if best is None or cand > best:
            best = cand
    if best is None:
        return None, None, 0, entries
    return best[0], best[1], len(entries), entries


def parse_chirpstack(topic: str, payload: bytes | bytearray | str, *, now: float | None = None) -> Uplink:
    """Parse a ChirpStack v4 `event/up` message; `now` stands in for a missing time.

    Raises PayloadError (only) when the topic or the message is not a usable uplink.
    """
    parts = topic.split("/")
    if len(parts) < 4 or parts[-4] != "device" or parts[-2] != "event" or parts[-1] != "up":
        raise PayloadError("not_an_uplink", f"topic {topic[:120]!r} is not .../device/{{devEui}}/event/up")
    data = _load(payload)
    info = _table(data, "deviceInfo", "")
    if info is None and "devAddr" not in data and "txInfo" not in data and "rxInfo" not in data:
        raise PayloadError("not_an_uplink", "no deviceInfo, devAddr, rxInfo or txInfo")
    body_eui = _string(info, "devEui", "deviceInfo.")
    topic_eui = parts[-3]
    if body_eui is not None:
        dev_eui = _dev_eui(body_eui, "deviceInfo.devEui")
        if topic_eui.lower() != dev_eui:
            raise PayloadError("topic_mismatch", f"topic devEui {topic_eui[:32]!r}, body {dev_eui}")
    elif topic_eui:
        dev_eui = _dev_eui(topic_eui, "topic devEui")
    else:
        raise PayloadError("missing_field", "deviceInfo.devEui")
    rssi, snr, n_gw, rx = _gateways(data, "rxInfo", "", ("rssi",))
    if "time" in data:
        received_at = _time(data["time"], "time")
    else:
        # an event without `time`: the first gateway's network-server time, else ours
        stamp = next(
            (gw.get("nsTime") or gw.get("gwTime") for gw in rx if gw.get("nsTime") or gw.get("gwTime")), None
        )
        if stamp is not None:
            received_at = _time(stamp, "rxInfo[].nsTime")
        elif now is not None:
            received_at = now
        else:
            raise PayloadError("missing_field", "time")
    confirmed = data.get("confirmed", False)
    if not isinstance(confirmed, bool):
        raise PayloadError("bad_field", "confirmed: expected true or false")
    return Uplink(
        dev_eui=dev_eui,
        device_name=_string(info, "deviceName", "deviceInfo.") or "",
        f_cnt=_integer(data, "fCnt", "", _F_CNT_MAX),
        f_port=_integer(data, "fPort", "", 255),
        payload=_base64(data.get("data"), "data"),
        decoded=_decoded(data, "object", ""),
        received_at=received_at,
        dedup_id=_string(data, "deduplicationId", "") or None,
        rssi=rssi,
        snr=snr,
        source="chirpstack",
        confirmed=confirmed,
        gateways=n_gw,
    )


def parse_tts(topic: str, payload: bytes | bytearray | str, *, now: float | None = None) -> Uplink:
    """Parse a The Things Stack v3 `up` message; `now` stands in for a missing time.

    Raises PayloadError (only) when the topic or the message is not a usable uplink.
    """
    parts = topic.split("/")
    if len(parts) != 5 or parts[0] != "v3" or parts[2] != "devices" or parts[4] != "up":
        raise PayloadError("not_an_uplink", f"topic {topic[:120]!r} is not v3/{{app}}/devices/{{id}}/up")
    data = _load(payload)
    msg = _table(data, "uplink_message", "")
    if msg is None:
        raise PayloadError("not_an_uplink", "no uplink_message")
    ids = _table(data, "end_device_ids", "")
    if ids is None:
        raise PayloadError("missing_field", "end_device_ids")
    device_id = _string(ids, "device_id", "end_device_ids.") or ""
    if device_id and device_id != parts[3]:
        raise PayloadError("topic_mismatch", f"topic device {parts[3][:40]!r}, body {device_id[:40]!r}")
    raw_eui = _string(ids, "dev_eui", "end_device_ids.")
    if not raw_eui:
        raise PayloadError("missing_field", "end_device_ids.dev_eui")
    rssi, snr, n_gw, _ = _gateways(msg, "rx_metadata", "uplink_message.", ("rssi", "channel_rssi"))
    if "received_at" in data:
        received_at = _time(data["received_at"], "received_at")
    elif "received_at" in msg:
        received_at = _time(msg["received_at"], "uplink_message.received_at")
    elif now is not None:
        received_at = now
    else:
        raise PayloadError("missing_field", "received_at")
    corr = data.get("correlation_ids")
    dedup_id = None
    if isinstance(corr, list):
        # `as:up:` names this message at the application server; `ns:uplink:` the frame
        dedup_id = next((c for c in corr if isinstance(c, str) and c.startswith("as:up:")), None) or next(
            (c for c in corr if isinstance(c, str) and c.startswith("ns:uplink:")), None
        )
    confirmed = msg.get("confirmed", False)
    if not isinstance(confirmed, bool):
        raise PayloadError("bad_field", "uplink_message.confirmed: expected true or false")
    return Uplink(
        dev_eui=_dev_eui(raw_eui, "end_device_ids.dev_eui"),
        device_name=device_id or parts[3],
        f_cnt=_integer(msg, "f_cnt", "uplink_message.", _F_CNT_MAX),
        f_port=_integer(msg, "f_port", "uplink_message.", 255),
        payload=_base64(msg.get("frm_payload"), "uplink_message.frm_payload"),
        decoded=_decoded(msg, "decoded_payload", "uplink_message."),
        received_at=received_at,
        dedup_id=dedup_id,
        rssi=rssi,
        snr=snr,
        source="tts",
        confirmed=confirmed,
        gateways=n_gw,
    )


def parse_uplink(topic: str, payload: bytes | bytearray | str, *, now: float | None = None) -> Uplink:
    """Parse an uplink in whichever format its topic says; PayloadError if neither."""
    if topic.endswith("/event/up"):
        return parse_chirpstack(topic, payload, now=now)
    if topic.startswith("v3/") and topic.endswith("/up"):
        return parse_tts(topic, payload, now=now)
    raise PayloadError("not_an_uplink", f"topic {topic[:120]!r} is neither ChirpStack nor TTS")


# -- ingest --------------------------------------------------------------------


class Order(Enum):
    """Where a frame stands against what the device sent before."""

    NEW = "new"
    DUPLICATE = "duplicate"
    LATE = "late"
    RESET = "reset"


@dataclass(slots=True)
class IngestStats:
    """Counters of an `UplinkIngest`; `refused` by reason."""

    received: int = 0
    published: int = 0
    duplicates: int = 0
    late: int = 0
    resets: int = 0
    unknown_device: int = 0
    ignored_port: int = 0
    network_decoded: int = 0
    out_of_range: int = 0
    refused: dict[str, int] = field(default_factory=dict)

    @property
    def refused_total(self) -> int:
        """Messages refused for any reason."""
        return sum(self.refused.values())

    def as_dict(self) -> dict[str, int]:
        """Flat counters for a status message (`refused.<reason>` keys)."""
        out: dict[str, int] = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "refused"}
        out.update({f"refused.{k}": v for k, v in sorted(self.refused.items())})
        return out


@dataclass(slots=True)
class _Track:
    """What one device sent recently: the newest frame of its session, recent counters."""

    device_id: str
    profile: LorawanProfile
    newest_f_cnt: int = -1
    newest_at: float = float("-inf")
    session_start: float = float("-inf")
    recent: OrderedDict[int, float] = field(default_factory=OrderedDict)


class UplinkIngest:
    """Uplinks in (either format), `Telemetry` out; duplicates, late frames and resets handled.

    `devices` maps a DevEUI (hex, any case) to (device_id, profile name). Memory is bounded:
    `dedup_ids` recent deduplication ids in all, `recent_per_device` counters per device.
    """

    def __init__(
        self,
        profiles: Mapping[str, LorawanProfile],
        devices: Mapping[str, tuple[str, str]],
        publish: Callable[[Telemetry], None],
        clock: Clock,
        *,
        on_late: Callable[[Telemetry], None] | None = None,
        dup_window_s: float = 60.0,
        reorder_window: int = 64,
        reset_below: int = 16,
        dedup_ids: int = 8192,
        recent_per_device: int = 32,
        max_clock_skew_s: float = 300.0,
    ) -> None:
        self._publish = publish
        self._max_ahead_s = max_clock_skew_s * max(1.0, clock.speed)
        self._on_late = on_late
        self._clock = clock
        self._dup_window_s = dup_window_s
        self._reorder_window = reorder_window
        self._reset_below = reset_below
        self._max_ids = dedup_ids
        self._max_recent = recent_per_device
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._tracks: dict[str, _Track] = {}
        for eui, (device_id, profile_name) in devices.items():
            key = eui.lower()
            if len(key) != 16 or not _HEX.issuperset(key):
                raise ConfigError(f"not a 64-bit EUI in hex: {eui!r}", key=f"lorawan.devices.{eui}")
            profile = profiles.get(profile_name)
            if profile is None:
                known = ", ".join(sorted(profiles)) or "none"
                raise ConfigError(
                    f"unknown profile {profile_name!r} (known: {known})", key=f"lorawan.devices.{eui}"
                )
            if key in self._tracks:
                raise ConfigError("DevEUI listed twice", key=f"lorawan.devices.{eui}")
            self._tracks[key] = _Track(device_id, profile)
        self.stats = IngestStats()

    def handle(self, topic: str, payload: bytes | bytearray | str) -> Telemetry | None:
        """Take one MQTT message; return the Telemetry published for it, or None.

        Never raises for a bad message: it is refused and counted.
        """
        stats = self.stats
        stats.received += 1
        try:
            up = parse_uplink(topic, payload, now=self._clock.now())
        except PayloadError as exc:
            self._refuse(exc, topic)
            return None
        future = check_ts(up.received_at, self._clock.now(), self._max_ahead_s)
        if future is not None:  # a frame "from the future" would stay current until then
            self._refuse(PayloadError(future.reason, future.detail), topic)
            return None
        track = self._tracks.get(up.dev_eui)
        if track is None:
            stats.unknown_device += 1
            if stats.unknown_device in {1, 1000}:
                log.warning("lorawan_unknown_device", dev_eui=up.dev_eui, count=stats.unknown_device)
            return None
        order = self._order(track, up)
        if order is Order.DUPLICATE:
            stats.duplicates += 1
            return None
        if up.f_port not in track.profile.f_ports:
            stats.ignored_port += 1
            return None
        try:
            values = self._values(track.profile, up)
        except PayloadError as exc:
            self._refuse(exc, topic)
            return None
        if order is Order.LATE:
            stats.late += 1
            if self._on_late is not None:
                values["late"] = True
                self._on_late(Telemetry(track.device_id, up.received_at, values))
            return None
        event = Telemetry(track.device_id, up.received_at, values)
        stats.published += 1
        self._publish(event)
        return event

    def _order(self, track: _Track, up: Uplink) -> Order:
        """Classify the frame and remember it (ids and counters), bounded."""
        ids = self._ids
        if up.dedup_id is not None:
            if up.dedup_id in ids:
                return Order.DUPLICATE
            ids[up.dedup_id] = None
            if len(ids) > self._max_ids:
                ids.popitem(last=False)
        f_cnt, at = up.f_cnt, up.received_at
        seen_at = track.recent.get(f_cnt)
        if seen_at is not None and abs(at - seen_at) <= self._dup_window_s:
            return Order.DUPLICATE
        if track.newest_f_cnt < 0:
            order = Order.NEW  # the session began before we saw it: its start is unknown
        elif at < track.session_start:
            return Order.LATE  # from a session before the last reset: nothing to remember
        elif f_cnt > track.newest_f_cnt:
            order = Order.NEW
        elif at > track.newest_at and (
            f_cnt < self._reset_below or track.newest_f_cnt - f_cnt > self._reorder_window
        ):
            order = Order.RESET
            self.stats.resets += 1
            log.info(
                "lorawan_fcnt_reset",
                device_id=track.device_id,
                f_cnt=f_cnt,
                previous=track.newest_f_cnt,
            )
            track.recent.clear()
            track.session_start = at
        else:
            order = Order.LATE
        if order is not Order.LATE:
            track.newest_f_cnt = f_cnt
            track.newest_at = max(track.newest_at, at) if order is Order.NEW else at
        track.recent[f_cnt] = at
        if len(track.recent) > self._max_recent:
            track.recent.popitem(last=False)
        return order

    def _values(self, profile: LorawanProfile, up: Uplink) -> dict[str, Value]:
        values: dict[str, Value] | None = None
        if profile.use_decoded and up.decoded is not None:
            values = profile.from_decoded(up.decoded)
            if values is not None:
                self.stats.network_decoded += 1
        if values is None:
            values, dropped = profile.decode(up.payload)
            if dropped:
                self.stats.out_of_range += len(dropped)
                if self.stats.out_of_range in {1, 1000}:
                    log.warning("lorawan_value_out_of_range", dev_eui=up.dev_eui, names=",".join(dropped))
        values["f_cnt"] = up.f_cnt
        values["f_port"] = up.f_port
        if up.rssi is not None:
            values["rssi"] = up.rssi
        if up.snr is not None:
            values["snr"] = up.snr
        return values

    def _refuse(self, exc: PayloadError, topic: str) -> None:
        refused = self.stats.refused
        count = refused.get(exc.reason, 0) + 1
        refused[exc.reason] = count
        if count in {1, 1000}:
            log.warning(
                "lorawan_uplink_refused", reason=exc.reason, detail=exc.detail, topic=topic[:120], count=count
            )


class UplinkSubscriber(MqttDriver):
    """The ingest's own session on the network server's broker: it subscribes its uplink topics.

    Uplinks used to reach the ingest through the northbound API; now, like every field input,
    they enter through a driver (`devices.protocols.mqtt`). `topics` are MQTT filters (e.g.
    `application/+/device/+/event/up`, `v3/+/devices/+/up`); a message on any other topic of
    a shared broker is not the ingest's and is ignored.
    """

    service_name = "lorawan"

    def __init__(
        self,
        ingest: UplinkIngest,
        *,
        mqtt_url: str,
        topics: Sequence[str],
        tls: TlsFiles | None = None,
        **link: Any,
    ) -> None:
        """`link`: `timeout_s`, `backoff_base_s`, `backoff_max_s` of the session."""
        super().__init__()
        self.ingest = ingest
        self.topics = tuple(dict.fromkeys(topics))
        self.link = MqttDeviceClient(
            mqtt_url,
            name="edge-lorawan",
            subscriptions=[(t, 1) for t in self.topics],
            on_message=self._receive,
            tls=tls,
            settings_key="lorawan.mqtt_url",
            pending_calls=64,
            **link,
        )

    def _receive(self, topic: str, payload: bytes, retained: bool) -> None:
        if any(topic_matches_sub(f, topic) for f in self.topics):
            self.ingest.handle(topic, payload)
