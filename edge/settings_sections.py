"""The tables of a site's settings file, one pydantic model each (`edge.settings` loads them).

Kept apart from the loader so the file's shape reads as one list: the site, its storage and
MQTT links, then each domain's table (lighting, charging, displays, waste), the dispatcher,
logging and the simulated clock.
"""

from __future__ import annotations

import re
from datetime import time
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from edge.errors import ConfigError
from edge.mqtt import BrokerAddress


class Section(BaseModel):
    """A settings table: unknown keys are errors, values never change after loading."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SiteSettings(Section):
    """Where the site is: sun times and local time depend on it."""

    id: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")] = "demo"
    name: str = "Demo district"
    latitude: Annotated[float, Field(ge=-90, le=90)] = 51.51
    longitude: Annotated[float, Field(ge=-180, le=180)] = 7.455
    timezone: str = "Europe/Berlin"

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {v!r}") from exc
        return v


class InventorySettings(Section):
    """The device inventory file (CSV or GeoJSON); relative paths are relative to the config."""

    path: Path = Path("inventory.csv")


class StorageSettings(Section):
    """Database URL (SQLite file by default, PostgreSQL by URL) and history retention."""

    url: str = "sqlite:///var/edge.db"
    history_interval_s: Annotated[float, Field(gt=0)] = 300.0
    retention_days: Annotated[float, Field(gt=0)] = 30.0
    flush_interval_s: Annotated[float, Field(gt=0, le=60)] = 0.5
    # Rows queued while the database is slow or down; when full, state samples are shed first.
    max_backlog_rows: Annotated[int, Field(ge=1000)] = 100_000

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, v: str) -> str:
        if not v.startswith(("sqlite://", "postgresql://", "postgresql+psycopg://")):
            raise ValueError("must start with sqlite:// or postgresql+psycopg://")
        return v


class TlsSettings(Section):
    """TLS for a broker link with an `mqtts://` URL: a private CA and mutual TLS.

    Paths are relative to the config file. Empty `ca_file`: the system trust store. Give the
    key password through the environment (`EDGE_MQTT__TLS__KEY_PASSWORD`), not the file.
    """

    ca_file: str = ""  # PEM CA certificate(s) the broker's certificate must chain to
    cert_file: str = ""  # PEM client certificate, for brokers with require_certificate true
    key_file: str = ""  # PEM private key of cert_file (empty: the key is inside cert_file)
    key_password: SecretStr | None = None  # for an encrypted key_file

    @property
    def configured(self) -> bool:
        """Whether any TLS file is given."""
        return bool(self.ca_file or self.cert_file or self.key_file)


class MqttSettings(Section):
    """Northbound broker; when `url` is empty the demo starts an embedded broker."""

    url: str = "mqtt://127.0.0.1:1883"
    tls: TlsSettings = TlsSettings()
    client_id: str = ""
    topic_prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9_/-]+$")] = "dos/v1"
    protocol: Literal["5", "3.1.1"] = "5"
    max_payload_bytes: Annotated[int, Field(ge=256, le=1_048_576)] = 65_536
    telemetry_interval_s: Annotated[float, Field(gt=0)] = 60.0
    outbox_max_rows: Annotated[int, Field(ge=100)] = 1_000_000
    # Answers go only to response topics under this prefix ("" = `{topic_prefix}/{site.id}/replies/`).
    reply_prefix: Annotated[str, Field(pattern=r"^([^+#\x00]*/)?$", max_length=200)] = ""
    # Device and request timestamps further ahead of the daemon's clock (real seconds) are refused.
    max_clock_skew_s: Annotated[float, Field(gt=0, le=86_400)] = 300.0

    @field_validator("url")
    @classmethod
    def _mqtt_url(cls, v: str) -> str:
        if v:
            try:
                BrokerAddress.parse(v)
            except ConfigError as exc:
                raise ValueError(f"{exc.args[0]} (or leave it empty for the embedded broker)") from None
        return v


def _broker_url_or_empty(v: str) -> str:
    """A device-side broker URL: empty (the northbound broker) or a URL BrokerAddress can use."""
    if v:
        try:
            BrokerAddress.parse(v)
        except ConfigError as exc:
            raise ValueError(f"{exc.args[0]} (or leave it empty for the northbound broker)") from None
    return v


class TrafficStep(Section):
    """From local time `start`, light `steps` EN 13201 classes below the design class."""

    start: time
    steps: Annotated[int, Field(ge=0, le=5)]


def _default_profile() -> list[TrafficStep]:
    return [
        TrafficStep(start=time(22, 0), steps=1),
        TrafficStep(start=time(0, 0), steps=2),
        TrafficStep(start=time(5, 0), steps=1),
        TrafficStep(start=time(6, 0), steps=0),
    ]


class LightingSettings(Section):
    """Switching, adaptive classes, floors, motion and failure detection for streetlights."""

    on_offset_min: Annotated[int, Field(ge=-120, le=120)] = 0
    off_offset_min: Annotated[int, Field(ge=-120, le=120)] = 0
    traffic_profile: list[TrafficStep] = Field(default_factory=_default_profile)
    never_dim_floor: Annotated[int, Field(ge=0, le=100)] = 100
    fear_space_floor: Annotated[int, Field(ge=0, le=100)] = 100
    max_changes: Annotated[int, Field(ge=1, le=16)] = 4
    plan_time_limit_s: Annotated[float, Field(gt=0, le=600)] = 10.0
    motion_hold_s: Annotated[float, Field(gt=0)] = 120.0
    motion_lamps_ahead: Annotated[int, Field(ge=0, le=50)] = 4
    power_tolerance: Annotated[float, Field(gt=0, lt=1)] = 0.3
    power_tolerance_w: Annotated[float, Field(ge=0)] = 3.0
    poll_interval_s: Annotated[float, Field(gt=0, le=3600)] = 1.0
    # A lamp whose readings stay within its profile's dead bands (power noise, slow counters)
    # is reported value-less this often (s), not every poll: what makes 54,000 lamps cheap.
    # Keep it below charging.stale_after_s, else lamps count at full power on their feeders.
    report_every_s: Annotated[float, Field(gt=0, le=3600)] = 60.0
    timeout_s: Annotated[float, Field(gt=0, le=60)] = 1.0
    backoff_max_s: Annotated[float, Field(gt=0, le=3600)] = 30.0


class FeederSettings(Section):
    """A low-voltage feeder (or lighting circuit) that charge points hang on."""

    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")]  # the API's id grammar
    cabinet: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")]
    limit_a: Annotated[
        float, Field(gt=0, le=2000, description="per-phase current limit set by the grid operator")
    ]
    phases: Literal[1, 3] = 3
    live: Literal["always", "night"] = "always"  # lighting circuits live only while the lights are on


class CabinetSettings(Section):
    """A street cabinet: caps every feeder below it."""

    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")]
    limit_a: Annotated[float, Field(gt=0, le=5000)]


class OcppSettings(Section):
    """The central system OCPP 1.6J charge points connect to (inventory rows with protocol=ocpp).

    Security profile 1 is HTTP Basic auth (user: the charge point id, password from
    `passwords_file`, a TOML table of id = password kept out of the site file), profile 2 the
    same over TLS with the site's certificate; profile 0 (no auth) only with `allow_profile_0`.
    """

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 9000  # 0: a free port (tests, demo)
    path: Annotated[str, Field(pattern=r"^/[A-Za-z0-9_./-]{0,63}$")] = "/ocpp"
    security_profile: Literal[0, 1, 2] = 1
    allow_profile_0: bool = False
    passwords_file: str = ""
    cert_file: str = ""  # profile 2: the server's certificate chain (PEM)
    key_file: str = ""
    heartbeat_interval_s: Annotated[float, Field(gt=0, le=86_400)] = 30.0
    meter_interval_s: Annotated[float, Field(gt=0, le=3600)] = 60.0
    # With no word from us this long, a charger limits itself to its fail-safe current.
    failsafe_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 120.0
    id_tags: list[Annotated[str, Field(min_length=1, max_length=20)]] = Field(default_factory=list)
    timeout_s: Annotated[float, Field(gt=0, le=60)] = 5.0

    @model_validator(mode="after")
    def _security(self) -> OcppSettings:
        if self.security_profile == 0 and not self.allow_profile_0:
            raise ValueError("security_profile 0 (no authentication) needs allow_profile_0 = true")
        if self.security_profile >= 1 and not self.passwords_file:
            raise ValueError(f"security_profile {self.security_profile} needs passwords_file")
        if self.security_profile == 2 and not (self.cert_file and self.key_file):
            raise ValueError("security_profile 2 (TLS) needs cert_file and key_file")
        if self.failsafe_timeout_s < 2 * self.heartbeat_interval_s:
            raise ValueError(
                "failsafe_timeout_s must be at least twice heartbeat_interval_s (our answers to"
                " the chargers' heartbeats feed their watchdogs)"
            )
        return self


class ChargingSettings(Section):
    """Charge points in lamp posts: supply tree, leases, curtailment floor, security."""

    feeders: list[FeederSettings] = Field(default_factory=list)
    cabinets: list[CabinetSettings] = Field(default_factory=list)
    min_device_kw: Annotated[float, Field(ge=0, le=22)] = 4.2  # §14a EnWG floor under curtailment
    lease_s: Annotated[float, Field(gt=0)] = 40.0  # setpoints refreshed this often (below the watchdog)
    plan_time_limit_s: Annotated[float, Field(gt=0, le=60)] = 2.0
    replan_interval_s: Annotated[float, Field(gt=0)] = 900.0
    near_limit_ratio: Annotated[float, Field(gt=0, le=1)] = 0.9
    alarm_after_s: Annotated[float, Field(gt=0)] = 300.0  # not charging / meter frozen for this long
    stale_after_s: Annotated[float, Field(gt=0)] = 120.0
    default_stay_h: Annotated[float, Field(gt=0, le=72)] = 12.0  # evening arrivals stay ~12 h (ElaadNL)
    allow_no_security: bool = False  # NoSecurity only when a site says so explicitly
    client_cert: str = ""
    client_key: str = ""
    server_cert: str = ""
    timeout_s: Annotated[float, Field(gt=0, le=60)] = 2.0
    # What a charger draws when its watchdog fires (the daemon is gone): written at connect and
    # read back. 0 stops charging; an inventory column overrides it per charger. The sum per
    # feeder and cabinet plus the lamps at full power must fit the limit (check-config checks).
    failsafe_current_a: Annotated[float, Field(ge=0, le=80)] = 0.0
    # Event-loop lag (real seconds) above which charging goes decreases-only, and how long it
    # stays so after the lag ends. Keep it well below the chargers' watchdog in real seconds.
    lag_limit_s: Annotated[float, Field(gt=0, le=60)] = 0.5
    lag_hold_s: Annotated[float, Field(ge=0, le=3600)] = 5.0
    ocpp: OcppSettings | None = None  # the OCPP central system, for sites with OCPP charge points

    @model_validator(mode="after")
    def _tree(self) -> ChargingSettings:
        if 0 < self.failsafe_current_a < 6:
            raise ValueError("failsafe_current_a must be 0 (stop charging) or at least 6 A (IEC 61851)")
        cabinets = {c.id for c in self.cabinets}
        ids = [f.id for f in self.feeders]
        if len(set(ids)) != len(ids):
            raise ValueError("two feeders with the same id")
        for f in self.feeders:
            if cabinets and f.cabinet not in cabinets:
                raise ValueError(f"feeder {f.id!r} names unknown cabinet {f.cabinet!r}")
        return self


class DisplaySettings(Section):
    """A guidance display: an MQTT LED board or a Modbus variable message sign."""

    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")]
    kind: Literal["board", "sign"]
    lat: float = 0.0
    lon: float = 0.0
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 502
    unit: Annotated[int, Field(ge=0, le=247)] = 1


class CarParkSettings(Section):
    """A car park; its free spaces come over MQTT or from LoRaWAN bay sensors (`sensors`)."""

    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")]
    name: Annotated[str, Field(min_length=1, max_length=40)]
    capacity: Annotated[int, Field(ge=1)]
    lat: float
    lon: float
    sensors: list[Annotated[str, Field(pattern=r"^[0-9a-fA-F]{16}$")]] = Field(default_factory=list)


class ApproachSettings(Section):
    """A road into the area: expected cars per interval, and the signs that guide them."""

    id: str
    lat: float
    lon: float
    demand: Annotated[int, Field(ge=0)] = 10
    signs: list[str]


class DisplaysSettings(Section):
    """Displays, car parks and approaches for parking guidance and warnings."""

    displays: list[DisplaySettings] = Field(default_factory=list)
    car_parks: list[CarParkSettings] = Field(default_factory=list)
    approaches: list[ApproachSettings] = Field(default_factory=list)
    board_mqtt_url: str = ""  # where the LED boards are; the northbound broker when empty
    board_tls: TlsSettings | None = None  # for an mqtts:// board_mqtt_url; default: mqtt.tls
    lorawan_topics: list[str] = Field(
        default_factory=lambda: ["application/+/device/+/event/up", "v3/+/devices/+/up"]
    )
    freshness_s: Annotated[float, Field(gt=0)] = 600.0
    min_update_s: Annotated[float, Field(ge=0)] = 60.0
    step_s: Annotated[float, Field(gt=0, le=600)] = 2.0

    @field_validator("board_mqtt_url")
    @classmethod
    def _board_url(cls, v: str) -> str:
        return _broker_url_or_empty(v)

    @model_validator(mode="after")
    def _signs_known(self) -> DisplaysSettings:
        ids = {d.id for d in self.displays}
        for a in self.approaches:
            unknown = [s for s in a.signs if s not in ids]
            if unknown:
                raise ValueError(f"approach {a.id!r} names unknown displays {unknown}")
        return self


class PlaceSettings(Section):
    """A fixed place trucks drive to: the depot or the disposal site."""

    lat: Annotated[float, Field(ge=-90, le=90)]
    lon: Annotated[float, Field(ge=-180, le=180)]
    service_s: Annotated[float, Field(ge=0, le=7200)] = 0.0


def _hhmm(v: str, what: str) -> int:
    """Minutes after midnight of an "HH:MM" string, or a ValueError naming `what`."""
    m = re.fullmatch(r"([01]\d|2[0-3]):([0-5]\d)", v)
    if not m:
        raise ValueError(f"{what}: {v!r} is not HH:MM")
    return int(m.group(1)) * 60 + int(m.group(2))


def _window(v: str, what: str) -> str:
    a, sep, b = v.partition("-")
    if not sep:
        raise ValueError(f"{what}: {v!r} is not HH:MM-HH:MM")
    if _hhmm(a, what) >= _hhmm(b, what):
        raise ValueError(f"{what}: {v!r} ends before it starts")
    return v


def window_s(v: str) -> tuple[int, int]:
    """Seconds after local midnight of an "HH:MM-HH:MM" window (validated by the settings)."""
    a, _, b = v.partition("-")
    return _hhmm(a, "window") * 60, _hhmm(b, "window") * 60


class TruckSettings(Section):
    """A collection truck: what it carries and when its crew works."""

    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")]
    volume_l: Annotated[float, Field(gt=0, le=100_000)] = 16_000.0  # compacted bin volume
    weight_kg: Annotated[float, Field(gt=0, le=30_000)] = 9_000.0
    shift: str = "06:00-14:00"

    @field_validator("shift")
    @classmethod
    def _shift(cls, v: str) -> str:
        return _window(v, "shift")


class ZoneSettings(Section):
    """A restricted area (pedestrian zone): its bins may only be served inside `window`."""

    id: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]
    window: str

    @field_validator("window")
    @classmethod
    def _win(cls, v: str) -> str:
        return _window(v, "window")


Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
Road = Literal["main", "residential", "pedestrian"]
_WORKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat")
_SPEEDS: dict[Road, float] = {"main": 30.0, "residential": 20.0, "pedestrian": 8.0}


class WasteSettings(Section):
    """Bins with fill sensors, trucks, depot, disposal site and the collection planner."""

    bins: Path | None = None  # bin inventory CSV; relative to the config; no waste domain when unset
    threshold: Annotated[float, Field(gt=0, le=1)] = 0.8  # "collect now" fill fraction
    plan_at: str = "05:30"  # local time the day's collection plan is made
    run_days: list[Weekday] = Field(default_factory=lambda: list(_WORKDAYS))
    service_s: Annotated[float, Field(ge=0, le=3600)] = 60.0  # per bin
    detour: Annotated[float, Field(ge=1, le=5)] = 1.3  # road distance over straight line
    speeds_kmh: dict[Road, Annotated[float, Field(gt=0, le=130)]] = Field(
        default_factory=lambda: dict(_SPEEDS)
    )
    depot: PlaceSettings | None = None
    disposal: PlaceSettings | None = None
    trucks: list[TruckSettings] = Field(default_factory=list)
    zones: list[ZoneSettings] = Field(default_factory=list)
    fleet_mqtt_url: str = ""  # where trucks talk; the northbound broker when empty
    fleet_tls: TlsSettings | None = None  # for an mqtts:// fleet_mqtt_url; default: mqtt.tls
    lorawan_topics: list[str] = Field(
        default_factory=lambda: ["application/+/device/+/event/up", "v3/+/devices/+/up"]
    )
    solver_time_s: Annotated[float, Field(gt=0, le=600)] = 10.0
    # processes one collection plan may keep busy (PyVRP with further seeds in helper processes);
    # None: as many as the machine has, at most two; 1 on a node whose second core is spoken for
    solver_workers: Annotated[int, Field(ge=1, le=16)] | None = None

    @field_validator("fleet_mqtt_url")
    @classmethod
    def _fleet_url(cls, v: str) -> str:
        return _broker_url_or_empty(v)

    @field_validator("plan_at")
    @classmethod
    def _plan_at(cls, v: str) -> str:
        _hhmm(v, "plan_at")
        return v

    @model_validator(mode="after")
    def _complete(self) -> WasteSettings:
        if self.bins is None:
            return self
        missing = [k for k in ("depot", "disposal") if getattr(self, k) is None]
        if missing:
            raise ValueError(f"waste.bins is set but {', '.join(missing)} is missing")
        if not self.trucks:
            raise ValueError("waste.bins is set but no trucks are configured")
        ids = [t.id for t in self.trucks]
        if len(set(ids)) != len(ids):
            raise ValueError("two trucks have the same id")
        return self


_DEVICE_ID = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
_LINE = Annotated[str, Field(min_length=1, max_length=40)]


class HelpPointSettings(Section):
    """An emergency call button in a lamp post (`post`: the lamp's id, which gives its place,
    street and controller): a register block in the post's Modbus controller, or LoRaWAN."""

    id: Annotated[str, Field(pattern=_DEVICE_ID)]
    post: Annotated[str, Field(min_length=1, max_length=64)]
    via: Literal["modbus", "lorawan"] = "modbus"
    slot: Annotated[int, Field(ge=0, le=255)] = 0
    dev_eui: Annotated[str, Field(pattern=r"^[0-9a-fA-F]{16}$")] | None = None

    @model_validator(mode="after")
    def _link(self) -> HelpPointSettings:
        if self.via == "lorawan" and self.dev_eui is None:
            raise ValueError(f'help point {self.id!r}: via = "lorawan" needs a dev_eui')
        return self


