"""Routing without a solver: the constructive fallback plan, and the repairs built on the same rule."""

from __future__ import annotations

from collections.abc import Sequence

from optimizer.common import WALL, PlanStatus, Timer
from optimizer.routing_check import make_plan
from optimizer.routing_model import (
    RoutingInstance,
    RoutingPlan,
    Vehicle,
    make_route,
    must_end_empty,
    start_load,
)


def fallback_plan(instance: RoutingInstance, *, wall_s: float = 0.0, timer: Timer = WALL) -> RoutingPlan:
    """A safe plan without any solver: committed stops, then the customer served soonest, unloading when full.

    Greedy and far from optimal (a time-aware nearest neighbour); it exists so that a solver failure
    never leaves trucks without a plan, and it is the warm start when OR-Tools' own first-solution
    heuristics cannot start (a committed prefix or a load on board makes an empty route infeasible).
    Required customers are taken before optional ones; whatever cannot be fitted is left out.
    """
    t0 = timer()
    routes = greedy_routes(instance)
    return make_plan(
        instance, routes, PlanStatus.FALLBACK, "fallback:nearest-feasible", wall_s + timer() - t0
    )


def greedy_routes(instance: RoutingInstance) -> dict[str, list[int]]:
    """Node sequences per vehicle id built by `fallback_plan()`'s rule (see there)."""
    fixed = {c for v in instance.vehicles for c in v.fixed}
    pools = [
        [c for c in instance.customers if instance.required[c] and c not in fixed],
        [
            c
            for c in instance.customers
            if not instance.required[c] and instance.penalty[c] > 0 and c not in fixed
        ],
    ]
    routes: dict[str, list[int]] = {}
    for v in instance.vehicles:
        state = GreedyRoute(instance, v)
        for pool in pools:
            while pool and (c := state.append_best(pool)) is not None:
                pool.remove(c)
        state.close()
        routes[v.id] = state.seq
    return routes


class GreedyRoute:
    """One vehicle's route under construction, with its time and load so each step costs O(1)."""

    def __init__(self, instance: RoutingInstance, v: Vehicle) -> None:
        self.inst, self.v = instance, v
        self.reload = list(instance.reload)
        self.empty_end = must_end_empty(instance, v)
        route = make_route(instance, v, v.fixed)  # committed: taken as they are
        self.seq = list(v.fixed)
        self.prev = self.seq[-1] if self.seq else v.start
        self.t = route.stops[-1].arrival if route.stops else max(v.shift[0], instance.window[v.start][0])
        self.load = list(route.stops[-1].load if route.stops else start_load(instance, v))
        self.limit = min(v.shift[1], instance.window[v.end][1])

    def _arrive(self, prev: int, t: int, node: int) -> int:
        inst = self.inst
        return max(t + inst.service[prev] + inst.time[prev][node], inst.window[node][0])

    def _can_close(self, node: int, t: int, load: Sequence[int]) -> bool:
        inst, end = self.inst, self.v.end
        if self.empty_end and any(load) and node not in inst.reload:
            for r in self.reload:
                tr = self._arrive(node, t, r)
                if tr <= inst.window[r][1] and self._arrive(r, tr, end) <= self.limit:
                    return True
            return False
        return self._arrive(node, t, end) <= self.limit

    def option(self, c: int) -> tuple[int, list[int], int, list[int]] | None:
        """(service start, nodes to add, ..) for the cheapest feasible way to serve c next, if any."""
        inst = self.inst
        best = None
        dem = inst.demand[c]
        options: list[tuple[list[int], int, list[int]]] = [([c], self.t, self.load)]
        if self.prev not in inst.reload:
            options += [([r, c], -1, [0] * len(self.load)) for r in self.reload]
        for nodes, _, base in options:
            prev, t = self.prev, self.t
            ok = True
            for node in nodes:
                t = self._arrive(prev, t, node)
                if t > inst.window[node][1]:
                    ok = False
                    break
                prev = node
            load = [x + d for x, d in zip(base, dem, strict=True)]
            if not ok or any(x > cap for x, cap in zip(load, self.v.capacity, strict=True)):
                continue
            if self._can_close(c, t, load) and (best is None or t < best[0]):
                best = (t, nodes, t, load)
        return best

    def append_best(self, pool: list[int]) -> int | None:
        """Append the customer whose service can start soonest (ties: nearest); None if none fits."""
        inst = self.inst
        order = sorted(pool, key=lambda c: (self._arrive(self.prev, self.t, c), inst.distance[self.prev][c]))
        best: tuple[int, list[int], int, list[int]] | None = None
        best_c = None
        for c in order[:80]:  # bounded: the fallback must stay fast on large instances
            found = self.option(c)
            if found is not None and (best is None or found[0] < best[0]):
                best, best_c = found, c
                if len(found[1]) == 1:
                    break  # the soonest direct visit: nothing later in `order` starts sooner directly
        if best is None or best_c is None:
            return None
        self.take(best_c, best)
        return best_c

    def take(self, c: int, found: tuple[int, list[int], int, list[int]]) -> None:
        """Serve c next the way `option(c)` found."""
        self.seq.extend(found[1])
        self.prev, self.t, self.load = c, found[2], found[3]

    def close(self) -> None:
        """Unload before going home if the vehicle must end empty."""
        inst = self.inst
        if not (self.empty_end and any(self.load) and self.prev not in inst.reload and self.reload):
            return
        ok = [r for r in self.reload if self._arrive(self.prev, self.t, r) <= inst.window[r][1]]
        if ok:
            self.seq.append(
                min(ok, key=lambda r: self._arrive(r, self._arrive(self.prev, self.t, r), self.v.end))
            )


def unservable(instance: RoutingInstance) -> list[int]:
    """Customers no vehicle can serve even alone (window closed on arrival, too heavy, no way home in time).

    Necessary conditions only, from each vehicle's state after its committed stops; a customer
    listed here cannot be in any feasible plan, so engines need not search for it.
    """
    out = []
    fixed = {c for v in instance.vehicles for c in v.fixed}
    states = [GreedyRoute(instance, v) for v in instance.vehicles]
    for c in instance.customers:
        if c not in fixed and all(g.option(c) is None for g in states):
            out.append(c)
    return out


def repair(instance: RoutingInstance, routes: dict[str, list[int]]) -> dict[str, list[int]]:
    """Routes made feasible by dropping what breaks them: customers in the given order, each kept only
    if it fits (unloading first when full), committed stops kept; used on an infeasible PyVRP result
    so that OR-Tools can start from it and try to re-insert what was dropped."""
    out = {}
    for v in instance.vehicles:
        g = GreedyRoute(instance, v)
        for node in routes.get(v.id, [])[len(v.fixed) :]:
            if node in instance.customers and node not in g.seq and (found := g.option(node)) is not None:
                g.take(node, found)
        g.close()
        out[v.id] = g.seq
    return out
