"""The routing instance translated for PyVRP, and PyVRP's iterated local search run on it."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any

from optimizer.routing_greedy import unservable
from optimizer.routing_model import RoutingInstance, Vehicle, make_route, must_end_empty, start_load

_MAX_TIME = 2**40  # an open time window
_NN_START = 1000  # clients from which the search starts from a nearest-neighbour tour (pyvrp_search)


@dataclass(slots=True)
class PyvrpModel:
    """The instance as PyVRP data, and the way back from PyVRP routes to instance node sequences.

    Committed stops are not a PyVRP notion, so a vehicle with a `fixed` prefix starts, in PyVRP,
    at its last committed stop when it has left it, with the load it then has. A vehicle that must
    come home empty ends, in PyVRP, at the disposal site nearest its depot, with its shift shortened
    by the drive from there home (exact for one disposal site, the waste case).
    """

    data: Any  # pyvrp.ProblemData
    client_node: list[int]  # PyVRP client index -> instance node
    depot_node: list[int]  # PyVRP depot index -> instance node
    vehicles_of_type: list[list[str]]  # PyVRP vehicle type -> vehicle ids
    closing: dict[str, int]  # vehicle id -> reload node appended after its PyVRP route

    def routes(self, solution: Any) -> dict[str, list[int]]:
        """Instance node sequences per vehicle id (committed stops first) from a PyVRP solution."""
        free = [list(ids) for ids in self.vehicles_of_type]
        out: dict[str, list[int]] = {}
        for route in solution.routes():
            vid = free[route.vehicle_type()].pop(0)
            acts = list(route)[1:-1]  # the start and end depot activities are implied
            out[vid] = [self.client_node[a.idx] if a.is_client() else self.depot_node[a.idx] for a in acts]
        return out


def pyvrp_model(instance: RoutingInstance) -> PyvrpModel:
    """Translate `instance` (validated) for PyVRP: pickups with one load dimension per demand dimension."""
    import numpy as np
    import pyvrp

    inst = instance
    fixed = {c for v in inst.vehicles for c in v.fixed}
    skip = fixed | set(unservable(inst))
    locations = [pyvrp.Location(0.0, 0.0, name=str(i)) for i in range(inst.size)]
    depots: list[Any] = []
    depot_node: list[int] = []
    depot_of: dict[tuple[int, bool], int] = {}

    def depot(node: int, unload: bool) -> int:
        """A PyVRP depot at `node`: with the node's window and service when it unloads, else open."""
        if (node, unload) not in depot_of:
            depot_of[node, unload] = len(depots)
            a, b = inst.window[node] if unload else (0, _MAX_TIME)
            depots.append(
                pyvrp.Depot(node, tw_early=a, tw_late=b, service_duration=inst.service[node] if unload else 0)
            )
            depot_node.append(node)
        return depot_of[node, unload]

    reload_depots = [depot(r, True) for r in inst.reload]
    types: dict[tuple[Any, ...], list[str]] = {}
    type_args: dict[tuple[Any, ...], dict[str, Any]] = {}
    closing: dict[str, int] = {}
    for v in inst.vehicles:
        prefix = make_route(inst, v, v.fixed)
        if v.fixed:
            last = prefix.stops[-1]
            start = depot(last.node, False)
            early = last.arrival + inst.service[last.node]
            load = list(last.load)
        else:
            start = depot(v.start, False)
            early = max(v.shift[0], inst.window[v.start][0])
            load = list(start_load(inst, v))
        late = min(v.shift[1], inst.window[v.end][1])
        if must_end_empty(inst, v):
            r = min(inst.reload, key=lambda r: (inst.service[r] + inst.time[r][v.end], r))
            closing[v.id] = r
            late -= inst.service[r] + inst.time[r][v.end]
            end = depot(r, True)
        else:
            end = depot(v.end, False)
        args = {
            "capacity": list(v.capacity),
            "start_depot": start,
            "end_depot": end,
            "tw_early": early,
            "tw_late": max(early, late),
            "initial_load": [min(x, c) for x, c in zip(load, v.capacity, strict=True)],  # over: check() says
            "reload_depots": reload_depots,
        }
        key = tuple((k, tuple(x) if isinstance(x, list) else x) for k, x in sorted(args.items()))
        types.setdefault(key, []).append(v.id)
        type_args[key] = args
    vehicle_types = [pyvrp.VehicleType(len(ids), **type_args[key]) for key, ids in types.items()]
    client_node = [c for c in inst.customers if c not in skip]
    clients = [
        pyvrp.Client(
            c,
            pickup=list(inst.demand[c]),
            delivery=[0] * len(inst.demand[c]),
            service_duration=inst.service[c],
            tw_early=inst.window[c][0],
            tw_late=inst.window[c][1],
            prize=inst.penalty[c],
            required=inst.required[c],
        )
        for c in client_node
    ]
    dist: Any = np.array(inst.distance, dtype=np.int64)  # PyVRP's stubs type matrices loosely
    dur: Any = np.array(inst.time, dtype=np.int64)
    data = pyvrp.ProblemData(locations, clients, depots, vehicle_types, [dist], [dur])
    return PyvrpModel(data, client_node, depot_node, list(types.values()), closing)


def pyvrp_solve(
    instance: RoutingInstance,
    model: PyvrpModel,
    time_limit_s: float,
    seed: int,
    *,
    iterations: int | None = None,
) -> tuple[dict[str, list[int]], bool]:
    """Run PyVRP's iterated local search: (routes per vehicle id, whether PyVRP found them feasible).

    It stops at the time limit, or after `iterations` when set (the same routes on any machine)."""
    body, feasible = pyvrp_search(model, time_limit_s, seed, iterations=iterations)
    return finish_routes(instance, model, body), feasible


