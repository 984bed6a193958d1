"""Benchmark the vehicle router: strategy "auto" (both cores) against PyVRP alone (one process) at the
same wall time, on public instances and on generated ones at waste-collection sizes.

Public instances (bench/data/vrp, copied from CVRPLIB and LKH-3's VRPTW set): six X instances
(CVRP, n = 100-227, fleet free, EUC_2D rounded to integers: the CVRPLIB convention, so costs
compare directly), Solomon RC208 (100 customers, 4 vehicles, distances floor(10 x euclid): costs
in tenths, as the published 776.1) and Gehring-Homberger R1_2_1 (200 customers, 20 vehicles,
distances round(1000 x euclid): costs in thousandths, as LKH's 4784110 = 4784.11). Their
reference is the best-known cost read from the solution file.

Generated instances (bench/vrp_gen.py, seeded): 200 bins / 4 trucks, 500 / 8 and 2,000 / 20,
with two load dimensions, reloads at a transfer station, shifts, time windows on a fifth of the
bins and optional bins with penalties. Their reference is the best of a long run of each solver
(`REF_FACTOR` x the largest limit, seed 0: PyVRP alone and "auto"), made once and cached in
bench/data/vrp/generated_refs.json under the generator's parameters and seed; delete an entry to
make it again. A short run may beat the reference (a negative gap).

Per instance and limit, each solver runs with seeds 0..RUNS-1 (bench.common.RUNS): "PyVRP alone"
is `solve(strategy="pyvrp", workers=1)` (PyVRP's search in this process for the whole limit, its
set-up included, the plan checked as any other), "auto" is `solve(strategy="auto")` with the
default workers (two on this machine). Cost is distance plus the penalties of dropped optional
customers; a run without a clean plan is a failure, counted in its row and as a 100 % gap.
Noise is the spread (max - min) of PyVRP alone's own gaps over the seeds: "auto" passes an
instance when its median gap is at most PyVRP's median plus that spread and it failed no more
often. Wall time (the longest run) and CPU seconds (median, this process and its helpers) are in
each cell; runs more than 1 s over the limit are counted in a row of their own. Limits: 10 s
(--quick: three instances, 2 s); `BENCH_VRP_LIMITS=10,60` (seconds) chooses them.
`BENCH_VRP_ORTOOLS=1` adds OR-Tools alone (seed 0), the issue's first baseline.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench.common import RUNS, Row, median, median_spread
from bench.vrp_gen import GenParams, generate
from optimizer import vrplib
from optimizer.common import Timer
from optimizer.routing import RoutingInstance, solve

DATA = Path(__file__).resolve().parent / "data" / "vrp"
REFS = DATA / "generated_refs.json"
REF_FACTOR = 6
PUBLIC: tuple[tuple[str, str], ...] = (
    ("X-n101-k25.vrp", "X-n101-k25.sol"),
    ("X-n106-k14.vrp", "X-n106-k14.sol"),
    ("X-n143-k7.vrp", "X-n143-k7.sol"),
    ("X-n157-k13.vrp", "X-n157-k13.sol"),
    ("X-n190-k8.vrp", "X-n190-k8.sol"),
    ("X-n228-k23.vrp", "X-n228-k23.sol"),
    ("RC208.100.4.vrptw", "RC208.100.4.7761.tour"),
    ("R1_2_1.200.20.vrptw", "R1_2_1.200.20.4784110.tour"),
)
GENERATED: tuple[tuple[GenParams, int], ...] = (
    (GenParams(bins=200, trucks=4), 0),
    (GenParams(bins=500, trucks=8), 0),
    (GenParams(bins=2000, trucks=20), 0),
)
QUICK = ("X-n101-k25.vrp", "RC208.100.4.vrptw", "gen-200b4t-s0")
TARGET_FROM_S = 10.0  # the targets are for 10 s and more; shorter runs are smoke tests
_OVER_S = 1.0  # a run this much over its limit is counted as over it
FAILED = 100.0  # the gap a run without a clean plan counts as
LAST_CPU = [0.0]  # CPU seconds of the last `ours` call (process and helpers)


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    instance: RoutingInstance
    ref: int | None  # best known (public) or the cached long-run reference (generated)
    ref_kind: str


def load(vrp: str, sol: str) -> tuple[str, RoutingInstance, int, bool]:
    """(name, instance, best-known cost in integer units, has time windows)."""
    data = vrplib.read_vrp(DATA / vrp)
    if sol.endswith(".tour"):
        _, best = vrplib.read_tour(DATA / sol, data.size)
    else:
        _, cost = vrplib.read_solution(DATA / sol)
        best = round(cost * data.scale)  # Solomon .sol files state tenths (776.1)
    return data.name, vrplib.to_instance(data), best, data.windows is not None


def _cpu_s() -> float:
    """CPU seconds of this process and of its ended (reaped) children: the helpers' share too."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def ours(
    instance: RoutingInstance, limit_s: float, strategy: str, seed: int, workers: int | None = None
) -> tuple[int | None, float, str]:
    """One solve: (cost if the plan is clean, wall seconds, solver label); CPU seconds in LAST_CPU."""
    t0, c0 = time.perf_counter(), _cpu_s()
    timer = Timer(time_limit_s=limit_s, seed=seed, workers=workers)
    plan = solve(instance, timer=timer, strategy=strategy)
    took = time.perf_counter() - t0
    LAST_CPU[0] = _cpu_s() - c0
    return (None if plan.violations else plan.distance + plan.penalty), took, plan.solver


