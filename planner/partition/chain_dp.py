"""The exact split of a chain: a dynamic programme over contiguous stages and device runs.

When the layers form a chain, every valid plan cuts it into contiguous stages, and a
plan is a sequence of stages, each an interval of layers on one device. More generally
every valid plan is contiguous in *some* topological order of the layers (`layer_orders`),
so a DAG with few orders (a chain with side inputs: Llama's rotary table, read by every
block, is a second source) is solved exactly by one programme per order; a tensor read
several stages later is relayed across each cut between, as `objective.evaluate` prices
it.

Group the stages into **runs**, maximal sequences of consecutive stages on one device group
(`problem.DeviceGroup`: a node's devices of one spec, interchangeable). A stage's cost
depends only on its interval, its group's spec and its place from the end of the
pipeline (in-flight micro-batches, `cost.memory.in_flight_from_end`); a boundary's cost
only on its cut and on whether it stays in a run (the group's own link) or joins two runs
(the link between their groups). Groups of one class (`classes.DeviceClass`) are priced
once.

The programme runs from the last stage to the first (Narayanan et al., PipeDream, SOSP
2019, and Tarnawski et al., NeurIPS 2020, solve pipeline splits of chains by dynamic
programming; this one prices exactly `objective.evaluate`). A state is (first layer
placed, stages placed, class of the current run, stages in that run, what the run
budget has used); its value is the Pareto set of partial costs (fill `A`, slowest
resource `P`, step tail `Z`, and the first stage's occupancy still waiting for the send
holds of its predecessor), since the objective `A + (m - 1) P + Z` mixes a sum and two
maxima. Partial plans that cannot beat the best plan known are pruned (branch and
bound: the rest of the chain costs at least every layer on its fastest device).

Two budgets make two programmes:

* **relaxed**: a run holds at most a group's devices, a class at most its devices in all.
  Every real plan is one of these (its runs, priced the same), so the optimum is a lower
  bound on every plan, and when its runs can be given to real groups (each run a group
  with room, never the group of the run before) it *is* the optimum.
* **grouped**: each group holds at most one run (runs of a class at most its groups).
  Every such plan is real; its optimum is the best plan that visits each group once.

`solve_chain` solves the relaxed programme, adding a class's stage budget only when a
solution overdraws it (budgets that never bind cost nothing), and falls back to the
grouped programme for a plan when the relaxed optimum cannot be realised. The answer is
`optimal` when the plan meets the bound, else the gap is reported and the MILP continues
from both (`search.find_split`).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import networkx as nx

from cost.memory import in_flight_microbatches
from planner.partition.classes import DeviceClass, class_links, device_classes
from planner.partition.objective import Assignment, evaluate
from planner.partition.problem import Problem

#: relative slack under which a partial plan is pruned against the incumbent
_PRUNE = 1e-12
#: topological orders of the layers the programme runs over at most (each one programme)
MAX_ORDERS = 8


@dataclass(frozen=True)
class ChainResult:
    """The best plan found, the relaxed bound, and how they were found."""

    assignment: Assignment | None
    objective: float  # evaluate()'s objective of `assignment` (inf if none)
    bound: float  # valid for every plan
    status: str  # optimal | bounded (a gap remains) | infeasible (no plan fits)
    seconds: float
    programmes: int  # dynamic programmes solved (relaxed rounds + grouped)

    @property
    def gap(self) -> float:
        if not math.isfinite(self.objective) or self.objective <= 0:
            return 0.0 if self.objective == 0 else math.inf
        return max(0.0, (self.objective - self.bound) / self.objective)


class _Tables:
    """Interval, cut and link costs of one problem, as prefix sums and arrays."""

    def __init__(self, problem: Problem, classes: list[DeviceClass], order: tuple[int, ...]):
        cfg = problem.config
        self.order = order
        self.classes = classes
        self.training = problem.training
        self.m = cfg.microbatches
        self.throughput = cfg.objective != "latency"
        self.recompute = cfg.recompute and self.training
        layers = [problem.layers[k] for k in order]  # position -> layer
        n = self.L = len(layers)
        position = {layer: pos for pos, layer in enumerate(order)}
        acc = itertools.accumulate
        self.compute = [
            list(acc((lc.compute_s(c.rep, self.training) for lc in layers), initial=0.0))
            for c in classes
        ]
        self.optimizer = [
            list(
                acc(
                    (lc.optimizer_s[c.rep] if lc.optimizer_s else 0.0 for lc in layers),
                    initial=0.0,
                )
            )
            for c in classes
        ]
        self.held = list(acc((lc.state_bytes + lc.buffer_bytes for lc in layers), initial=0))
        self.acts = list(acc((lc.activation_bytes for lc in layers), initial=0))
        groups = range(len(problem.groups))
        fastest = (min(lc.compute_s(g, self.training) for g in groups) for lc in layers)
        self.cheapest = list(acc(fastest, initial=0.0))
        self.capacity = [int(problem.capacity(c.rep)) for c in classes]
        # shared weights: held by (and stepped on) every stage that has one of its layers
        self.shared = []
        for sp in problem.shared:
            holds = {position[k] for k in sp.layers}
            self.shared.append((list(acc((int(i in holds) for i in range(n)), initial=0)), sp))
        # cuts: cut i (1..L-1) is the boundary before position i; a tensor crosses every
        # cut from its producer to its last consumer (relayed stage by stage)
        crossing = [[] for _ in range(n + 1)]
        for flow in problem.flows:
            last = max(position[k] for k in flow.consumers)
            for cut in range(position[flow.producer] + 1, last + 1):
                crossing[cut].append(flow)
        self.crossing = crossing
        self.inputs = [sum(f.nbytes for f in fl) for fl in crossing]
        self.inside, self.between = class_links(problem, classes)
        self._link_rows: dict[int, tuple[list[float], ...]] = {}
        self.blocking = any(
            link is not None
            and any(link.send_blocking_seconds(f.nbytes) > 0 for f in problem.flows)
            for link in [*self.inside, *self.between.values()]
        )

    def link_rows(self, link) -> tuple[list[float], list[float], list[float], list[float]]:
        """Per cut: transfer of all crossing tensors, of the floating ones, and the send
        holds of each (the order of `objective.evaluate`'s sums)."""
        key = id(link)
        if key not in self._link_rows:
            rows = ([], [], [], [])
            for fl in self.crossing:
                rows[0].append(sum(link.transfer_seconds(f.nbytes) for f in fl))
                rows[1].append(sum(link.transfer_seconds(f.nbytes) for f in fl if f.is_float))
                rows[2].append(sum(link.send_blocking_seconds(f.nbytes) for f in fl))
                rows[3].append(sum(link.send_blocking_seconds(f.nbytes) for f in fl if f.is_float))
            self._link_rows[key] = rows
        return self._link_rows[key]

    def shared_extra(self, a: int, b: int, c: int) -> tuple[int, float]:
        """State bytes and optimizer step of the shared weights an interval holds."""
        state, step = 0, 0.0
        rep = self.classes[c].rep
        for count, sp in self.shared:
            if count[b] - count[a]:
                state += sp.state_bytes
                step += sp.optimizer_s[rep] if sp.optimizer_s else 0.0
        return state, step

    def memory(self, a: int, b: int, c: int, flight: int, shared_state: int) -> int:
        held = self.held[b] - self.held[a] + shared_state
        one = self.acts[b] - self.acts[a]
        if self.recompute:
            return int(held + flight * self.inputs[a] + one)
        return int(held + flight * one)


@dataclass(frozen=True)
class _Counting:
    """How stages are counted from the end: in-flight micro-batches by stage place, and
    which counts may end a plan (a fixed stage count, or ZB-H1's dependence on p)."""

    cap: int  # stage counts at or above `cap` are one state
    flight: Callable[[int], int]
    ends: Callable[[int], bool]
    hard: bool = False  # `cap` is the stage count: no stage beyond it


def _countings(problem: Problem) -> list[_Counting]:
    """One counting per programme to run (ZB-H1 needs one per stage count below m)."""
    cfg = problem.config
    m = cfg.microbatches
    fixed = cfg.stages
    if not problem.training:
        if fixed:
            return [_Counting(fixed, lambda j: 1, lambda j, p=fixed: j == p, hard=True)]
        return [_Counting(0, lambda j: 1, lambda j: True)]
    schedule = cfg.pricing_schedule
    if schedule == "zb":
        if fixed:
            return [_Counting(fixed, lambda j, p=fixed: min(p, m), lambda j, p=fixed: j == p, True)]
        out = [
            _Counting(p, lambda j, p=p: p, lambda j, p=p: j == p, hard=True)
            for p in range(1, min(m, problem.max_stages + 1))
        ]
        return [*out, _Counting(m, lambda j: m, lambda j: j == m)]
    if fixed:
        return [
            _Counting(
                fixed,
                lambda j, p=fixed: in_flight_microbatches(schedule, p - 1 - j, p, m),
                lambda j, p=fixed: j == p,
                hard=True,
            )
        ]
    if schedule == "gpipe":
        return [_Counting(0, lambda j: m, lambda j: True)]
    # 1F1B (and interleaved, priced as 1F1B): min(j + 1, m) from the end
    return [
        _Counting(
            max(m - 1, 0), lambda j: in_flight_microbatches(schedule, 0, j + 1, m), lambda j: True
        )  # fmt: skip
    ]


def _run_programme(
    t: _Tables,
    counting: _Counting,
    grouped: bool,
    tracked: tuple[int, ...],
    incumbent: float,
) -> tuple[float, tuple | None]:
    """One dynamic programme (module docstring); returns its best value below
    `incumbent` and the final entry, or (incumbent, None) when none is below it.

    Entries are tuples (A, P, Z, pending, parent, a, b, class, continues)."""
    L, m, classes = t.L, t.m, t.classes
    weight = (m - 1) if t.throughput else 0
    fold = not t.blocking or not weight  # no pending occupancy to carry
    limits = [len(classes[c].groups) if grouped else classes[c].capacity for c in tracked]
    slot_of = {c: k for k, c in enumerate(tracked)}
    best_value, best_entry = incumbent, None
    total_cheapest = t.cheapest[L]

    # frontiers[i][(j, c, r, budget)] -> list of entries; i: first layer placed
    frontiers: list[dict[tuple, list[tuple]]] = [{} for _ in range(L + 1)]

    def stage_options(i: int, c: int):
        """Intervals [a, i) on class c that fit the best value's period, longest last."""
        comp, opt = t.compute[c], t.optimizer[c]
        cap_p = math.inf
        if weight:
            cap_p = (best_value - total_cheapest) / weight * (1 + 1e-9)
        for a in range(i - 1, -1, -1):
            work = comp[i] - comp[a]
            if work > cap_p:
                return
            shared_state, shared_step = t.shared_extra(a, i, c) if t.shared else (0, 0.0)
            yield a, work, opt[i] - opt[a] + shared_step, shared_state

    def finish(entry: tuple, j: int) -> None:
        nonlocal best_value, best_entry
        if not counting.ends(j):
            return
        v = entry[0] + weight * max(entry[1], entry[3]) + entry[2]
        if v < best_value:
            best_value, best_entry = v, entry

    def place(i_new: int, j: int, c: int, r: int, budget: tuple, entry: tuple) -> None:
        lower = entry[0] + t.cheapest[i_new] + weight * max(entry[1], entry[3]) + entry[2]
        if lower >= best_value * (1 + _PRUNE):
            return
        if i_new == 0:
            finish(entry, j)
        else:
            _insert(frontiers[i_new].setdefault((j, c, r, budget), []), entry)

    def bumped(budget: tuple, c: int) -> tuple | None:
        k = slot_of.get(c)
        if k is None:
            return budget
        if budget[k] + 1 > limits[k]:
            return None
        return budget[:k] + (budget[k] + 1,) + budget[k + 1 :]

    empty = tuple(0 for _ in tracked)
    # the last stage: [a, L) on any class, slot 0
    flight0 = counting.flight(0)
    j1 = min(1, counting.cap) if counting.cap else 0
    for c in range(len(classes)):
        budget = bumped(empty, c)
        if budget is None:
            continue
        for a, work, step, sh in stage_options(L, c):
            if t.memory(a, L, c, flight0, sh) > t.capacity[c]:
                continue
            if not weight:
                entry = (work, 0.0, step, 0.0, None, a, L, c, False)
            elif fold:
                entry = (work, work, step, 0.0, None, a, L, c, False)
            else:
                entry = (work, 0.0, step, work, None, a, L, c, False)
            place(a, j1, c, 1, budget, entry)
    for i in range(L - 1, 0, -1):
        states = frontiers[i]
        frontiers[i] = {}
        for (j, c, r, budget), front in states.items():
            if counting.hard and j >= counting.cap:
                continue  # the fixed stage count is reached
            flight = counting.flight(j)
            j_next = min(j + 1, counting.cap) if counting.cap else 0
            for c2, cont, forward, back in _moves(t, c, r):
                # grouped budgets count runs (a continued run costs nothing), relaxed stages
                budget2 = budget if grouped and cont else bumped(budget, c2)
                if budget2 is None:
                    continue
                r2 = r + 1 if cont else 1
                k_row, kb_row, hf_row, hb_row = t.link_rows(forward)
                hb_back = t.link_rows(back)[3]
                K = k_row[i]
                Kb = kb_row[i] if t.training else 0.0
                hold_new = hf_row[i]
                hold_old = hb_back[i] if t.training else 0.0
                link_total = K + Kb + hold_new + hold_old
                for a, work, step, sh in stage_options(i, c2):
                    if t.memory(a, i, c2, flight, sh) > t.capacity[c2]:
                        continue
                    occ = work + hold_new
                    for e in front:
                        A = e[0] + work + link_total
                        P = max(e[1], e[3] + hold_old, K, Kb) if weight else 0.0
                        if not weight:
                            entry = (A, 0.0, max(e[2], step), 0.0, e, a, i, c2, cont)
                        elif fold:
                            entry = (A, max(P, occ), max(e[2], step), 0.0, e, a, i, c2, cont)
                        else:
                            entry = (A, P, max(e[2], step), occ, e, a, i, c2, cont)
                        place(a, j_next, c2, r2, budget2, entry)
    return best_value, best_entry


def _insert(front: list[tuple], entry: tuple) -> None:
    """Add `entry` to a Pareto set of (A, P, Z, pending) unless one there dominates it."""
    A, P, Z, pend = entry[0], entry[1], entry[2], entry[3]
    for e in front:
        if e[0] <= A and e[1] <= P and e[2] <= Z and e[3] <= pend:
            return
    front[:] = [e for e in front if not (e[0] >= A and e[1] >= P and e[2] >= Z and e[3] >= pend)]
    front.append(entry)


def _moves(t: _Tables, c: int, r: int) -> list[tuple]:
    """Where the stage before a run of class c (r stages so far) can go: on in the same
    group, or a new run on any class with a link to c; (class, continues, link forward
    to the run, link back from it)."""
    moves = []
    if r < t.classes[c].size and t.inside[c] is not None:
        moves.append((c, True, t.inside[c], t.inside[c]))
    for c2 in range(len(t.classes)):
        link = t.between.get((c2, c))
        if link is not None:
            moves.append((c2, False, link, t.between[(c, c2)]))
    return moves


def _stages_of(entry: tuple) -> list[tuple[int, int, int, bool]]:
    """(first layer, end, class, continues the run of the next stage), first stage first."""
    out = []
    while entry is not None:
        out.append((entry[5], entry[6], entry[7], entry[8]))
        entry = entry[4]
    return out


def _realise(
    problem: Problem, classes: list[DeviceClass], order: tuple[int, ...], stages
) -> Assignment | None:
    """Give each run a group with room that is not the previous run's; None if none."""
    runs: list[tuple[int, int]] = []  # (class, length)
    for s, (_, _, c, _) in enumerate(stages):
        if s > 0 and stages[s - 1][3]:
            runs[-1] = (c, runs[-1][1] + 1)
        else:
            runs.append((c, 1))
    free = {g.index: list(g.devices) for g in problem.groups}
    previous = None
    devices: list[str] = []
    for c, length in runs:
        options = [g for g in classes[c].groups if g != previous and len(free[g]) >= length]
        if not options:
            return None
        g = max(options, key=lambda k: (len(free[k]), -k))
        devices += [free[g].pop(0) for _ in range(length)]
        previous = g
    stage_of = [0] * len(order)
    for s, (a, b, _, _) in enumerate(stages):
        for pos in range(a, b):
            stage_of[order[pos]] = s
    return Assignment(tuple(stage_of), tuple(devices))


def _overdrawn(classes: list[DeviceClass], stages, grouped: bool) -> set[int]:
    """Classes whose budget a solution exceeds (stages in relaxed, runs in grouped)."""
    used = [0] * len(classes)
    for s, (_, _, c, _) in enumerate(stages):
        if not grouped or s == 0 or not stages[s - 1][3]:
            used[c] += 1
    limit = [len(c.groups) if grouped else c.capacity for c in classes]
    return {c for c in range(len(classes)) if used[c] > limit[c]}


def _solve_budgeted(
    problem: Problem, t: _Tables, grouped: bool, incumbent: float
) -> tuple[float, Assignment | None, int]:
    """Best value under `incumbent` over every counting, the budgets added lazily; the
    realised assignment of the best (None if it is not realisable or none was found)."""
    tracked: set[int] = set()
    rounds = 0
    while True:
        value, entry = incumbent, None
        for counting in _countings(problem):
            v, e = _run_programme(t, counting, grouped, tuple(sorted(tracked)), value)
            rounds += 1
            if e is not None:
                value, entry = v, e
        if entry is None:
            return value, None, rounds
        stages = _stages_of(entry)
        over = _overdrawn(t.classes, stages, grouped)
        if over - tracked:
            tracked |= over
            continue
        return value, _realise(problem, t.classes, t.order, stages), rounds


def layer_orders(problem: Problem, limit: int = MAX_ORDERS) -> list[tuple[int, ...]] | None:
    """Every topological order of the layers, or None when there are more than `limit`.

    Any valid plan is contiguous in some topological order (sort its layers by stage,
    then by a topological order within the stage), so the programme over every order is
    exact. A chain has one; a chain with side inputs (a rotary table or a mask built from
    the inputs alone, read by every block) has a few."""
    graph = nx.DiGraph(problem.edges)
    graph.add_nodes_from(range(len(problem.layers)))
    orders = []
    for order in nx.all_topological_sorts(graph):
        orders.append(tuple(order))
        if len(orders) > limit:
            return None
    return orders


def solve_chain(
    problem: Problem,
    incumbent: Assignment | None = None,
    orders: list[tuple[int, ...]] | None = None,
) -> ChainResult:
    """The exact split (module docstring), or the best found and a bound.

    `incumbent`: a plan known to fit (a baseline's), for pruning and as the fallback.
    `orders`: `layer_orders(problem)` when the caller has it already. Raises ValueError
    when the layers have more topological orders than `MAX_ORDERS`."""
    orders = orders if orders is not None else layer_orders(problem)
    if orders is None:
        raise ValueError(f"the layers have more than {MAX_ORDERS} topological orders")
    started = time.perf_counter()
    classes = device_classes(problem)
    tables = [_Tables(problem, classes, order) for order in orders]
    best_a, best_v = None, math.inf
    if incumbent is not None:
        ev = evaluate(problem, incumbent)
        if ev.fits:
            best_a, best_v = incumbent, ev.objective
    rounds = 0

    def consider(a: Assignment | None) -> None:
        nonlocal best_a, best_v
        if a is not None:
            ev = evaluate(problem, a)
            if ev.fits and ev.objective < best_v:
                best_a, best_v = a, ev.objective

    bound = best_v
    for t in tables:
        value, relaxed, more = _solve_budgeted(problem, t, False, bound)
        rounds += more
        bound = min(bound, value)
        consider(relaxed)
    if best_v > bound * (1 + 1e-9):
        # the relaxed optimum is not realisable: the best plan visiting each group once
        for t in tables:
            _, grouped, more = _solve_budgeted(problem, t, True, best_v)
            rounds += more
            consider(grouped)
    if best_a is None:
        status = "infeasible"
    elif best_v <= bound * (1 + 1e-6):
        status = "optimal"
    else:
        status = "bounded"
    return ChainResult(best_a, best_v, bound, status, time.perf_counter() - started, rounds)