def pyvrp_search(
    model: PyvrpModel, time_limit_s: float, seed: int, *, iterations: int | None = None
) -> tuple[dict[str, list[int]], bool]:
    """PyVRP's search alone: (its route bodies per vehicle id, feasible), for `finish_routes`.

    `pyvrp.solve` with the set-up inside the time limit: `solve` starts its clock only after
    computing neighbourhoods and a first local search from a random solution, which at 2,000
    clients take 6-9 s by themselves. Here the clock starts on entry; from `_NN_START` clients on
    the search starts from a nearest-neighbour tour cut into one piece per vehicle instead (no
    first exhaustive search: better routes within 10 s at 2,000 bins), and the iterations stop
    when the next one, as long as the last, would end after the limit (`_Deadline`). PyVRP's
    first local search cannot be interrupted: about 5 s of CPU at 2,000 clients.
    """
    import pyvrp
    from pyvrp.IteratedLocalSearch import IteratedLocalSearch
    from pyvrp.PenaltyManager import PenaltyManager
    from pyvrp.search import LocalSearch, PerturbationManager, compute_neighbours
    from pyvrp.solve import SolveParams
    from pyvrp.stop import MaxIterations, MultipleCriteria, StoppingCriterion

    t0 = time.monotonic()
    data, params = model.data, SolveParams()
    rng = pyvrp.RandomNumberGenerator(seed=seed)
    ls = LocalSearch(
        data, rng, compute_neighbours(data, params.neighbourhood), PerturbationManager(params.perturbation)
    )
    for op in params.operators:
        if op.supports(data):
            ls.add_operator(op(data))
    pm = PenaltyManager(params.penalty.midpoint_penalties(data), params.penalty)
    if data.num_clients >= _NN_START:
        init = _nearest_neighbour_start(data)
    else:
        init = ls(pyvrp.Solution.make_random(data, rng), pm.max_cost_evaluator(), exhaustive=True)
    stop: StoppingCriterion = _Deadline(t0 + time_limit_s)
    if iterations is not None:
        stop = MultipleCriteria([stop, MaxIterations(iterations)])
    # PyVRP warns when it finds no feasible solution; we report that ourselves
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = IteratedLocalSearch(data, pm, ls, init, params.ils).run(stop, False, False)
    return model.routes(result.best), bool(result.best.is_feasible())


class _Deadline:
    """PyVRP stopping criterion: stop when another iteration as long as the last one would end after
    `end` (`time.monotonic()`), so a slow iteration on a large instance does not overrun the limit."""

    def __init__(self, end: float) -> None:
        self.end = end
        self.last = time.monotonic()

    def __call__(self, best_cost: float) -> bool:
        now = time.monotonic()
        step, self.last = now - self.last, now
        return now + step >= self.end


def _nearest_neighbour_start(data: Any) -> Any:
    """A first PyVRP solution in milliseconds: one nearest-neighbour tour over every client from
    the first vehicle's depot, cut into one piece per vehicle, unloading at its first reload depot
    whenever the next client would overload it (windows ignored: the search repairs them).

    Distances are indexed by location; clients and depots by their own lists, each naming its
    location (several depots may share one), so the tour walks client indices."""
    import numpy as np
    import pyvrp

    dist = np.asarray(data.distance_matrix(0))
    clients = data.clients()
    n_cli = len(clients)
    where = np.array([c.location for c in clients], dtype=np.int64)
    free = np.ones(n_cli, dtype=bool)
    big = np.iinfo(dist.dtype).max
    cur = data.depots()[data.vehicle_type(0).start_depot].location
    tour: list[int] = []
    for _ in range(n_cli):
        nxt = int(np.where(free, dist[cur, where], big).argmin())
        tour.append(nxt)
        free[nxt] = False
        cur = int(where[nxt])
    types = [t for t in range(data.num_vehicle_types) for _ in range(data.vehicle_type(t).num_available)]
    size = -(-n_cli // len(types))
    routes = []
    for k, i in enumerate(range(0, n_cli, size)):
        vt = data.vehicle_type(types[k])
        acts, load = [], [0] * len(vt.capacity)
        for client in tour[i : i + size]:
            pickup = clients[client].pickup
            if vt.reload_depots and any(x + p > c for x, p, c in zip(load, pickup, vt.capacity, strict=True)):
                acts.append(pyvrp.Activity(pyvrp.ActivityType.DEPOT, vt.reload_depots[0]))
                load = [0] * len(load)
            load = [x + p for x, p in zip(load, pickup, strict=True)]
            acts.append(pyvrp.Activity(pyvrp.ActivityType.CLIENT, client))
        routes.append(pyvrp.Route(data, acts, types[k]))
    return pyvrp.Solution(data, routes)


def finish_routes(
    instance: RoutingInstance, model: PyvrpModel, body: dict[str, list[int]]
) -> dict[str, list[int]]:
    """Instance node sequences from PyVRP's route bodies: committed stops first, then the final
    unload where PyVRP's route ended at the disposal site."""
    routes = dict(body)
    for v in instance.vehicles:
        part = body.get(v.id, [])
        seq = [*v.fixed, *part]
        if v.id in model.closing and (part or any(_load_after(instance, v, seq))):
            seq.append(model.closing[v.id])  # PyVRP's route ended there; then home
        routes[v.id] = seq
    return routes


def _load_after(instance: RoutingInstance, v: Vehicle, seq: list[int]) -> tuple[int, ...]:
    return make_route(instance, v, seq).stops[-1].load if seq else start_load(instance, v)
