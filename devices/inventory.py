"""Site inventory: thousands of devices from CSV or GeoJSON files, not per-device config.

The one inventory module: lamps and chargers (one file), waste bins (their own CSV) and
the lenient position reader the dashboard's map uses all go through one row reader and
one row validation (`Row`), and every bad row is listed with its line and column.

A lamp row names its position, road segment (and its order along it), EN 13201
lighting class, cabinet and feeder, flags (never_dim, fear_space, bike_path) and
how to reach it (controller endpoint, unit id, lamp index behind the controller).
A charger row (kind=charger) names its post, feeder and how it is reached: an OPC UA server
(`controller`, `url`), or, with `protocol=ocpp`, its own websocket to our OCPP central system
(its id is its OCPP identity; no url). A bin row names
the bin, the LoRaWAN sensor under its lid (DevEUI), its position, the kind of place it
stands in (which drives how fast it fills), its volume, the sensor geometry that turns a
distance into a fill level, the road class trucks reach it by, and an optional
restricted zone (pedestrian zone) whose time window it may only be served in.
"""

from __future__ import annotations

import csv
import json
import re
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from edge.decode import ID_PATTERN
from edge.errors import ConfigError

LIGHTING_CLASSES: dict[str, float] = {
    # EN 13201-2 required average values (cd/m² for M, lx for C and P)
    "M1": 2.0, "M2": 1.5, "M3": 1.0, "M4": 0.75, "M5": 0.5, "M6": 0.3,
    "C0": 50, "C1": 30, "C2": 20, "C3": 15, "C4": 10, "C5": 7.5,
    "P1": 15, "P2": 10, "P3": 7.5, "P4": 5, "P5": 3, "P6": 2,
}  # fmt: skip
FLAGS = frozenset({"never_dim", "fear_space", "bike_path"})
_ID = re.compile(rf"^{ID_PATTERN}$")  # the one id grammar, as the API checks it
MAX_ERRORS = 50
BinKind = Literal["residential", "shopping", "park"]
RoadClass = Literal["main", "residential", "pedestrian"]
BIN_KINDS: tuple[BinKind, ...] = ("residential", "shopping", "park")
ROAD_CLASSES: tuple[RoadClass, ...] = ("main", "residential", "pedestrian")
BIN_COLUMNS = (
    "id",
    "dev_eui",
    "lat",
    "lon",
    "kind",
    "volume_l",
    "height_mm",
    "blind_zone_mm",
    "density_kg_l",
    "road_class",
    "zone",
)
Rows = Iterable[tuple[str, Mapping[str, Any]]]
_D = TypeVar("_D")


@dataclass(frozen=True, slots=True)
class Lamp:
    """One light point and how to reach it."""

    id: str
    lat: float
    lon: float
    segment: str
    order: int
    lighting_class: str
    cabinet: str
    feeder: str
    flags: frozenset[str]
    controller: str
    host: str
    port: int
    unit: int
    index: int
    p_max_w: float
    p_min_w: float
    # Lamps of one segment, class and floor kind are planned together. Derived once: a
    # city's planning and its interlock ask for it per lamp many times a second.
    group: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        floor = "nd" if "never_dim" in self.flags else "fs" if "fear_space" in self.flags else "std"
        object.__setattr__(self, "group", sys.intern(f"{self.segment}:{self.lighting_class}:{floor}"))


@dataclass(frozen=True, slots=True)
class Charger:
    """A charge point in a lamp post, where it hangs in the supply tree and how to reach it."""

    id: str
    lat: float
    lon: float
    segment: str
    cabinet: str
    feeder: str
    post: str
    server: str
    url: str
    max_current_a: float
    phases: int
    failsafe_current_a: float | None = None  # None: the site's [charging] failsafe_current_a
    protocol: Literal["opcua", "ocpp"] = "opcua"


