"""Site inventory: thousands of devices from one CSV or GeoJSON file, not per-device config.

A lamp row names its position, road segment (and its order along it), EN 13201
lighting class, cabinet and feeder, flags (never_dim, fear_space, bike_path) and
how to reach it (controller endpoint, unit id, lamp index behind the controller).
"""

from __future__ import annotations

import csv
import json
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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

    @property
    def group(self) -> str:
        """Lamps of one segment, class and floor kind are planned together."""
        floor = "nd" if "never_dim" in self.flags else "fs" if "fear_space" in self.flags else "std"
        return f"{self.segment}:{self.lighting_class}:{floor}"


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
        """The same inventory plus charge points, indexed by OPC-UA server (url and ids)."""
        by_id = {c.id: c for c in chargers}
        servers: dict[str, tuple[str, list[str]]] = {}
        for c in by_id.values():
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


class _Errors:
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


class _Row:
    """Typed access to one inventory row; errors name the column."""

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


def _charger_from(row: Mapping[str, Any], where: str, errors: _Errors) -> Charger | None:
    r = _Row(row)
    try:
        cid = r.text("id")
        if not _ID.match(cid):
            raise ValueError(f"id: {cid!r} is not a valid id (letters, digits, _.:-)")
        url = r.text("url")
        if not url.startswith("opc.tcp://"):
            raise ValueError(f"url: {url!r} must start with opc.tcp://")
        phases = int(r.num("phases", 1, 3, 3))
        if phases not in (1, 3):
            raise ValueError(f"phases: {phases} must be 1 or 3")
        return Charger(
            id=cid,
            lat=r.num("lat", -90, 90),
            lon=r.num("lon", -180, 180),
            segment=r.text("segment", ""),
            cabinet=r.text("cabinet"),
            feeder=r.text("feeder"),
            post=r.text("post", cid),
            server=r.text("controller"),
            url=url,
            max_current_a=r.num("max_current_a", 6, 63, 16),
            phases=phases,
            failsafe_current_a=_failsafe(r),
        )
    except ValueError as exc:
        errors.add(where, str(exc))
        return None


def _failsafe(r: _Row) -> float | None:
    """The optional `failsafe_current_a` column: 0 (stop charging) or 6..63 A; blank is the site's."""
    if str(r.row.get("failsafe_current_a") or "").strip() == "":
        return None
    v = r.num("failsafe_current_a", 0, 63)
    if 0 < v < 6:
        raise ValueError(f"failsafe_current_a: {v:g} A is not 0 or at least 6 A (IEC 61851)")
    return v


def _lamp_from(row: Mapping[str, Any], where: str, errors: _Errors) -> Lamp | None:
    def text(key: str, default: str | None = None) -> str:
        v = row.get(key)
        if v is None or str(v).strip() == "":
            if default is None:
                raise ValueError(f"{key}: missing")
            return default
        return str(v).strip()

    def num(key: str, lo: float, hi: float, default: float | None = None) -> float:
        raw = text(key, None if default is None else str(default))
        try:
            v = float(raw)
        except ValueError:
            raise ValueError(f"{key}: {raw!r} is not a number") from None
        if not lo <= v <= hi:
            raise ValueError(f"{key}: {v:g} is outside {lo:g}..{hi:g}")
        return v

    try:
        lamp_id = text("id")
        if not _ID.match(lamp_id):
            raise ValueError(f"id: {lamp_id!r} is not a valid id (letters, digits, _.:-)")
        kind = text("kind", "lamp")
        if kind != "lamp":
            raise ValueError(f"kind: {kind!r} is not a known device kind (lamp, charger)")
        cls_name = text("lighting_class").upper()
        if cls_name not in LIGHTING_CLASSES:
            raise ValueError(f"lighting_class: {cls_name!r} is not an EN 13201 class (M1-M6, C0-C5, P1-P6)")
        flags = frozenset(f.strip() for f in re.split(r"[;|,\s]+", text("flags", "")) if f.strip())
        if unknown := flags - FLAGS:
            raise ValueError(f"flags: unknown {sorted(unknown)} (known: {sorted(FLAGS)})")
        p_max = num("p_max_w", 1, 2000, 38.0)
        p_min = num("p_min_w", 0, 2000, round(p_max * 0.1, 1))
        if p_min > p_max:
            raise ValueError(f"p_min_w: {p_min:g} is above p_max_w {p_max:g}")
        return Lamp(
            id=lamp_id,
            lat=num("lat", -90, 90),
            lon=num("lon", -180, 180),
            segment=text("segment"),
            order=int(num("order", 0, 1e9, 0)),
            lighting_class=cls_name,
            cabinet=text("cabinet", ""),
            feeder=text("feeder", ""),
            flags=flags,
            controller=text("controller"),
            host=text("host", "127.0.0.1"),
            port=int(num("port", 1, 65535)),
            unit=int(num("unit", 0, 247, 1)),
            index=int(num("index", 0, 65535)),
            p_max_w=p_max,
            p_min_w=p_min,
        )
    except ValueError as exc:
        errors.add(where, str(exc))
        return None


def _rows_csv(path: Path) -> Iterable[tuple[str, Mapping[str, Any]]]:
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        for i, row in enumerate(reader, start=2):
            yield f"line {i}", row


def _rows_geojson(path: Path, errors: _Errors) -> Iterable[tuple[str, Mapping[str, Any]]]:
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


def load_inventory(path: Path | str) -> Inventory:
    """Read a CSV or GeoJSON inventory; raise ConfigError listing every bad row."""
    p = Path(path)
    errors = _Errors(str(p))
    if not p.exists():
        errors.add("file", "not found")
        errors.raise_if_any()
    suffix = p.suffix.lower()
    if suffix == ".csv":
        rows: Iterable[tuple[str, Mapping[str, Any]]] = _rows_csv(p)
    elif suffix in {".geojson", ".json"}:
        rows = _rows_geojson(p, errors)
    else:
        errors.add("file", f"unknown inventory format {suffix!r} (use .csv or .geojson)")
        errors.raise_if_any()
        rows = ()
    lamps: list[Lamp] = []
    seen: dict[str, str] = {}
    slots: dict[tuple[str, int], str] = {}
    endpoints: dict[str, tuple[str, int, int]] = {}
    chargers: list[Charger] = []
    for where, row in rows:
        if str(row.get("kind") or "lamp").strip() == "charger":
            charger = _charger_from(row, where, errors)
            if charger is not None:
                if charger.id in seen:
                    errors.add(where, f"id: {charger.id!r} already used at {seen[charger.id]}")
                    continue
                seen[charger.id] = where
                chargers.append(charger)
            continue
        lamp = _lamp_from(row, where, errors)
        if lamp is None:
            continue
        if lamp.id in seen:
            errors.add(where, f"id: {lamp.id!r} already used at {seen[lamp.id]}")
            continue
        ep = (lamp.host, lamp.port, lamp.unit)
        if endpoints.setdefault(lamp.controller, ep) != ep:
            errors.add(where, f"controller: {lamp.controller!r} has two different endpoints")
            continue
        if (other := slots.setdefault((lamp.controller, lamp.index), lamp.id)) != lamp.id:
            errors.add(where, f"index: {lamp.index} of {lamp.controller!r} is already lamp {other!r}")
            continue
        seen[lamp.id] = where
        lamps.append(lamp)
    if not lamps and not chargers and not errors.lines:
        errors.add("file", "no devices")
    errors.raise_if_any()
    inv = Inventory.build(lamps)
    return inv.with_chargers(chargers) if chargers else inv
