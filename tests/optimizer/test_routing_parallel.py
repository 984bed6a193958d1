"""Tests for strategy "auto" on more than one core: helper processes search beside the caller, every
plan is still checked, and no helper outlives its solve or its caller."""

from __future__ import annotations

import math
import random
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import psutil
import pytest

from optimizer import routing
from optimizer.common import Timer
from optimizer.routing import RoutingInstance, Status, Vehicle, check_plan, solve
from optimizer.routing_parallel import Candidate, HelperJob, Helpers, default_workers

ROOT = Path(__file__).resolve().parents[2]


def _instance(n_cust: int = 30, seed: int = 1) -> RoutingInstance:
    """Depot 0, disposal site 1, `n_cust` bins with two demand dimensions; loose enough that every
    bin can be served, so any plan with violations is a bug."""
    rng = random.Random(seed)
    points = [(50, 50), (90, 10)] + [(rng.randint(0, 100), rng.randint(0, 100)) for _ in range(n_cust)]
    n = len(points)
    dist = [[round(math.dist(a, b)) for b in points] for a in points]
    windows = [(0, 5000), (0, 5000)] + [
        (a, a + 800) if rng.random() < 0.3 else (0, 5000)
        for a in (rng.randint(0, 3000) for _ in range(n_cust))
    ]
    return RoutingInstance(
        time=dist,
        distance=dist,
        demand=[(0, 0), (0, 0), *((rng.randint(1, 8), rng.randint(1, 8)) for _ in range(n_cust))],
        service=[0, 20] + [5] * n_cust,
        window=windows,
        required=[False, False] + [True] * n_cust,
        penalty=[0] * n,
        customers=list(range(2, n)),
        reload=[1],
        vehicles=[Vehicle("t1", 0, 0, (30, 30), (0, 5000)), Vehicle("t2", 0, 0, (25, 35), (0, 5000))],
        names=["depot", "dump"] + [f"bin{i}" for i in range(n_cust)],
    )


def _children() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if p.is_running()]


def test_default_workers_is_one_or_two() -> None:
    assert 1 <= default_workers() <= 2


def test_auto_with_a_helper_returns_a_checked_plan_within_the_limit_and_leaves_no_process() -> None:
    instance = _instance()
    before = {p.pid for p in _children()}
    t0 = time.monotonic()
    plan = solve(instance, timer=Timer(time_limit_s=3.0, seed=0, workers=2))
    took = time.monotonic() - t0
    assert plan.status in (Status.FEASIBLE, Status.OPTIMAL), plan.violations
    assert list(plan.violations) == check_plan(instance, plan) == []
    assert took < 3.0 + 3.0  # generous: the machine may be busy; the point is no runaway
    assert {p.pid for p in _children()} <= before  # every helper ended and reaped


def test_helpers_are_ended_when_the_caller_stops_waiting() -> None:
    """A helper still searching (deadline a minute away) is terminated when the block is left."""
    instance = _instance()
    deadline = time.monotonic() + 60.0
    with Helpers([HelperJob(instance, seed=1, deadline=deadline)]) as helpers:
        procs = [h.proc for h in helpers.helpers]
        assert procs
        assert all(p.poll() is None for p in procs)
        helpers.collect(until=time.monotonic() + 0.5)
    assert all(p.poll() is not None for p in procs)


def test_helpers_answer_with_their_routes_by_the_deadline() -> None:
    instance = _instance()
    deadline = time.monotonic() + 4.0
    with Helpers([HelperJob(instance, seed=1, deadline=deadline)]) as helpers:
        found = helpers.collect(until=deadline + 2.0)
    assert [c.label for c in found] == ["pyvrp-ils:seed1"]
    assert sorted(n for r in found[0].routes.values() for n in r if n != 1) == instance.customers


_CALLER = """
import sys, time
from tests.optimizer.test_routing_parallel import _instance
from optimizer.routing_parallel import Helpers, HelperJob
with Helpers([HelperJob(_instance(), seed=1, deadline=time.monotonic() + 120.0)]) as h:
    print(h.helpers[0].proc.pid, flush=True)
    time.sleep(120)
"""