@dataclass(frozen=True, slots=True)
class Bin:
    """One waste bin and the sensor that measures it."""

    id: str
    dev_eui: str  # 16 lower-case hex digits
    lat: float
    lon: float
    kind: BinKind
    volume_l: float
    height_mm: float  # sensor to the bin's floor
    blind_zone_mm: float  # nearest distance the sensor can measure: "full" is this far away
    density_kg_l: float  # of the loose waste, for the truck's weight capacity
    road_class: RoadClass
    zone: str  # "" or the id of a [[waste.zones]] entry

    def fill_of(self, distance_mm: float) -> float:
        """Fill fraction 0..1 from the sensor's distance to the waste surface.

        The blind zone is the top of the usable height: a reading at or inside it
        means full (or overflowing), a reading at the floor means empty.
        """
        usable = self.height_mm - self.blind_zone_mm
        f = (self.height_mm - distance_mm) / usable
        return min(1.0, max(0.0, f))

    def distance_of(self, fill: float) -> float:
        """The distance a sensor reads at fill fraction `fill` (the inverse of fill_of)."""
        usable = self.height_mm - self.blind_zone_mm
        return self.height_mm - min(1.0, max(0.0, fill)) * usable


@dataclass(frozen=True, slots=True)
class Controller:
    """A lamp controller endpoint and the lamps behind it, by index."""

    id: str
    host: str
    port: int
    unit: int
    lamps: tuple[Lamp, ...]


@dataclass(frozen=True, slots=True)
class Inventory:
    """All devices of a site, indexed the ways the daemon asks for them."""

    lamps: Mapping[str, Lamp]
    controllers: Mapping[str, Controller] = field(default_factory=dict)
    groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    segments: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    chargers: Mapping[str, Charger] = field(default_factory=dict)
    charger_servers: Mapping[str, tuple[str, tuple[str, ...]]] = field(default_factory=dict)

    def lamps_on_feeder(self, feeder: str) -> list[Lamp]:
        return [x for x in self.lamps.values() if x.feeder == feeder]

    def with_chargers(self, chargers: Iterable[Charger]) -> Inventory:
        """The same inventory plus charge points, the OPC UA ones indexed by server (url and ids)."""
        by_id = {c.id: c for c in chargers}
        servers: dict[str, tuple[str, list[str]]] = {}
        for c in by_id.values():
            if c.protocol == "opcua":
                servers.setdefault(c.server, (c.url, []))[1].append(c.id)
        return Inventory(
            lamps=self.lamps,
            controllers=self.controllers,
            groups=self.groups,
            segments=self.segments,
            chargers=by_id,
            charger_servers={k: (u, tuple(ids)) for k, (u, ids) in servers.items()},
        )

    @classmethod
    def build(cls, lamps: Iterable[Lamp]) -> Inventory:
        """Index lamps by controller, group and segment (segment order = `order`, then id)."""
        by_id = {lamp.id: lamp for lamp in lamps}
        ctrl: dict[str, list[Lamp]] = defaultdict(list)
        groups: dict[str, list[str]] = defaultdict(list)
        segs: dict[str, list[Lamp]] = defaultdict(list)
        for lamp in by_id.values():
            ctrl[lamp.controller].append(lamp)
            segs[lamp.segment].append(lamp)
        for seg_lamps in segs.values():
            seg_lamps.sort(key=lambda x: (x.order, x.id))
            for lamp in seg_lamps:
                groups[lamp.group].append(lamp.id)
        controllers = {
            cid: Controller(cid, ls[0].host, ls[0].port, ls[0].unit, tuple(sorted(ls, key=lambda x: x.index)))
            for cid, ls in ctrl.items()
        }
        return cls(
            lamps=by_id,
            controllers=controllers,
            groups={g: tuple(ids) for g, ids in groups.items()},
            segments={s: tuple(x.id for x in ls) for s, ls in segs.items()},
        )


