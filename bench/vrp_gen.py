"""Seeded routing instances at waste-collection sizes, for bench_vrp beside the public ones.

A city of `area_km` square: bins in districts (Gaussian clusters) and scattered, a depot near the
edge and a transfer station (the disposal site) on the other side; distances are the straight
line times a road detour of 1.3 in metres, travel times at 20 km/h in seconds. Each bin has a
volume (240, 660 or 1,100 l) and a fill level at collection drawn from a beta distribution;
its demand is that many litres and kilograms (density 0.08-0.2 kg/l). Trucks carry
`truck_l` litres and `truck_kg` kilograms: the day's waste takes about two loads per truck, so
every route reloads at the transfer station (10 min to unload) and must come home empty. Shifts
run 06:00-14:00; a share of the bins (a pedestrian zone, a market) must be collected early
(06:00-09:00) and a few late (10:00-13:00). Most bins are required (the planner's "mandatory");
the rest are optional with a penalty of 150-450 m, as the waste planner makes them. The same
`GenParams` and seed always give the same instance.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass

from optimizer.routing import RoutingInstance, Vehicle

SPEED_MS = 20 / 3.6
DETOUR = 1.3
SHIFT = (6 * 3600, 14 * 3600)


@dataclass(frozen=True, slots=True)
class GenParams:
    """What a generated instance is made of; with the seed, its key in the reference cache."""

    bins: int = 2000
    trucks: int = 20
    area_km: float = 12.0
    truck_l: int = 24_000  # litres of bin contents (after compaction)
    truck_kg: int = 9_000
    early_share: float = 0.15  # bins to collect 06:00-09:00
    late_share: float = 0.05  # bins to collect 10:00-13:00
    required_share: float = 0.8
    service_s: int = 40
    unload_s: int = 600

    def key(self, seed: int) -> str:
        return ",".join(f"{k}={v}" for k, v in asdict(self).items()) + f",seed={seed}"

    def name(self, seed: int) -> str:
        return f"gen-{self.bins}b{self.trucks}t-s{seed}"


def generate(p: GenParams, seed: int) -> RoutingInstance:
    """The instance: node 0 the depot, node 1 the transfer station, nodes 2.. the bins."""
    rng = random.Random(f"{p.key(seed)}")
    side = p.area_km * 1000.0
    centres = [(rng.uniform(0.1, 0.9) * side, rng.uniform(0.1, 0.9) * side) for _ in range(12)]
    points = [(0.05 * side, 0.5 * side), (0.95 * side, 0.45 * side)]
    for _ in range(p.bins):
        if rng.random() < 0.8:
            cx, cy = rng.choice(centres)
            x, y = rng.gauss(cx, 0.06 * side), rng.gauss(cy, 0.06 * side)
        else:
            x, y = rng.uniform(0, side), rng.uniform(0, side)
        points.append((min(max(x, 0.0), side), min(max(y, 0.0), side)))
    n = len(points)
    dist = [[round(DETOUR * math.dist(a, b)) for b in points] for a in points]
    time = [[round(d / SPEED_MS) for d in row] for row in dist]
    demand: list[tuple[int, ...]] = [(0, 0), (0, 0)]
    windows = [SHIFT, SHIFT]
    required = [False, False]
    penalty = [0, 0]
    for _ in range(p.bins):
        volume = rng.choice((240, 240, 660, 1100, 1100))
        fill = rng.betavariate(4, 2)
        litres = round(volume * fill)
        demand.append((litres, round(litres * rng.uniform(0.08, 0.2))))
        u = rng.random()
        if u < p.early_share:
            windows.append((6 * 3600, 9 * 3600))
        elif u < p.early_share + p.late_share:
            windows.append((10 * 3600, 13 * 3600))
        else:
            windows.append(SHIFT)
        req = rng.random() < p.required_share
        required.append(req)
        penalty.append(0 if req else rng.randint(150, 450))
    return RoutingInstance(
        time=time,
        distance=dist,
        demand=demand,
        service=[0, p.unload_s] + [p.service_s] * p.bins,
        window=windows,
        required=required,
        penalty=penalty,
        customers=list(range(2, n)),
        reload=[1],
        vehicles=[Vehicle(f"truck{k}", 0, 0, (p.truck_l, p.truck_kg), SHIFT) for k in range(p.trucks)],
        names=["depot", "transfer"] + [f"bin{i}" for i in range(p.bins)],
    )