def _pyvrp(instance: RoutingInstance, limit_s: float, seed: int) -> tuple[int | None, float, str]:
    return ours(instance, limit_s, "pyvrp", seed, workers=1)


def _auto(instance: RoutingInstance, limit_s: float, seed: int) -> tuple[int | None, float, str]:
    return ours(instance, limit_s, "auto", seed)


def reference(params: GenParams, seed: int, instance: RoutingInstance, long_s: float) -> int | None:
    """The cached long-run reference of a generated instance; made (and cached) when missing."""
    refs = json.loads(REFS.read_text()) if REFS.exists() else {}
    key = params.key(seed)
    if key in refs:
        return int(refs[key]["cost"])
    runs = {"pyvrp": _pyvrp(instance, long_s, 0), "auto": _auto(instance, long_s, 0)}
    costs = [c for c, _, _ in runs.values() if c is not None]
    if not costs:
        return None
    refs[key] = {
        "name": params.name(seed),
        "cost": min(costs),
        "how": f"best clean plan of PyVRP alone and auto, {long_s:g} s each, seed 0",
        "runs": {k: {"cost": c, "wall_s": round(w, 1), "solver": s} for k, (c, w, s) in runs.items()},
        "made": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load_avg_1m": round(os.getloadavg()[0], 1),
    }
    REFS.write_text(json.dumps(refs, indent=2, sort_keys=True) + "\n")
    return min(costs)


def cases(quick: bool, long_s: float) -> list[Case]:
    out = []
    for vrp, sol in PUBLIC:
        if not quick or vrp in QUICK:
            name, instance, best, _ = load(vrp, sol)
            out.append(Case(name, instance, best, "best known"))
    for params, seed in GENERATED:
        if not quick or params.name(seed) in QUICK:
            instance = generate(params, seed)
            ref = reference(params, seed, instance, long_s)
            out.append(Case(params.name(seed), instance, ref, "long-run ref"))
    return out