class RowErrors:
    """Every bad row of one file (up to MAX_ERRORS), raised together as one ConfigError."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.lines: list[str] = []

    def add(self, where: str, msg: str) -> None:
        if len(self.lines) < MAX_ERRORS:
            self.lines.append(f"{self.file}: {where}: {msg}")

    def raise_if_any(self) -> None:
        if self.lines:
            err = ConfigError("\n".join(self.lines))
            err.file, err.lines = self.file, self.lines
            raise err


class Row:
    """Typed access to one inventory row; a ValueError names the column."""

    def __init__(self, row: Mapping[str, Any]) -> None:
        self.row = row

    def text(self, key: str, default: str | None = None) -> str:
        v = self.row.get(key)
        if v is None or str(v).strip() == "":
            if default is None:
                raise ValueError(f"{key}: missing")
            return default
        return str(v).strip()

    def num(self, key: str, lo: float, hi: float, default: float | None = None) -> float:
        raw = self.text(key, None if default is None else str(default))
        try:
            v = float(raw)
        except ValueError:
            raise ValueError(f"{key}: {raw!r} is not a number") from None
        if not lo <= v <= hi:
            raise ValueError(f"{key}: {v:g} is outside {lo:g}..{hi:g}")
        return v

    def ident(self, key: str = "id") -> str:
        """An id in the one id grammar."""
        v = self.text(key)
        if not _ID.match(v):
            raise ValueError(f"{key}: {v!r} is not a valid id (letters, digits, _.:-)")
        return v

    def position(self) -> tuple[float, float]:
        """(lat, lon) in degrees."""
        return self.num("lat", -90, 90), self.num("lon", -180, 180)


class _Claims:
    """First row to claim each key; a second claim is an error naming the first row."""

    def __init__(self, column: str, errors: RowErrors, say: str = "already used at") -> None:
        self.column, self.errors, self.say = column, errors, say
        self.seen: dict[str, str] = {}

    def taken(self, key: str, where: str, shown: str | None = None) -> bool:
        """Whether `key` is already claimed (then the error is added); claims it otherwise."""
        first = self.seen.get(key)
        if first is None:
            return False
        self.errors.add(where, f"{self.column}: {shown or repr(key)} {self.say} {first}")
        return True

    def claim(self, key: str, where: str) -> None:
        self.seen[key] = where


def _charger_from(r: Row) -> Charger:
    cid = r.ident()
    protocol = r.text("protocol", "opcua")
    if protocol not in ("opcua", "ocpp"):
        raise ValueError(f"protocol: {protocol!r} must be opcua or ocpp")
    url = r.text("url", "" if protocol == "ocpp" else None)
    if protocol == "opcua" and not url.startswith("opc.tcp://"):
        raise ValueError(f"url: {url!r} must start with opc.tcp://")
    if protocol == "ocpp" and url:
        raise ValueError(f"url: an OCPP charge point connects to us; give no url (got {url!r})")
    phases = int(r.num("phases", 1, 3, 3))
    if phases not in (1, 3):
        raise ValueError(f"phases: {phases} must be 1 or 3")
    lat, lon = r.position()
    return Charger(
        id=cid,
        lat=lat,
        lon=lon,
        segment=r.text("segment", ""),
        cabinet=r.text("cabinet"),
        feeder=r.text("feeder"),
        post=r.text("post", cid),
        server=r.text("controller", "" if protocol == "ocpp" else None),
        url=url,
        max_current_a=r.num("max_current_a", 6, 63, 16),
        phases=phases,
        failsafe_current_a=_failsafe(r),
        protocol="ocpp" if protocol == "ocpp" else "opcua",
    )


def _failsafe(r: Row) -> float | None:
    """The optional `failsafe_current_a` column: 0 (stop charging) or 6..63 A; blank is the site's."""
    if str(r.row.get("failsafe_current_a") or "").strip() == "":
        return None
    v = r.num("failsafe_current_a", 0, 63)
    if 0 < v < 6:
        raise ValueError(f"failsafe_current_a: {v:g} A is not 0 or at least 6 A (IEC 61851)")
    return v


_FLAG_SETS: dict[frozenset[str], frozenset[str]] = {}  # one object per distinct set of flags
# One object per distinct rating and port: most of a city's lamps share a few (3 MB at 54,000)
_RATINGS: dict[float, float] = {}
_PORTS: dict[int, int] = {}


def _lamp_from(r: Row) -> Lamp:
    lamp_id = r.ident()
    kind = r.text("kind", "lamp")
    if kind != "lamp":
        raise ValueError(f"kind: {kind!r} is not a known device kind (lamp, charger)")
    cls_name = r.text("lighting_class").upper()
    if cls_name not in LIGHTING_CLASSES:
        raise ValueError(f"lighting_class: {cls_name!r} is not an EN 13201 class (M1-M6, C0-C5, P1-P6)")
    flags = frozenset(f.strip() for f in re.split(r"[;|,\s]+", r.text("flags", "")) if f.strip())
    if unknown := flags - FLAGS:
        raise ValueError(f"flags: unknown {sorted(unknown)} (known: {sorted(FLAGS)})")
    p_max = r.num("p_max_w", 1, 2000, 38.0)
    p_min = r.num("p_min_w", 0, 2000, round(p_max * 0.1, 1))
    if p_min > p_max:
        raise ValueError(f"p_min_w: {p_min:g} is above p_max_w {p_max:g}")
    lat, lon = r.position()
    # Names many lamps share are interned: a city's 54,000 rows would otherwise hold 54,000
    # copies of each controller, feeder, cabinet, segment, class, host and group name.
    return Lamp(
        id=lamp_id,
        lat=lat,
        lon=lon,
        segment=sys.intern(r.text("segment")),
        order=int(r.num("order", 0, 1e9, 0)),
        lighting_class=sys.intern(cls_name),
        cabinet=sys.intern(r.text("cabinet", "")),
        feeder=sys.intern(r.text("feeder", "")),
        flags=_FLAG_SETS.setdefault(flags, flags),
        controller=sys.intern(r.text("controller")),
        host=sys.intern(r.text("host", "127.0.0.1")),
        port=_PORTS.setdefault(port := int(r.num("port", 1, 65535)), port),
        unit=int(r.num("unit", 0, 247, 1)),
        index=int(r.num("index", 0, 65535)),
        p_max_w=_RATINGS.setdefault(float(p_max), float(p_max)),
        p_min_w=_RATINGS.setdefault(float(p_min), float(p_min)),
    )


