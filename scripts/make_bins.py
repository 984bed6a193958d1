"""Write the bin inventories of the demo district and of Schwerte (deterministic: same seed, same file).

Bins stand where they would in the street: residential containers (mostly 660/1100 L, some
240 L) along the residential streets and the main roads, small litter bins (120/240 L) in the
pedestrian shopping street, and park bins along the paths. Sensor geometry (height to the
floor, blind zone) follows the container size; density is that of loose waste of the kind.

    .venv/bin/python scripts/make_bins.py            # both sites
    .venv/bin/python scripts/make_bins.py --check    # fail if the files differ from a fresh run
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from devices.inventory import Bin, BinKind, RoadClass, write_bins  # noqa: E402

# container volume (L) -> (sensor height to the floor, blind zone), mm
GEOMETRY: dict[int, tuple[int, int]] = {
    120: (880, 150),
    240: (1000, 150),
    660: (1100, 200),
    1100: (1250, 250),
}
DENSITY: dict[BinKind, float] = {"residential": 0.12, "shopping": 0.07, "park": 0.08}
Segment = tuple[tuple[float, float], tuple[float, float]]


@dataclass(frozen=True, slots=True)
class Street:
    """A straight street from `a` to `b` (lat, lon) with bins of one kind spread along it."""

    a: tuple[float, float]
    b: tuple[float, float]
    kind: BinKind
    road: RoadClass
    count: int
    zone: str = ""


def _volume(rng: random.Random, kind: BinKind) -> int:
    if kind == "residential":
        return rng.choices((1100, 660, 240, 120), weights=(50, 22, 23, 5))[0]
    if kind == "shopping":
        return rng.choices((120, 240), weights=(70, 30))[0]
    return rng.choices((120, 240), weights=(55, 45))[0]


def _bins(streets: Sequence[Street], rng: random.Random, id_prefix: str, eui_prefix: str) -> list[Bin]:
    out: list[Bin] = []
    for st in streets:
        for i in range(st.count):
            t = (i + 0.5 + rng.uniform(-0.3, 0.3)) / st.count
            lat = st.a[0] + (st.b[0] - st.a[0]) * t + rng.uniform(-6e-5, 6e-5)
            lon = st.a[1] + (st.b[1] - st.a[1]) * t + rng.uniform(-9e-5, 9e-5)
            vol = _volume(rng, st.kind)
            height, blind = GEOMETRY[vol]
            n = len(out) + 1
            out.append(
                Bin(
                    id=f"{id_prefix}{n:04d}",
                    dev_eui=f"{eui_prefix}{n:04x}",
                    lat=round(lat, 6),
                    lon=round(lon, 6),
                    kind=st.kind,
                    volume_l=float(vol),
                    height_mm=float(height),
                    blind_zone_mm=float(blind),
                    density_kg_l=round(DENSITY[st.kind] * rng.uniform(0.85, 1.15), 3),
                    road_class=st.road,
                    zone=st.zone,
                )
            )
    return out


def kreuzviertel(seed: int = 5) -> list[Bin]:
    """About 150 bins in Dortmund's Kreuzviertel (lat 51.505-51.515, lon 7.445-7.465)."""
    rng = random.Random(seed)
    streets = [
        # east-west residential streets
        Street((51.5062, 7.4470), (51.5062, 7.4610), "residential", "residential", 18),
        Street((51.5076, 7.4465), (51.5076, 7.4612), "residential", "residential", 15),
        Street((51.5106, 7.4470), (51.5106, 7.4610), "residential", "residential", 15),
        Street((51.5118, 7.4520), (51.5118, 7.4612), "residential", "residential", 12),
        # north-south residential streets
        Street((51.5055, 7.4500), (51.5120, 7.4500), "residential", "residential", 12),
        Street((51.5055, 7.4545), (51.5140, 7.4545), "residential", "residential", 11),
        Street((51.5055, 7.4585), (51.5140, 7.4585), "residential", "residential", 11),
        # main roads: Hohe Strasse (east) and Sonnenstrasse (south-west)
        Street((51.5052, 7.4624), (51.5145, 7.4624), "residential", "main", 10),
        Street((51.5052, 7.4455), (51.5090, 7.4452), "residential", "main", 6),
        # the shopping street, a pedestrian zone served only in its morning window
        Street((51.5092, 7.4490), (51.5092, 7.4600), "shopping", "pedestrian", 20, "fuzo"),
        # Westpark: bins along two paths
        Street((51.5128, 7.4462), (51.5128, 7.4515), "park", "pedestrian", 8),
        Street((51.5142, 7.4462), (51.5126, 7.4515), "park", "pedestrian", 8),
        Street((51.5146, 7.4470), (51.5146, 7.4510), "park", "residential", 4),
    ]
    return _bins(streets, rng, "B", "70b3d57ed002")


def schwerte(seed: int = 7) -> list[Bin]:
    """About 250 bins around Schwerte's centre (lat 51.445, lon 7.565)."""
    rng = random.Random(seed)
    streets: list[Street] = []
    # a residential grid around the old town
    for k, lat in enumerate((51.4365, 51.4390, 51.4415, 51.4480, 51.4505, 51.4530)):
        streets.append(Street((lat, 7.5480), (lat, 7.5820), "residential", "residential", 20 + k % 3))
    for lon in (7.5520, 7.5760, 7.5800):
        streets.append(Street((51.4360, lon), (51.4540, lon), "residential", "residential", 15))
    # main roads: the ring around the old town and the road to the station
    streets += [
        Street((51.4430, 7.5560), (51.4480, 7.5740), "residential", "main", 14),
        Street((51.4420, 7.5600), (51.4420, 7.5720), "residential", "main", 10),
        # the old town: a pedestrian zone (Huesingstrasse, Markt) with shops
        Street((51.4440, 7.5610), (51.4468, 7.5690), "shopping", "pedestrian", 18, "altstadt"),
        Street((51.4452, 7.5630), (51.4452, 7.5680), "shopping", "pedestrian", 10, "altstadt"),
        # parks: the Ruhr meadows south of the centre and the Freischuetz park in the west
        Street((51.4340, 7.5560), (51.4340, 7.5720), "park", "pedestrian", 18),
        Street((51.4470, 7.5490), (51.4500, 7.5530), "park", "pedestrian", 8),
    ]
    return _bins(streets, rng, "S", "70b3d57ed003")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="compare with the files instead of writing them")
    args = p.parse_args(argv)
    sites = ROOT / "edge" / "app" / "sites"
    stale = []
    for path, bins in (
        (sites / "kreuzviertel" / "bins.csv", kreuzviertel()),
        (sites / "schwerte" / "bins.csv", schwerte()),
    ):
        tmp = path.with_suffix(".csv.tmp")
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bins(tmp, bins)
        if args.check:
            same = path.exists() and path.read_bytes() == tmp.read_bytes()
            tmp.unlink()
            if not same:
                stale.append(str(path))
            continue
        tmp.replace(path)
        kinds = {k: sum(1 for b in bins if b.kind == k) for k in ("residential", "shopping", "park")}
        print(f"wrote {path}: {len(bins)} bins {kinds}")
    if stale:
        print(f"out of date (run scripts/make_bins.py): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
