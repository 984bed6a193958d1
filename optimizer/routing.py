"""Vehicle routing: a prepared instance in, a checked plan out.

The instance is plain data (integer matrices, demands, windows), so the same
model serves waste collection and the public CVRP/VRPTW benchmark instances.
Nodes are indices into the matrices. A vehicle starts at its `start` node at
`start_s` with `start_load`, ends at its `end` node; `reload` nodes (the
disposal site) empty the vehicle and may be visited any number of times.
Customers are `required` or optional with a `penalty` for leaving them out.

`check()` is independent of any solver: a plan is only used if it finds nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


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


class Status(StrEnum):
    OPTIMAL = "optimal"  # proved optimal (small instances)
    FEASIBLE = "feasible"  # a solution, time limit reached
    FALLBACK = "fallback"  # solver found nothing usable; a safe constructive plan
    INFEASIBLE = "infeasible"  # no plan serves every required customer


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
    status: Status
    solver: str  # which engine and strategy produced it
    wall_s: float
    violations: tuple[str, ...] = ()  # from check(); empty for a usable plan
