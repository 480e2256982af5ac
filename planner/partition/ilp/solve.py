"""Solve the partitioning MILP: warm start, two phases for the optimizer tail, extraction.

`solve_milp` builds the MILP of `planner.partition.ilp.formulation`, warm-starts it from a
baseline's assignment (so a time limit still returns a plan at least as good as the
baselines) and hands it to a backend (`backends`: HiGHS, CBC as fallback). `solve_ilp`
adds the two-phase treatment of the optimizer-step tail (its docstring).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass

from cost.timings import phase
from planner.partition.baselines import BASELINES
from planner.partition.bounds import tail_bound
from planner.partition.ilp.backends import SolveResult, solve
from planner.partition.ilp.formulation import Variables, build_milp, slot_count
from planner.partition.objective import Assignment, Evaluation, boundary_routes, evaluate
from planner.partition.problem import Problem


@dataclass(frozen=True)
class IlpResult:
    assignment: Assignment | None
    solve: SolveResult
    lower_bound: float
    variables: int
    constraints: int
    build_seconds: float


def solve_ilp(
    problem: Problem,
    warm: Assignment | None = None,
    alternatives: Sequence[Assignment] = (),
    floor: float = 0.0,
) -> IlpResult:
    """Build and solve the MILP; return the best assignment found (None if infeasible).

    The optimizer-step tail (`Z`) makes the LP relaxation much weaker (a fractional split
    spreads every step thin), so with a tail the MILP is first solved without it: that
    optimum's dual bound plus the smallest tail any plan can have (`bounds.tail_bound`)
    bounds the true optimum. If the first split, tail included, is within
    `config.tail_gap` of that bound, it is kept (status `near_optimal`, the gap reported);
    otherwise the full MILP runs, warm-started from it, with that bound as a cut. The first
    solve starts from whichever of `warm` and `alternatives` is best without the tail. When
    `warm`'s tail exceeds the least possible tail by more than `tail_gap` of its objective,
    the full MILP runs at once (the first solve would rarely prove enough). `floor`: a
    lower bound on the optimum known beforehand (the chain programme's), a cut."""
    cfg = problem.config
    has_tail = any(max(row.optimizer_s, default=0.0) > 0 for row in problem.layers) or any(
        max(sp.optimizer_s, default=0.0) > 0 for sp in problem.shared
    )
    if not has_tail or cfg.tail_gap <= 0:
        return solve_milp(problem, warm, floor=floor)
    bare = without_optimizer_steps(problem)
    priced: dict[tuple[bool, Assignment], Evaluation] = {}

    def price(a: Assignment, tail: bool = True) -> Evaluation:
        """evaluate(), once per assignment and pricing (with or without the tail)."""
        if (tail, a) not in priced:
            priced[tail, a] = evaluate(problem if tail else bare, a)
        return priced[tail, a]

    J = slot_count(problem)
    stage_counts = [cfg.stages] if cfg.stages else range(1, J + 1)
    least_tail = min(tail_bound(problem, p) for p in stage_counts)
    if warm is not None and price(warm).fits:
        # when the start's tail exceeds the least possible by more than the tolerance, the
        # first solve would rarely prove its split close enough: solve with the tail at once
        with_tail = price(warm).objective
        excess = with_tail - price(warm, tail=False).objective - least_tail
        if excess > cfg.tail_gap * with_tail:
            return solve_milp(problem, warm, floor=floor)
    starts = [a for a in (warm, *alternatives, BASELINES["pipedream"](bare)) if a is not None]
    starts = [a for a in starts if price(a, tail=False).fits]
    start = min(starts, key=lambda a: price(a, tail=False).objective, default=warm)
    first = solve_milp(bare, start)
    if first.assignment is None or first.solve.bound is None:
        return first if first.assignment is None else solve_milp(problem, warm, floor=floor)
    # a solver's dual bound is good to its tolerances: shave it before using it as a cut
    floor = max(first.solve.bound * (1 - 1e-6) + least_tail, first.lower_bound + least_tail, floor)
    # the tail-free optimum, or a start that is better once its tail counts
    chosen = min(
        [first.assignment, *(a for a in starts if price(a).fits)],
        key=lambda a: price(a).objective,
    )
    value = price(chosen).objective
    if value - floor <= cfg.tail_gap * value:
        status = "optimal" if value - floor <= 1e-9 * value else "near_optimal"
        return IlpResult(
            chosen,
            SolveResult(first.solve.backend, status, value, floor, first.solve.seconds),
            floor,
            first.variables,
            first.constraints,
            first.build_seconds,
        )
    remaining = max(1.0, cfg.time_limit_s - first.solve.seconds)
    full = solve_milp(problem, chosen, floor=floor, time_limit=remaining)
    seconds = first.solve.seconds + full.solve.seconds
    return IlpResult(
        full.assignment,
        SolveResult(
            full.solve.backend, full.solve.status, full.solve.objective, full.solve.bound, seconds
        ),
        max(full.lower_bound, floor),
        full.variables,
        full.constraints,
        first.build_seconds + full.build_seconds,
    )


def without_optimizer_steps(problem: Problem) -> Problem:
    """`problem` with no optimizer-step tail (every layer's and shared weight's step 0)."""
    return dataclasses.replace(
        problem,
        layers=[dataclasses.replace(layer, optimizer_s=()) for layer in problem.layers],
        shared=[dataclasses.replace(sp, optimizer_s=()) for sp in problem.shared],
    )


def solve_milp(
    problem: Problem,
    warm: Assignment | None,
    *,
    floor: float = 0.0,
    time_limit: float | None = None,
) -> IlpResult:
    """The MILP (with the step tail when `problem` has optimizer steps), warm-started from
    `warm`; `floor`: a known lower bound on its optimum, added as a cut."""
    start = time.perf_counter()
    with phase("milp build"):
        milp = build_milp(problem, floor)
    v = milp.v
    warm_ev = evaluate(problem, warm) if warm is not None and warm.num_stages <= v.J else None
    if warm_ev is not None and warm_ev.fits:
        _set_warm_start(problem, warm, warm_ev, v)
        _warm_holds(problem, warm, v)
        # every variable needs a value, or the solver drops the warm start
        v.Z.setInitialValue(max((st.optimizer_s for st in warm_ev.stages), default=0.0) * v.tscale)
    build_seconds = time.perf_counter() - start
    cfg = problem.config
    limit = cfg.time_limit_s if time_limit is None else time_limit
    with phase("milp solve"):
        result = solve(milp.lp, backend=cfg.solver, time_limit=limit)
    result = SolveResult(
        result.backend,
        result.status,
        result.objective / v.tscale if result.objective is not None else None,
        result.bound / v.tscale if result.bound is not None else None,
        result.seconds,
    )
    assignment = _extract(problem, v) if result.objective is not None else None
    return IlpResult(
        assignment,
        result,
        milp.bound,
        len(milp.lp.variables()),
        len(milp.lp.constraints),
        build_seconds,
    )


def _set_warm_start(problem: Problem, a: Assignment, ev: Evaluation, v: Variables) -> None:
    """Initial values of the variables for assignment `a` (priced as `ev`)."""
    x, w, u, T, K, Kb, P, c, h = v.x, v.w, v.u, v.T, v.K, v.Kb, v.P, v.c, v.h
    tscale = v.tscale
    p = a.num_stages
    slot = [p - 1 - s for s in a.stage_of_layer]
    group_of_stage = [problem.group_of_device[d] for d in a.devices]
    for (layer, j), var in x.items():
        var.setInitialValue(1 if slot[layer] == j else 0)
    for (j, g), var in w.items():
        var.setInitialValue(1 if j < p and group_of_stage[p - 1 - j] == g else 0)
    for j, var in u.items():
        var.setInitialValue(1 if j < p else 0)
    for j, var in T.items():
        var.setInitialValue(ev.stages[p - 1 - j].compute_s * tscale if j < p else 0.0)
    routes = boundary_routes(problem, a)
    route_sets = [set(cr) for cr in routes]
    for (f, j), var in c.items():
        # boundary j (slot j -> j-1) is stage boundary s = p - 1 - j (stage s -> s + 1)
        s = p - 1 - j
        var.setInitialValue(1 if 0 <= s < p - 1 and f in route_sets[s] else 0)
    for j, var in K.items():
        s = p - 1 - j
        var.setInitialValue(ev.stages[s].send_s * tscale if 0 <= s < p - 1 else 0.0)
    for j, var in Kb.items():
        s = p - 1 - j
        var.setInitialValue(ev.stages[s].grad_send_s * tscale if 0 <= s < p - 1 else 0.0)
    P.setInitialValue(ev.bottleneck_s * tscale)
    for (sidx, j), var in h.items():
        layers = problem.shared[sidx].layers
        var.setInitialValue(1 if any(slot[layer] == j for layer in layers) else 0)


def _warm_holds(problem: Problem, a: Assignment, v: Variables) -> None:
    """Initial values of the send-hold variables for assignment `a`."""
    Hf, Hb, tscale = v.Hf, v.Hb, v.tscale
    p = a.num_stages
    groups = [problem.group_of_device[d] for d in a.devices]
    routes = boundary_routes(problem, a)
    flows = problem.flows
    for j, var in Hf.items():
        s = p - 1 - j  # slot j is stage s; it sends activations to stage s + 1
        value = 0.0
        if 0 <= s < p - 1:
            link = problem.link(groups[s], groups[s + 1])
            value = sum(link.send_blocking_seconds(flows[i].nbytes) for i in routes[s])
        var.setInitialValue(value * tscale)
    for j, var in Hb.items():
        s = p - 1 - j  # slot j is stage s; it sends gradients to stage s - 1
        value = 0.0
        if 1 <= s < p:
            link = problem.link(groups[s], groups[s - 1])
            value = sum(
                link.send_blocking_seconds(flows[i].nbytes)
                for i in routes[s - 1]
                if flows[i].is_float
            )
        var.setInitialValue(value * tscale)


def _extract(problem: Problem, v: Variables) -> Assignment:
    """The assignment of the solver's solution."""
    J, x, w, u = v.J, v.x, v.w, v.u
    used = [j for j in range(J) if (u[j].value() or 0) > 0.5]
    p = len(used)
    stage_of = []
    for layer in range(len(problem.layers)):
        j = max(range(J), key=lambda jj: x[layer, jj].value() or 0)
        stage_of.append(p - 1 - j)
    free = {g.index: list(g.devices) for g in problem.groups}
    devices = []
    for s in range(p):
        j = p - 1 - s
        g = max(range(len(problem.groups)), key=lambda gg: w[j, gg].value() or 0)
        devices.append(free[g].pop(0))
    return Assignment(tuple(stage_of), tuple(devices))
