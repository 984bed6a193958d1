"""The OR-Tools routing model of an instance (see optimizer/routing.py for what it holds)."""

from __future__ import annotations

import math
from typing import Any

from ortools.constraint_solver import pywrapcp, routing_enums_pb2

from optimizer.routing_model import RoutingInstance, must_end_empty, start_load

_STATUS_NAMES = {v: k for k, v in routing_enums_pb2.RoutingSearchStatus.Value.items()}
FIRST = routing_enums_pb2.FirstSolutionStrategy
META = routing_enums_pb2.LocalSearchMetaheuristic


class OrToolsModel:
    """The OR-Tools routing model of one instance: build once, then search (optionally from routes)."""

    def __init__(self, instance: RoutingInstance) -> None:
        self.inst = instance
        vs = instance.vehicles
        depots = sorted({v.start for v in vs} | {v.end for v in vs})
        self.orig: list[int] = list(depots)  # OR-Tools node -> instance node
        self.n_depots = len(depots)
        depot_of = {d: i for i, d in enumerate(depots)}
        self.cust_node = {c: len(self.orig) + k for k, c in enumerate(instance.customers)}
        self.orig.extend(instance.customers)
        self.copies: dict[int, list[int]] = {}
        k = self._reload_copies()
        for r in instance.reload:
            self.copies[r] = list(range(len(self.orig), len(self.orig) + k))
            self.orig.extend([r] * k)
        n = len(self.orig)
        self.manager = pywrapcp.RoutingIndexManager(
            n, len(vs), [depot_of[v.start] for v in vs], [depot_of[v.end] for v in vs]
        )
        self.model = pywrapcp.RoutingModel(self.manager)
        self._arc_cost()
        self._time()
        self._loads()
        self._disjunctions()
        self._fixed()

    def _reload_copies(self) -> int:
        inst = self.inst
        if not inst.reload:
            return 0
        trips = 0
        for d in range(len(inst.vehicles[0].capacity)):
            total = sum(inst.demand[c][d] for c in inst.customers)
            cap = max(1, min(v.capacity[d] for v in inst.vehicles))
            trips = max(trips, math.ceil(total / cap))
        fixed = max((sum(1 for f in v.fixed if f in inst.reload) for v in inst.vehicles), default=0)
        return trips + 2 * len(inst.vehicles) + fixed * len(inst.vehicles) + 1

    def _arc_cost(self) -> None:
        d, o = self.inst.distance, self.orig
        matrix = [[d[i][j] for j in o] for i in o]
        self.dist_cb = self.model.RegisterTransitMatrix(matrix)
        self.model.SetArcCostEvaluatorOfAllVehicles(self.dist_cb)

    def _time(self) -> None:
        inst, o, m = self.inst, self.orig, self.model
        tm, sv = inst.time, inst.service
        horizon = max([b for _, b in inst.window] + [v.shift[1] for v in inst.vehicles])
        matrix = [[sv[i] + tm[i][j] for j in o] for i in o]
        cb = m.RegisterTransitMatrix(matrix)
        m.AddDimension(cb, horizon, horizon, False, "time")
        self.time_dim = m.GetDimensionOrDie("time")
        for node in range(self.n_depots, len(o)):  # depots: windows go on vehicle starts and ends
            a, b = inst.window[o[node]]
            self.time_dim.CumulVar(self.manager.NodeToIndex(node)).SetRange(a, b)
        for k, v in enumerate(inst.vehicles):
            a = max(v.shift[0], inst.window[v.start][0])
            b = min(v.shift[1], inst.window[v.start][1])
            self.time_dim.CumulVar(m.Start(k)).SetRange(a, max(a, b))
            self.time_dim.CumulVar(m.End(k)).SetRange(
                inst.window[v.end][0], max(inst.window[v.end][0], min(v.shift[1], inst.window[v.end][1]))
            )

    def _loads(self) -> None:
        inst, o, m = self.inst, self.orig, self.model
        reload = set(inst.reload)
        n_depots = self.n_depots
        for d in range(len(inst.vehicles[0].capacity)):
            cmax = max(v.capacity[d] for v in inst.vehicles)
            vector = [
                0 if node < n_depots else (-cmax if o[node] in reload else inst.demand[o[node]][d])
                for node in range(len(o))
            ]
            cb = m.RegisterUnaryTransitVector(vector)
            name = f"load{d}"
            m.AddDimensionWithVehicleCapacity(
                cb, cmax if reload else 0, [v.capacity[d] for v in inst.vehicles], False, name
            )
            dim = m.GetDimensionOrDie(name)
            if reload:
                for node in range(n_depots, len(o)):
                    if o[node] not in reload:
                        dim.SlackVar(self.manager.NodeToIndex(node)).SetValue(0)
            for k, v in enumerate(inst.vehicles):
                if reload:
                    dim.SlackVar(m.Start(k)).SetValue(0)
                dim.CumulVar(m.Start(k)).SetValue(start_load(inst, v)[d])
                if must_end_empty(inst, v):
                    dim.CumulVar(m.End(k)).SetValue(0)

    def _disjunctions(self) -> None:
        inst, m = self.inst, self.model
        fixed = {c for v in inst.vehicles for c in v.fixed}
        self.big = self._big_penalty()
        for c, node in self.cust_node.items():
            if c in fixed:
                continue
            pen = self.big if inst.required[c] else inst.penalty[c]
            m.AddDisjunction([self.manager.NodeToIndex(node)], pen)
        for copies in self.copies.values():
            idx = [self.manager.NodeToIndex(node) for node in copies]
            for i in idx:
                m.AddDisjunction([i], 0)
                for j in idx:  # unloading twice in a row is useless: keep it out of the search space
                    if i != j:
                        m.NextVar(i).RemoveValue(j)

    def _big_penalty(self) -> int:
        """Larger than any route set can cost, so dropping a required customer is a last resort."""
        inst = self.inst
        worst = sum(max(row) for row in inst.distance) + sum(inst.penalty) + 1
        return min(max(10 * worst, 10**9), 2**52 // max(1, len(inst.customers)))

    def _fixed(self) -> None:
        inst, m = self.inst, self.model
        used: set[int] = set()
        solver = m.solver()
        self.fixed_nodes: dict[str, list[int]] = {}  # OR-Tools nodes of each vehicle's committed stops
        for k, v in enumerate(inst.vehicles):
            prev = m.Start(k)
            self.fixed_nodes[v.id] = []
            for f in v.fixed:
                if f in self.cust_node:
                    node = self.cust_node[f]
                else:
                    node = next(x for x in self.copies[f] if x not in used)
                    used.add(node)
                self.fixed_nodes[v.id].append(node)
                idx = self.manager.NodeToIndex(node)
                solver.Add(m.NextVar(prev) == idx)
                prev = idx

    def params(self, time_limit_s: float, first: int, meta: int, solution_limit: int | None = None) -> Any:
        p = pywrapcp.DefaultRoutingSearchParameters()
        if solution_limit is not None:
            p.solution_limit = solution_limit
        p.first_solution_strategy = first
        p.local_search_metaheuristic = meta
        p.time_limit.FromMilliseconds(max(1, int(time_limit_s * 1000)))
        p.log_search = False
        return p

    def to_indices(self, routes: dict[str, list[int]]) -> list[list[int]] | None:
        """Instance-node routes as OR-Tools indices (a fresh reload copy per unload); None if out of copies."""
        used = {n for nodes in self.fixed_nodes.values() for n in nodes}
        free = {r: [x for x in copies if x not in used] for r, copies in self.copies.items()}
        out = []
        for v in self.inst.vehicles:
            seq = routes.get(v.id, [])
            nodes = list(self.fixed_nodes[v.id])
            for node in seq[len(nodes) :]:
                if node in self.cust_node:
                    nodes.append(self.cust_node[node])
                elif free.get(node):
                    nodes.append(free[node].pop())
                else:
                    return None
            out.append([self.manager.NodeToIndex(x) for x in nodes])
        return out

    def search(
        self,
        time_limit_s: float,
        first: int,
        meta: int,
        start: dict[str, list[int]] | None = None,
        solution_limit: int | None = None,
    ) -> tuple[dict[str, list[int]] | None, str]:
        """Search from OR-Tools' own first solution, or from `start` routes (instance nodes) if given,
        until the time limit or (when set) after `solution_limit` solutions."""
        params = self.params(time_limit_s, first, meta, solution_limit)
        if start is None:
            sol = self.model.SolveWithParameters(params)
        else:
            indices = self.to_indices(start)
            self.model.CloseModelWithParameters(params)
            initial = None if indices is None else self.model.ReadAssignmentFromRoutes(indices, True)
            if initial is None:
                return None, "WARM_START_REJECTED"
            sol = self.model.SolveFromAssignmentWithParameters(initial, params)
        status = _STATUS_NAMES.get(self.model.status(), str(self.model.status()))
        if sol is None:
            return None, status
        return self.extract(sol), status

    def extract(self, sol: Any) -> dict[str, list[int]]:
        m, out = self.model, {}
        for k, v in enumerate(self.inst.vehicles):
            seq: list[int] = []
            idx = sol.Value(m.NextVar(m.Start(k)))
            while not m.IsEnd(idx):
                node = self.orig[self.manager.IndexToNode(idx)]
                if not (seq and seq[-1] == node and len(seq) >= len(v.fixed)):  # no unloading twice in a row
                    seq.append(node)
                idx = sol.Value(m.NextVar(idx))
            if len(seq) > len(v.fixed) and seq[-1] == v.end and v.end in self.copies:
                seq.pop()  # unloading just before ending at that same site: the end unloads anyway
            out[v.id] = seq
        return out
