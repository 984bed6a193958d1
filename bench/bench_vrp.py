"""Benchmark the vehicle router on public instances: gap to the best-known cost, against PyVRP alone.

Instances (bench/data/vrp, copied from CVRPLIB and LKH-3's VRPTW set): six X instances (CVRP,
n = 100-227, fleet free, EUC_2D rounded to integers: the CVRPLIB convention, so costs compare
directly), Solomon RC208 (100 customers, 4 vehicles, distances floor(10 x euclid): costs in
tenths, as the published 776.1) and Gehring-Homberger R1_2_1 (200 customers, 20 vehicles,
distances round(1000 x euclid): costs in thousandths, as LKH's 4784110 = 4784.11).

Per instance and time limit: our router (`optimizer.routing.solve`, strategy "auto") and PyVRP
0.14 alone (`pyvrp.solve` on the same data, same seed, same limit), both on one thread; at the
first limit also OR-Tools alone (strategy "ortools"), the issue's baseline. Gaps are to the
best-known cost read from the solution file. Limits: 10 s and 60 s (--quick: two instances, 2 s);
`BENCH_VRP_LIMITS=10` (seconds, comma-separated) runs only the given limits. A run without a
clean plan counts as a 100 % gap in the mean.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

from bench.common import Row
from optimizer import vrplib
from optimizer.common import Timer
from optimizer.routing import RoutingInstance, pyvrp_model, solve

DATA = Path(__file__).resolve().parent / "data" / "vrp"
SEED = 0
INSTANCES: tuple[tuple[str, str], ...] = (
    ("X-n101-k25.vrp", "X-n101-k25.sol"),
    ("X-n106-k14.vrp", "X-n106-k14.sol"),
    ("X-n143-k7.vrp", "X-n143-k7.sol"),
    ("X-n157-k13.vrp", "X-n157-k13.sol"),
    ("X-n190-k8.vrp", "X-n190-k8.sol"),
    ("X-n228-k23.vrp", "X-n228-k23.sol"),
    ("RC208.100.4.vrptw", "RC208.100.4.7761.tour"),
    ("R1_2_1.200.20.vrptw", "R1_2_1.200.20.4784110.tour"),
)
QUICK = ("X-n101-k25.vrp", "RC208.100.4.vrptw")
TARGET_FROM_S = 10.0  # the targets are for 10 s and 60 s; shorter runs are smoke tests


def load(vrp: str, sol: str) -> tuple[str, RoutingInstance, int, bool]:
    """(name, instance, best-known cost in integer units, has time windows)."""
    data = vrplib.read_vrp(DATA / vrp)
    if sol.endswith(".tour"):
        _, best = vrplib.read_tour(DATA / sol, data.size)
    else:
        _, cost = vrplib.read_solution(DATA / sol)
        best = round(cost * data.scale)  # Solomon .sol files state tenths (776.1)
    return data.name, vrplib.to_instance(data), best, data.windows is not None


def pyvrp_alone(instance: RoutingInstance, limit_s: float) -> tuple[int | None, float]:
    """PyVRP's own search on the same data: (cost if feasible, wall seconds)."""
    import pyvrp
    from pyvrp.stop import MaxRuntime

    t0 = time.perf_counter()
    data = pyvrp_model(instance).data
    result = pyvrp.solve(data, MaxRuntime(limit_s), seed=SEED, collect_stats=False, display=False)
    took = time.perf_counter() - t0
    return (int(result.best.distance()) if result.best.is_feasible() else None), took


def ours(instance: RoutingInstance, limit_s: float, strategy: str) -> tuple[int | None, float, str]:
    """Our router: (cost if a clean plan serving everyone, wall seconds, solver label)."""
    t0 = time.perf_counter()
    plan = solve(instance, timer=Timer(time_limit_s=limit_s, seed=SEED), strategy=strategy)
    took = time.perf_counter() - t0
    clean = not plan.violations and not plan.dropped
    return (plan.distance if clean else None), took, plan.solver


def _gap(cost: int | None, best: int) -> float | None:
    return None if cost is None else 100.0 * (cost - best) / best


def _fmt(gap: float | None, took: float) -> str:
    return f"no plan ({took:.1f} s)" if gap is None else f"{gap:.2f} % in {took:.1f} s"


def run(quick: bool) -> list[Row]:
    env = os.environ.get("BENCH_VRP_LIMITS")
    limits = [float(x) for x in env.split(",")] if env else ([2.0] if quick else [10.0, 60.0])
    chosen = [p for p in INSTANCES if not quick or p[0] in QUICK]
    loaded = [load(vrp, sol) for vrp, sol in chosen]
    rows: list[Row] = []
    for k, limit in enumerate(limits):
        tag = f"vrp {limit:g} s"
        our_gaps: list[float] = []
        ref_gaps: list[float] = []
        tw_big = [0, 0]
        for name, instance, best, windows in loaded:
            what = f"{name} n={len(instance.customers)} best {best}"
            cost, took, _ = ours(instance, limit, "auto")
            ref, ref_took = pyvrp_alone(instance, limit)
            g, rg = _gap(cost, best), _gap(ref, best)
            our_gaps.append(g if g is not None else 100.0)
            ref_gaps.append(rg if rg is not None else 100.0)
            if windows and len(instance.customers) >= 200:
                tw_big[0] += g is not None
                tw_big[1] += 1
            rows.append(
                Row(
                    tag,
                    what,
                    _fmt(g, took),
                    reference=f"PyVRP {_fmt(rg, ref_took)}",
                    ratio="-" if g is None or rg is None else f"{g - rg:+.2f} pt",
                    target="<= PyVRP",
                    verdict="ok" if g is not None and (rg is None or g <= rg + 1e-9) else "worse",
                )
            )
            if k == 0:
                ocost, otook, osolver = ours(instance, limit, "ortools")
                og = _gap(ocost, best)
                rows.append(
                    Row(
                        tag,
                        f"{name} OR-Tools alone ({osolver.split(':')[1] if ':' in osolver else osolver})",
                        _fmt(og, otook),
                        reference=f"PyVRP {_fmt(rg, ref_took)}",
                        ratio="-" if og is None or rg is None else f"{og - rg:+.2f} pt",
                        target="baseline",
                    )
                )
        mean, ref_mean = statistics.fmean(our_gaps), statistics.fmean(ref_gaps)
        rows.append(
            Row(
                tag,
                f"mean gap over {len(loaded)} instances",
                f"{mean:.2f} %",
                reference=f"PyVRP {ref_mean:.2f} %",
                ratio=f"{mean - ref_mean:+.2f} pt",
                target="<= PyVRP" if limit >= TARGET_FROM_S else "smoke only",
                verdict=("ok" if mean <= ref_mean + 1e-9 else "FAIL") if limit >= TARGET_FROM_S else "-",
            )
        )
        if tw_big[1]:
            rows.append(
                Row(
                    tag,
                    "200-customer time-window instances solved",
                    f"{tw_big[0]}/{tw_big[1]}",
                    target="all",
                    verdict="ok" if tw_big[0] == tw_big[1] else "FAIL",
                )
            )
    return rows