class HelpPointsSettings(Section):
    """Help points: what a press does (lamps within `radius_m` to full, a notice on the nearest
    displays, an incident), when an unacknowledged call escalates, and how fast they are polled."""

    points: list[HelpPointSettings] = Field(default_factory=list)
    radius_m: Annotated[float, Field(gt=0, le=1000)] = 60.0
    ack_timeout_s: Annotated[float, Field(gt=0)] = 120.0
    escalation_target: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")] = "control-room"
    notice_displays: Annotated[int, Field(ge=0, le=20)] = 1
    notice_radius_m: Annotated[float, Field(gt=0)] = 800.0
    notice_lines: Annotated[list[_LINE], Field(min_length=1, max_length=4)] = Field(
        default_factory=lambda: ["NOTRUF AUSGELOEST", "Hilfe ist unterwegs"]
    )
    stuck_after_s: Annotated[float, Field(gt=0)] = 120.0
    battery_low_pct: Annotated[float, Field(ge=0, le=100)] = 20.0
    poll_interval_s: Annotated[float, Field(gt=0, le=5)] = 0.25
    lorawan_silent_after_s: Annotated[float, Field(gt=0)] = 7800.0  # an hourly heartbeat missed twice
    lorawan_topics: list[str] = Field(
        default_factory=lambda: ["application/+/device/+/event/up", "v3/+/devices/+/up"]
    )

    @model_validator(mode="after")
    def _unique(self) -> HelpPointsSettings:
        ids = [p.id for p in self.points]
        if len(set(ids)) != len(ids):
            raise ValueError(
                f"two help points have the same id: {sorted({i for i in ids if ids.count(i) > 1})}"
            )
        euis = [p.dev_eui.lower() for p in self.points if p.dev_eui]
        if len(set(euis)) != len(euis):
            raise ValueError("two help points have the same dev_eui")
        posts = [p.post for p in self.points]
        if len(set(posts)) != len(posts):
            raise ValueError("two help points are in the same post")
        return self


