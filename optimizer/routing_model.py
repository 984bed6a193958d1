"""Vehicle routing data: the instance, the plan, validation and the numbers of a route.

The instance is plain data (integer matrices, demands, windows), so the same model serves
waste collection and the public CVRP/VRPTW benchmark instances. Nodes are indices into the
matrices. A vehicle starts at its `start` node at its shift start with `start_load`, ends at its
`end` node; `reload` nodes (the disposal site) empty the vehicle and may be visited any number of
times. Customers are `required` or optional with a `penalty` for leaving them out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from optimizer.common import PlanStatus


@dataclass(frozen=True, slots=True)
class Vehicle:
    """One vehicle: where and when it starts, where it must end, what it carries."""

    id: str
    start: int
    end: int
    capacity: tuple[int, ...]  # one entry per demand dimension (e.g. litres, kilograms)
    shift: tuple[int, int]  # earliest departure, latest return (instance time units)
    start_load: tuple[int, ...] = ()  # load on board at start; empty means zero
    fixed: tuple[int, ...] = ()  # customers it must visit first, in this order (committed stops)


@dataclass(frozen=True, slots=True)
class RoutingInstance:
    """Everything a router needs; all numbers are integers (seconds, metres, litres ...)."""

    time: list[list[int]]  # travel time between nodes, service excluded
    distance: list[list[int]]  # what is minimised (metres, or the benchmark's cost)
    demand: list[tuple[int, ...]]  # per node, per dimension; 0 for depots and reload nodes
    service: list[int]  # per node
    window: list[tuple[int, int]]  # per node: service may start in [a, b]
    required: list[bool]  # per node; depots and reload nodes are False and not customers
    penalty: list[int]  # per node: cost of leaving an optional customer out
    customers: list[int]  # nodes that are bins/clients (subset of all nodes)
    reload: list[int]  # nodes that unload a vehicle (disposal sites); empty: no reloads
    vehicles: list[Vehicle]
    names: list[str] = field(default_factory=list)  # per node, for messages

    @property
    def size(self) -> int:
        return len(self.time)


@dataclass(frozen=True, slots=True)
class Stop:
    node: int
    arrival: int  # time service starts (after any wait)
    load: tuple[int, ...]  # load after the stop


@dataclass(frozen=True, slots=True)
class Route:
    vehicle: str
    stops: tuple[Stop, ...]  # visits between start and end, reload nodes included
    end_time: int
    distance: int


@dataclass(frozen=True, slots=True)
class RoutingPlan:
    routes: tuple[Route, ...]
    dropped: tuple[int, ...]  # optional customers left out
    distance: int
    penalty: int
    status: PlanStatus
    solver: str  # which engine and strategy produced it
    wall_s: float
    violations: tuple[str, ...] = ()  # from check(); empty for a usable plan


# --------------------------------------------------------------------------- validation


def validate(instance: RoutingInstance) -> None:
    """Raise ValueError naming the first malformed field: the solver must never see bad data."""
    n = instance.size
    if n == 0:
        raise ValueError("routing instance has no nodes")
    for name in ("distance", "demand", "service", "window", "required", "penalty"):
        if len(getattr(instance, name)) != n:
            raise ValueError(
                f"routing instance: {name} has {len(getattr(instance, name))} entries, expected {n}"
            )
    if instance.names and len(instance.names) != n:
        raise ValueError(f"routing instance: names has {len(instance.names)} entries, expected {n}")
    for name in ("time", "distance"):
        for i, row in enumerate(getattr(instance, name)):
            if len(row) != n:
                raise ValueError(f"routing instance: {name}[{i}] has {len(row)} entries, expected {n}")
            if any(v < 0 for v in row):
                raise ValueError(f"routing instance: {name}[{i}] has a negative entry")
    if not instance.vehicles:
        raise ValueError("routing instance has no vehicles")
    dims = len(instance.vehicles[0].capacity)
    for i in range(n):
        if len(instance.demand[i]) != dims or any(d < 0 for d in instance.demand[i]):
            raise ValueError(
                f"routing instance: demand of {node_name(instance, i)} must be {dims} values >= 0"
            )
        a, b = instance.window[i]
        if a > b:
            raise ValueError(f"routing instance: window of {node_name(instance, i)} is empty ({a} > {b})")
        if instance.service[i] < 0 or instance.penalty[i] < 0:
            raise ValueError(
                f"routing instance: service and penalty of {node_name(instance, i)} must be >= 0"
            )
    customers = set(instance.customers)
    if len(customers) != len(instance.customers):
        raise ValueError("routing instance: a customer is listed twice")
    reload = set(instance.reload)
    depots = {v.start for v in instance.vehicles} | {v.end for v in instance.vehicles}
    for c in instance.customers:
        if not 0 <= c < n:
            raise ValueError(f"routing instance: customer node {c} out of range")
        if c in reload or c in depots:
            raise ValueError(
                f"routing instance: {node_name(instance, c)} is a customer and a depot or reload node"
            )
    for i in range(n):
        if instance.required[i] and i not in customers:
            raise ValueError(f"routing instance: {node_name(instance, i)} is required but not a customer")
    for r in instance.reload:
        if not 0 <= r < n:
            raise ValueError(f"routing instance: reload node {r} out of range")
    ids: set[str] = set()
    fixed_seen: set[int] = set()
    for v in instance.vehicles:
        if v.id in ids:
            raise ValueError(f"routing instance: vehicle id {v.id!r} used twice")
        ids.add(v.id)
        if not (0 <= v.start < n and 0 <= v.end < n):
            raise ValueError(f"routing instance: vehicle {v.id} start/end out of range")
        if len(v.capacity) != dims or any(c < 0 for c in v.capacity):
            raise ValueError(f"routing instance: vehicle {v.id} capacity must be {dims} values >= 0")
        if v.start_load and (len(v.start_load) != dims or any(x < 0 for x in v.start_load)):
            raise ValueError(f"routing instance: vehicle {v.id} start_load must be {dims} values >= 0")
        if v.shift[0] > v.shift[1]:
            raise ValueError(f"routing instance: vehicle {v.id} shift is empty")
        for f in v.fixed:
            if f not in customers and f not in reload:
                raise ValueError(
                    f"routing instance: vehicle {v.id} fixed stop {f} is not a customer or reload"
                )
            if f in customers:
                if f in fixed_seen:
                    raise ValueError(f"routing instance: customer {node_name(instance, f)} fixed twice")
                fixed_seen.add(f)


def node_name(instance: RoutingInstance, node: int) -> str:
    if instance.names and 0 <= node < len(instance.names):
        return f"{instance.names[node]} (node {node})"
    return f"node {node}"


def start_load(instance: RoutingInstance, v: Vehicle) -> tuple[int, ...]:
    return v.start_load or tuple(0 for _ in v.capacity)


def must_end_empty(instance: RoutingInstance, v: Vehicle) -> bool:
    return bool(instance.reload) and v.end not in instance.reload


def make_route(instance: RoutingInstance, vehicle: Vehicle, nodes: Sequence[int]) -> Route:
    """The route visiting `nodes` in order with earliest service starts and loads after each stop.

    Builds the numbers only; whether they are feasible is `check()`'s business.
    """
    reload = set(instance.reload)
    t = max(vehicle.shift[0], instance.window[vehicle.start][0])
    load = list(start_load(instance, vehicle))
    prev = vehicle.start
    dist = 0
    stops = []
    for node in nodes:
        t = max(t + instance.service[prev] + instance.time[prev][node], instance.window[node][0])
        dist += instance.distance[prev][node]
        if node in reload:
            load = [0] * len(load)
        else:
            load = [x + d for x, d in zip(load, instance.demand[node], strict=True)]
        stops.append(Stop(node, t, tuple(load)))
        prev = node
    end = max(t + instance.service[prev] + instance.time[prev][vehicle.end], instance.window[vehicle.end][0])
    dist += instance.distance[prev][vehicle.end]
    return Route(vehicle.id, tuple(stops), end, dist)