def _bin_from(r: Row) -> Bin:
    bid = r.ident()
    eui = r.text("dev_eui").lower()
    if len(eui) != 16 or any(c not in "0123456789abcdef" for c in eui):
        raise ValueError(f"dev_eui: {eui!r} is not 16 hex digits")
    kind = r.text("kind", "residential")
    if kind not in BIN_KINDS:
        raise ValueError(f"kind: {kind!r} is not one of {', '.join(BIN_KINDS)}")
    road = r.text("road_class", "residential")
    if road not in ROAD_CLASSES:
        raise ValueError(f"road_class: {road!r} is not one of {', '.join(ROAD_CLASSES)}")
    height = r.num("height_mm", 200, 5000, 1200)
    blind = r.num("blind_zone_mm", 0, 1000, 250)
    if blind >= height - 100:
        raise ValueError(f"blind_zone_mm: {blind:g} leaves less than 100 mm of the {height:g} mm height")
    lat, lon = r.position()
    return Bin(
        id=bid,
        dev_eui=eui,
        lat=lat,
        lon=lon,
        kind=kind,
        volume_l=r.num("volume_l", 10, 10_000, 1100),
        height_mm=height,
        blind_zone_mm=blind,
        density_kg_l=r.num("density_kg_l", 0.01, 1.5, 0.12),
        road_class=road,
        zone=r.text("zone", ""),
    )


def _validated(rows: Rows, parse: Callable[[Row], _D], errors: RowErrors) -> Iterator[tuple[str, _D]]:
    """The rows `parse` accepts; each one it refuses is an error naming the row and column."""
    for where, row in rows:
        try:
            yield where, parse(Row(row))
        except ValueError as exc:
            errors.add(where, str(exc))


def _rows_csv(path: Path) -> Rows:
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        for i, row in enumerate(reader, start=2):
            yield f"line {i}", row


def _rows_geojson(path: Path, errors: RowErrors) -> Rows:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        errors.add("file", f"not valid JSON: {exc}")
        return
    if not isinstance(doc, dict) or doc.get("type") != "FeatureCollection":
        errors.add("file", "expected a GeoJSON FeatureCollection")
        return
    for i, feat in enumerate(doc.get("features", [])):
        where = f"features[{i}]"
        geom = feat.get("geometry") or {} if isinstance(feat, dict) else {}
        coords = geom.get("coordinates") if isinstance(geom, dict) else None
        if (
            not isinstance(feat, dict)
            or geom.get("type") != "Point"
            or not isinstance(coords, list)
            or len(coords) < 2
        ):
            errors.add(where, "geometry: expected a Point [longitude, latitude]")
            continue
        props = dict(feat.get("properties") or {})
        props.setdefault("id", feat.get("id"))
        if isinstance(props.get("flags"), list):
            props["flags"] = ";".join(map(str, props["flags"]))
        props["lon"], props["lat"] = coords[0], coords[1]
        yield where, props


def read_rows(path: Path | str, errors: RowErrors) -> Rows:
    """The rows of a CSV or GeoJSON inventory file, each with where it stands (line or feature)."""
    p = Path(path)
    if not p.exists():
        errors.add("file", "not found")
        errors.raise_if_any()
    suffix = p.suffix.lower()
    if suffix == ".csv":
        return _rows_csv(p)
    if suffix in {".geojson", ".json"}:
        return _rows_geojson(p, errors)
    errors.add("file", f"unknown inventory format {suffix!r} (use .csv or .geojson)")
    errors.raise_if_any()
    return ()