def test_a_helper_ends_itself_when_its_caller_is_killed() -> None:
    """The daemon may kill its solver process: the helpers it started must not live on."""
    with subprocess.Popen(
        [sys.executable, "-c", _CALLER], cwd=ROOT, stdout=subprocess.PIPE, text=True
    ) as caller:
        try:
            assert caller.stdout is not None
            helper = psutil.Process(int(caller.stdout.readline()))
            caller.kill()
            caller.wait(timeout=10)
            gone, _ = psutil.wait_procs([helper], timeout=15)
            assert gone, "the helper outlived its caller"
        finally:
            caller.kill()


def test_auto_with_a_helper_is_repeatable_with_an_iteration_limit() -> None:
    """Seeds and an iteration limit make the run the same, helpers included."""
    instance = _instance()
    timer = Timer(time_limit_s=30.0, solution_limit=300, seed=0, workers=2)
    first = solve(instance, timer=timer)
    again = solve(instance, timer=timer)
    assert [[s.node for s in r.stops] for r in first.routes] == [
        [s.node for s in r.stops] for r in again.routes
    ]
    assert (first.distance, first.solver) == (again.distance, again.solver)


class _LyingHelpers:
    """Stands in for Helpers: one helper that claims a broken plan is feasible and cheapest."""

    jobs: list[HelperJob] = []

    def __init__(self, jobs: list[HelperJob]) -> None:
        _LyingHelpers.jobs = jobs
        self.helpers = [object()] if jobs else []

    def __enter__(self) -> _LyingHelpers:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        pass

    def collect(self, until: float) -> list[Candidate]:
        # every bin on one truck, no unloading, none of it twice: short, and over capacity
        return [Candidate({"t1": [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]}, True, "liar")]


def test_the_checker_guards_a_helper_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    """A helper's routes are checked like any other: a broken plan that looks cheapest is not returned."""
    monkeypatch.setattr(routing, "Helpers", _LyingHelpers)
    instance = _instance()
    plan = solve(instance, timer=Timer(time_limit_s=20.0, solution_limit=200, seed=0, workers=2))
    assert _LyingHelpers.jobs  # a helper was asked for
    assert plan.violations == ()
    assert plan.status is Status.FEASIBLE
    assert plan.solver == "pyvrp-ils"


def test_one_worker_starts_no_helper(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(routing, "Helpers", _LyingHelpers)
    solve(_instance(), timer=Timer(time_limit_s=20.0, solution_limit=50, seed=0, workers=1))
    assert _LyingHelpers.jobs == []


def test_the_nearest_neighbour_start_visits_every_client_once_when_locations_are_not_clients() -> None:
    """From 1,000 clients the search starts from a nearest-neighbour tour. Distances are indexed by
    location, which are not depots then clients (a truck's fixed stops and unservable bins stay
    locations without a client; a reload site is a depot of its own): the tour must visit every
    client exactly once (a city run crashed when location numbers were taken for client numbers)."""
    import numpy as np
    import pyvrp

    from optimizer.routing_pyvrp import _nearest_neighbour_start

    rng = random.Random(4)
    n_loc, n_cli = 1_106, 1_100
    xy = [(rng.uniform(0, 10_000), rng.uniform(0, 10_000)) for _ in range(n_loc)]
    dist = np.array([[round(math.dist(a, b)) for b in xy] for a in xy], dtype=np.int64)
    locations = [pyvrp.Location(x, y) for x, y in xy]
    clients = [pyvrp.Client(5 + i, pickup=[1], delivery=[0]) for i in range(n_cli)]  # locations 5..1104
    depots = [pyvrp.Depot(3), pyvrp.Depot(1_105)]  # start at 3, unload at 1105; 0-2 and 4 unused
    vehicles = [pyvrp.VehicleType(4, capacity=[100], start_depot=0, end_depot=0, reload_depots=[1])]
    data = pyvrp.ProblemData(locations, clients, depots, vehicles, [dist], [dist])
    solution = _nearest_neighbour_start(data)
    visits = [a.idx for r in solution.routes() for a in r.schedule() if a.is_client()]
    assert sorted(visits) == list(range(n_cli))
    assert not solution.has_excess_load()  # unloads at the reload depot when full
