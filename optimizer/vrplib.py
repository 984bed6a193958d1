"""Readers for public routing benchmark files, so the router can be measured against best-known results.

Formats (all TSPLIB-style `KEY : value` headers followed by numbered sections):

- CVRPLIB `.vrp` (X set: `EUC_2D`, distances rounded to the nearest integer) and its `.sol`
  (`Route #k: c1 c2 ...` with customers numbered from 1, then `Cost <value>`).
- LKH-3 `.vrptw` (Solomon / Gehring-Homberger with `VEHICLES`, `SERVICE_TIME`, `TIME_WINDOW_SECTION`;
  `FLOOR_2D` with `SCALE`: floor(scale * euclid); `EXACT_2D`: round(1000 * euclid)) and its `.tour`
  (one giant tour over nodes 1..DIMENSION + depot copies numbered above DIMENSION, cost in the
  comment as `0_<cost>`).
- CVRPLIB-style `.vrp` with a `TIME_WINDOW_SECTION` (Solomon in `EUC_2D`): read as FLOOR_2D with
  scale 10, because the published costs (RC208: 776.1) truncate each distance to one decimal; the
  plain float length of the same routes is 778.9 and nearest-integer rounding gives 773.

`to_instance()` turns a file into a `RoutingInstance` with integer distances in the file's own
cost units (times, windows and service scaled by the same factor), so a plan's distance compares
directly to the best-known cost read from the solution file.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass
from pathlib import Path

from optimizer.routing import RoutingInstance, Vehicle

_SECTIONS = (
    "NODE_COORD_SECTION",
    "DEMAND_SECTION",
    "TIME_WINDOW_SECTION",
    "DEPOT_SECTION",
    "SERVICE_TIME_SECTION",
)


@dataclass(frozen=True, slots=True)
class VrpFile:
    """A parsed benchmark file; node 0 is the depot (file numbering starts at 1)."""

    name: str
    edge_weight_type: str  # EUC_2D, FLOOR_2D, EXACT_2D
    scale: int  # integer cost units per coordinate unit (1 for EUC_2D, SCALE or 1000 otherwise)
    capacity: int
    vehicles: int | None  # fleet size if the file fixes it
    coords: list[tuple[float, float]]
    demand: list[int]
    service: list[int]  # in the file's time units (unscaled)
    windows: list[tuple[int, int]] | None  # unscaled; None for plain CVRP

    @property
    def size(self) -> int:
        return len(self.coords)


def read_vrp(path: Path) -> VrpFile:
    """Parse a `.vrp` or `.vrptw` file; a ValueError names the file and what is wrong."""
    header: dict[str, str] = {}
    sections: dict[str, list[list[str]]] = {}
    current: str | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line == "EOF":
            continue
        key = line.split(":")[0].strip() if ":" in line else line.split()[0]
        if key in _SECTIONS:
            current = key
            sections[current] = []
        elif ":" in line and current is None:
            k, _, v = line.partition(":")
            header[k.strip()] = v.strip()
        elif current is not None:
            sections[current].append(line.split())
        else:
            raise ValueError(f"{path}: unexpected line {line!r}")
    try:
        n = int(header["DIMENSION"])
        capacity = int(header["CAPACITY"])
        ewt = header.get("EDGE_WEIGHT_TYPE", "EUC_2D")
        coords = _numbered(sections["NODE_COORD_SECTION"], n, path, 2)
        demand = [int(row[0]) for row in _numbered(sections["DEMAND_SECTION"], n, path, 1)]
        depots = [int(row[0]) for row in sections.get("DEPOT_SECTION", [["1"]]) if int(row[0]) > 0]
    except KeyError as exc:
        raise ValueError(f"{path}: missing {exc.args[0]}") from exc
    if depots != [1]:
        raise ValueError(f"{path}: only a single depot numbered 1 is supported, got {depots}")
    if ewt == "EUC_2D" and "TIME_WINDOW_SECTION" in sections:
        # Solomon files in CVRPLIB layout: best-known costs truncate distances to one decimal
        ewt, scale = "FLOOR_2D", 10
    elif ewt == "EUC_2D":
        scale = 1
    elif ewt == "FLOOR_2D":
        scale = int(header.get("SCALE", "1"))
    elif ewt == "EXACT_2D":
        scale = 1000
    else:
        raise ValueError(f"{path}: EDGE_WEIGHT_TYPE {ewt} not supported")
    windows = None
    if "TIME_WINDOW_SECTION" in sections:
        windows = [(int(r[0]), int(r[1])) for r in _numbered(sections["TIME_WINDOW_SECTION"], n, path, 2)]
    service = [0] * n
    if "SERVICE_TIME" in header:
        service = [0] + [int(header["SERVICE_TIME"])] * (n - 1)
    if "SERVICE_TIME_SECTION" in sections:
        service = [int(r[0]) for r in _numbered(sections["SERVICE_TIME_SECTION"], n, path, 1)]
    return VrpFile(
        name=header.get("NAME", path.stem),
        edge_weight_type=ewt,
        scale=scale,
        capacity=capacity,
        vehicles=int(header["VEHICLES"]) if "VEHICLES" in header else None,
        coords=[(float(r[0]), float(r[1])) for r in coords],
        demand=demand,
        service=service,
        windows=windows,
    )


def _numbered(rows: list[list[str]], n: int, path: Path, width: int) -> list[list[str]]:
    """Rows `i v1 .. vk` for i = 1..n, in order, with at least `width` values each."""
    if len(rows) != n:
        raise ValueError(f"{path}: a section has {len(rows)} rows, expected {n}")
    out = []
    for i, row in enumerate(rows, start=1):
        if int(row[0]) != i or len(row) < width + 1:
            raise ValueError(f"{path}: bad section row {' '.join(row)!r} (expected node {i})")
        out.append(row[1:])
    return out


def distance(vrp: VrpFile, i: int, j: int) -> int:
    """The integer cost of arc (i, j) in the file's convention (times `scale`)."""
    (x1, y1), (x2, y2) = vrp.coords[i], vrp.coords[j]
    d = math.hypot(x1 - x2, y1 - y2)
    if vrp.edge_weight_type == "FLOOR_2D":
        return math.floor(d * vrp.scale)
    return round(d * vrp.scale)  # EUC_2D: TSPLIB nint; EXACT_2D: nearest thousandth


