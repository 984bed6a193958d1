"""The solver-independent check of a routing plan, and plans built from node sequences.

`check_plan` recomputes everything from the matrices alone: a plan is only used if it finds nothing.
"""

from __future__ import annotations

from optimizer.common import PlanStatus
from optimizer.routing_model import (
    Route,
    RoutingInstance,
    RoutingPlan,
    Vehicle,
    make_route,
    must_end_empty,
    node_name,
    start_load,
)


def make_plan(
    instance: RoutingInstance, routes: dict[str, list[int]], status: PlanStatus, solver: str, wall_s: float
) -> RoutingPlan:
    """A plan from node sequences per vehicle id (missing vehicles stay at home), then checked."""
    built = tuple(make_route(instance, v, routes.get(v.id, [])) for v in instance.vehicles)
    served = {s.node for r in built for s in r.stops}
    dropped = tuple(c for c in instance.customers if c not in served)
    plan = RoutingPlan(
        routes=built,
        dropped=dropped,
        distance=sum(r.distance for r in built),
        penalty=sum(instance.penalty[c] for c in dropped if not instance.required[c]),
        status=status,
        solver=solver,
        wall_s=wall_s,
    )
    violations = tuple(check_plan(instance, plan))
    if violations:
        status = PlanStatus.INFEASIBLE  # a plan that breaks anything is never FEASIBLE or FALLBACK
    return RoutingPlan(built, dropped, plan.distance, plan.penalty, status, solver, wall_s, violations)


def check_plan(instance: RoutingInstance, plan: RoutingPlan) -> list[str]:
    """Every way `plan` breaks `instance`, recomputed from the matrices alone (no solver state).

    Arrivals may be later than the earliest possible (waiting is allowed) but never earlier;
    loads must match exactly; a vehicle missing from the plan stays at its start.
    """
    out: list[str] = []
    by_id = {v.id: v for v in instance.vehicles}
    seen_vehicles: set[str] = set()
    visits: dict[int, int] = {}
    total = 0
    listed = {r.vehicle for r in plan.routes}
    home = [make_route(instance, veh, []) for veh in instance.vehicles if veh.id not in listed]
    for route in [*plan.routes, *home]:  # a vehicle left out stays at home: it still must end empty
        v = by_id.get(route.vehicle)
        if v is None:
            out.append(f"route for unknown vehicle {route.vehicle!r}")
            continue
        if route.vehicle in seen_vehicles:
            out.append(f"vehicle {v.id} has two routes")
            continue
        seen_vehicles.add(route.vehicle)
        dist = _check_route(instance, v, route, visits, out)
        if dist is not None and route.vehicle in listed:
            total += dist
    _check_customers(instance, plan, visits, out)
    if total != plan.distance:
        out.append(f"stated distance {plan.distance} != recomputed {total}")
    return out


def _check_route(
    instance: RoutingInstance, v: Vehicle, route: Route, visits: dict[int, int], out: list[str]
) -> int | None:
    """Append what breaks one vehicle's route to `out`, count its customer visits in `visits`;
    the recomputed distance, or None when a stop is not a node it may visit."""
    customers, reload = set(instance.customers), set(instance.reload)
    nodes = [s.node for s in route.stops]
    if tuple(nodes[: len(v.fixed)]) != v.fixed:
        out.append(f"vehicle {v.id} does not start with its committed stops {list(v.fixed)}")
    t = max(v.shift[0], instance.window[v.start][0])
    if t > min(v.shift[1], instance.window[v.start][1]):
        out.append(f"vehicle {v.id} cannot leave {node_name(instance, v.start)} inside its shift")
    load = list(start_load(instance, v))
    prev = v.start
    dist = 0
    for s in route.stops:
        if not 0 <= s.node < instance.size or (s.node not in customers and s.node not in reload):
            out.append(f"vehicle {v.id} visits {s.node}, neither a customer nor a reload node")
            return None
        at = f"vehicle {v.id} at {node_name(instance, s.node)}"
        earliest = max(t + instance.service[prev] + instance.time[prev][s.node], instance.window[s.node][0])
        if s.arrival < earliest:
            out.append(f"{at}: arrival {s.arrival} before earliest {earliest}")
        t = max(s.arrival, earliest)
        if t > instance.window[s.node][1]:
            out.append(f"{at}: service at {t} after its window closes at {instance.window[s.node][1]}")
        dist += instance.distance[prev][s.node]
        if s.node in reload:
            load = [0] * len(load)
        else:
            load = [x + d for x, d in zip(load, instance.demand[s.node], strict=True)]
            visits[s.node] = visits.get(s.node, 0) + 1
            over = [i for i, (x, c) in enumerate(zip(load, v.capacity, strict=True)) if x > c]
            if over:
                out.append(f"{at}: load {load} over capacity {list(v.capacity)} in dimension {over}")
        if tuple(load) != s.load:
            out.append(f"{at}: stated load {list(s.load)} != {load}")
        prev = s.node
    end = max(t + instance.service[prev] + instance.time[prev][v.end], instance.window[v.end][0])
    dist += instance.distance[prev][v.end]
    if route.end_time < end:
        out.append(f"vehicle {v.id}: stated end {route.end_time} before earliest {end}")
    end = max(end, route.end_time)
    if end > v.shift[1] or end > instance.window[v.end][1]:
        out.append(
            f"vehicle {v.id}: back at {node_name(instance, v.end)} at {end}, after its shift end "
            f"{min(v.shift[1], instance.window[v.end][1])}"
        )
    if must_end_empty(instance, v) and any(load):
        out.append(f"vehicle {v.id} ends with load {load}: it must unload at a reload node first")
    if dist != route.distance:
        out.append(f"vehicle {v.id}: stated distance {route.distance} != recomputed {dist}")
    return dist


def _check_customers(
    instance: RoutingInstance, plan: RoutingPlan, visits: dict[int, int], out: list[str]
) -> None:
    """Append customers visited twice, required ones not served, and a wrong dropped list or penalty."""
    for c, k in visits.items():
        if k > 1:
            out.append(f"{node_name(instance, c)} visited {k} times")
    dropped = set(plan.dropped)
    customers = set(instance.customers)
    for c in instance.customers:
        if c in visits and c in dropped:
            out.append(f"{node_name(instance, c)} is both served and listed as dropped")
        if c not in visits:
            if instance.required[c]:
                out.append(f"required customer {node_name(instance, c)} not served")
            elif c not in dropped:
                out.append(f"{node_name(instance, c)} neither served nor listed as dropped")
    penalty = sum(instance.penalty[c] for c in dropped if c in customers and not instance.required[c])
    if penalty != plan.penalty:
        out.append(f"stated penalty {plan.penalty} != recomputed {penalty}")