class DispatcherSettings(Section):
    """Command time-to-live, write timeout and concurrency."""

    command_ttl_s: Annotated[float, Field(gt=0)] = 30.0
    write_timeout_s: Annotated[float, Field(gt=0, le=60)] = 2.0
    # Writes in flight at once. Drivers batch what is in flight per endpoint (a lamp controller's
    # writes go out under one hold of its link), and a plan's commands come in lamp order, so the
    # number in flight is how many controllers write at once: 256 is two or three (a city's first
    # plan took a minute, 800 lamps/s), 1,024 about ten.
    workers: Annotated[int, Field(ge=1, le=8192)] = 1024
    reconcile_interval_s: Annotated[float, Field(gt=0)] = 30.0


class MetricsSettings(Section):
    """The Prometheus endpoint and the health check (`edge.metrics`), off by default: where they
    listen (loopback unless a site says otherwise) and what "ready" needs."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 9464  # 0: any free port (tests)
    ready_online_share: Annotated[float, Field(ge=0, le=1)] = 0.9  # fewer devices online: not ready
    plan_max_age_s: Annotated[float, Field(gt=0)] = 7200.0  # a domain's newest plan older: not ready


class LoggingSettings(Section):
    """Log level and format (JSON when stdout is not a terminal)."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class ClockSettings(Section):
    """Simulated time for demos: `speed` clock seconds per real second from `start`."""

    speed: Annotated[float, Field(gt=0, le=10_000)] = 1.0
    start: str = ""