def _device_from(r: Row) -> Lamp | Charger:
    """A lamp row, or a charger row (kind=charger)."""
    return _charger_from(r) if str(r.row.get("kind") or "lamp").strip() == "charger" else _lamp_from(r)


def load_inventory(path: Path | str) -> Inventory:
    """Read a CSV or GeoJSON inventory of lamps and chargers; raise ConfigError listing every bad row."""
    errors = RowErrors(str(Path(path)))
    ids = _Claims("id", errors)
    lamps: list[Lamp] = []
    chargers: list[Charger] = []
    slots: dict[tuple[str, int], str] = {}
    endpoints: dict[str, tuple[str, int, int]] = {}
    for where, device in _validated(read_rows(path, errors), _device_from, errors):
        if ids.taken(device.id, where):
            continue
        if isinstance(device, Lamp):
            ep = (device.host, device.port, device.unit)
            if endpoints.setdefault(device.controller, ep) != ep:
                errors.add(where, f"controller: {device.controller!r} has two different endpoints")
                continue
            if (other := slots.setdefault((device.controller, device.index), device.id)) != device.id:
                errors.add(where, f"index: {device.index} of {device.controller!r} is already lamp {other!r}")
                continue
            lamps.append(device)
        else:
            chargers.append(device)
        ids.claim(device.id, where)
    if not lamps and not chargers and not errors.lines:
        errors.add("file", "no devices")
    errors.raise_if_any()
    inv = Inventory.build(lamps)
    return inv.with_chargers(chargers) if chargers else inv


def parse_bins(rows: Iterable[Mapping[str, Any]], file: str, zones: Iterable[str] = ()) -> list[Bin]:
    """Bins from CSV rows; raise one ConfigError listing every bad row (line and column)."""
    errors = RowErrors(file)
    known_zones = set(zones)
    out: list[Bin] = []
    ids = _Claims("id", errors, "already on")
    euis = _Claims("dev_eui", errors, "already on")
    numbered = ((f"line {n}", row) for n, row in enumerate(rows, start=2))
    for where, b in _validated(numbered, _bin_from, errors):
        if ids.taken(b.id, where) or euis.taken(b.dev_eui, where, b.dev_eui):
            continue
        if b.zone and b.zone not in known_zones:
            errors.add(where, f"zone: {b.zone!r} is not a configured waste zone")
            continue
        ids.claim(b.id, where)
        euis.claim(b.dev_eui, where)
        out.append(b)
    errors.raise_if_any()
    return out


def load_bins(path: Path, zones: Iterable[str] = ()) -> list[Bin]:
    """Read the bin inventory CSV; errors name the file, line and column."""
    try:
        with path.open(encoding="utf-8", newline="") as f:
            return parse_bins(csv.DictReader(f), str(path), zones)
    except FileNotFoundError as exc:
        raise ConfigError("file not found", file=str(path)) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read: {exc}", file=str(path)) from exc


def write_bins(path: Path, bins: Iterable[Bin]) -> None:
    """Write a bin inventory CSV (for generated sites)."""
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(BIN_COLUMNS)
        for b in bins:
            w.writerow([getattr(b, c) for c in BIN_COLUMNS])


def read_positions(path: Path | str) -> tuple[dict[str, tuple[float, float, str, int]], int]:
    """Lamp positions (lat, lon, segment, order) by id, leniently: rows without a usable
    position are skipped and counted, not refused (the dashboard's map, not the daemon).

    ValueError when a CSV file has no `id`, `lat` and `lon` columns.
    """
    p = Path(path)
    if p.suffix.lower() == ".csv":
        with p.open(newline="", encoding="utf-8") as fh:
            missing = {"id", "lat", "lon"} - set(csv.DictReader(fh).fieldnames or ())
        if missing:
            raise ValueError(f"{path}: inventory has no column(s) {', '.join(sorted(missing))}")
    errors = RowErrors(str(p))
    positions: dict[str, tuple[float, float, str, int]] = {}
    skipped = 0
    for _where, row in read_rows(p, errors):
        if str(row.get("kind") or "lamp").strip() != "lamp":
            continue
        r = Row(row)
        try:
            lat, lon = r.position()
            positions[r.text("id")] = (lat, lon, r.text("segment", ""), int(r.num("order", -1e9, 1e9, 0)))
        except ValueError:
            skipped += 1
    return positions, skipped