def matrix(vrp: VrpFile) -> list[list[int]]:
    n = vrp.size
    return [[distance(vrp, i, j) for j in range(n)] for i in range(n)]


def float_cost(vrp: VrpFile, routes: list[list[int]]) -> float:
    """Total Euclidean length with no rounding (the Solomon convention for EUC_2D files with windows)."""
    total = 0.0
    for r in routes:
        path = [0, *r, 0]
        total += sum(math.dist(vrp.coords[a], vrp.coords[b]) for a, b in itertools.pairwise(path))
    return total


def cost(vrp: VrpFile, routes: list[list[int]]) -> int:
    """Total integer cost of depot-to-depot routes (customer node numbers from 1)."""
    total = 0
    for r in routes:
        path = [0, *r, 0]
        total += sum(distance(vrp, a, b) for a, b in itertools.pairwise(path))
    return total


def to_instance(vrp: VrpFile, *, vehicles: int | None = None) -> RoutingInstance:
    """A routing instance in integer cost units; travel time equals distance (both scaled).

    The fleet is `vehicles`, else the file's VEHICLES, else enough for the demand with room to spare
    (CVRPLIB X files leave the fleet free). With windows, the depot's window is every vehicle's shift.
    """
    n = vrp.size
    dist = matrix(vrp)
    k = vehicles or vrp.vehicles or max(1, n - 1)
    s = vrp.scale
    windows = [(a * s, b * s) for a, b in vrp.windows] if vrp.windows else [(0, 2**40)] * n
    shift = windows[0]
    return RoutingInstance(
        time=dist,
        distance=dist,
        demand=[(d,) for d in vrp.demand],
        service=[x * s for x in vrp.service],
        window=windows,
        required=[i > 0 for i in range(n)],
        penalty=[0] * n,
        customers=list(range(1, n)),
        reload=[],
        vehicles=[Vehicle(f"v{i}", 0, 0, (vrp.capacity,), shift) for i in range(k)],
        names=[str(i) for i in range(n)],
    )


def read_solution(path: Path) -> tuple[list[list[int]], float]:
    """Routes (customer numbers from 1) and cost from a CVRPLIB `.sol` file."""
    routes: list[list[int]] = []
    best: float | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.lower().startswith("route"):
            _, _, rest = line.partition(":")
            routes.append([int(x) for x in rest.split()])
        elif line.lower().startswith("cost"):
            best = float(line.split()[1])
    if best is None or not routes:
        raise ValueError(f"{path}: no routes or no Cost line")
    return routes, best


def read_tour(path: Path, dimension: int) -> tuple[list[list[int]], int]:
    """Routes (customer numbers from 1) and cost from an LKH `.tour` file for a `.vrptw` instance.

    The tour visits file nodes 1..dimension and depot copies numbered above `dimension`; each depot
    (1 or a copy) closes a route. The cost is in the comment, written `0_<cost>`.
    """
    text = path.read_text()
    found = re.search(r"Cost\s*=\s*\d*_(\d+)", text)
    if found is None:
        raise ValueError(f"{path}: no 'Cost = ..._<cost>' comment")
    body = text.split("TOUR_SECTION", 1)[1].split()
    routes: list[list[int]] = [[]]
    for tok in body:
        node = int(tok)
        if node == -1:
            break
        if node == 1 or node > dimension:
            routes.append([])
        else:
            routes[-1].append(node - 1)
    return [r for r in routes if r], int(found.group(1))