def _gaps(
    case: Case, limit_s: float, run: Callable[[RoutingInstance, float, int], tuple[int | None, float, str]]
) -> tuple[list[float], int, float, float]:
    """Gaps (%) over seeds 0..RUNS-1 (a failure counts FAILED), failures, the longest wall time, the
    median CPU seconds per run."""
    gaps, failed, wall, cpu = [], 0, 0.0, []
    for seed in range(RUNS):
        cost, took, _ = run(case.instance, limit_s, seed)
        wall = max(wall, took)
        cpu.append(LAST_CPU[0])
        if cost is None or case.ref is None:
            failed += 1
            gaps.append(FAILED)
        else:
            gaps.append(100.0 * (cost - case.ref) / case.ref)
    return gaps, failed, wall, median(cpu)


def _cell(gaps: list[float], failed: int, wall: float, cpu: float) -> str:
    fails = f", {failed} failed" if failed else ""
    return f"{median_spread(gaps, '{:.2f}')} %{fails}, wall <= {wall:.1f} s, cpu {cpu:.1f} s"


def run(quick: bool) -> list[Row]:
    env = os.environ.get("BENCH_VRP_LIMITS")
    limits = [float(x) for x in env.split(",")] if env else ([2.0] if quick else [10.0])
    loaded = cases(quick, REF_FACTOR * max(10.0, *limits))
    rows = [
        Row(
            "vrp",
            "machine while measuring",
            f"{os.cpu_count()} cores, load avg {os.getloadavg()[0]:.1f} (shared with other sessions)",
        )
    ]
    for limit in limits:
        tag = f"vrp {limit:g} s"
        means: dict[str, list[float]] = {"auto": [], "pyvrp": []}
        over = {"auto": 0, "pyvrp": 0}
        passed = 0
        for case in loaded:
            pg, pf, pw, pc = _gaps(case, limit, _pyvrp)
            ag, af, aw, ac = _gaps(case, limit, _auto)
            noise = max(pg) - min(pg)
            diff = median(ag) - median(pg)
            ok = diff <= noise + 1e-9 and af <= pf
            passed += ok
            over["auto"] += aw > limit + _OVER_S
            over["pyvrp"] += pw > limit + _OVER_S
            means["auto"].append(median(ag))
            means["pyvrp"].append(median(pg))
            rows.append(
                Row(
                    tag,
                    f"{case.name} n={len(case.instance.customers)} ({case.ref_kind} {case.ref})",
                    f"auto {_cell(ag, af, aw, ac)}",
                    reference=f"PyVRP alone {_cell(pg, pf, pw, pc)}",
                    ratio=f"{diff:+.2f} pt (noise {noise:.2f})",
                    target="<= PyVRP + noise",
                    verdict="ok" if ok else "worse",
                )
            )
            if os.environ.get("BENCH_VRP_ORTOOLS") == "1":
                oc, ow, osolver = ours(case.instance, limit, "ortools", 0, workers=1)
                og = FAILED if oc is None or case.ref is None else 100.0 * (oc - case.ref) / case.ref
                rows.append(Row(tag, f"{case.name} OR-Tools alone ({osolver})", f"{og:.2f} % in {ow:.1f} s"))
        am, pm = statistics.fmean(means["auto"]), statistics.fmean(means["pyvrp"])
        target = limit >= TARGET_FROM_S
        rows.append(
            Row(
                tag,
                f"mean of median gaps over {len(loaded)} instances",
                f"auto {am:.2f} %",
                reference=f"PyVRP alone {pm:.2f} %",
                ratio=f"{am - pm:+.2f} pt",
                target="< PyVRP" if target else "smoke only",
                verdict=("ok" if am < pm else "FAIL") if target else "-",
            )
        )
        rows.append(
            Row(
                tag,
                f"instances with a run over the limit + {_OVER_S:g} s",
                f"auto {over['auto']}/{len(loaded)}",
                reference=f"PyVRP alone {over['pyvrp']}/{len(loaded)}",
                target="0",
                verdict="ok" if over["auto"] == 0 else "FAIL",
            )
        )
        rows.append(
            Row(
                tag,
                "instances where auto is not worse beyond noise",
                f"{passed}/{len(loaded)}",
                target="all",
                verdict="ok" if passed == len(loaded) else "FAIL",
            )
        )
    return rows
