"""The exact partitioner: a mixed-integer linear program over layers, stages and devices.

The formulation follows the integer programs for pipeline placement of Tarnawski et al.
("Efficient Algorithms for Device Placement of DNN Graph Operators", NeurIPS 2020) and
Piper (Tarnawski et al., NeurIPS 2021), adapted to the cost model of `planner.objective`
(which it reproduces exactly, so the ILP's optimum is the best assignment under it).

Stage **slots** are numbered from the end of the pipeline: slot 0 is the last stage, slot
j holds stage p - 1 - j. Numbered so, 1F1B's in-flight count min(p - s, m) becomes
min(j + 1, m), independent of the unknown p, and one model covers every stage count.

Variables
    x[l, j] in {0,1}   layer l on slot j
    w[j, g] in {0,1}   slot j runs on a device of group g (devices of one node with equal
                       specs are interchangeable, so groups replace devices: this removes
                       the permutation symmetry of identical devices)
    u[j]    in [0,1]   slot j is used (= sum_g w[j, g]); used slots form a prefix
    c[f, j] in [0,1]   tensor f crosses boundary j (slot j -> slot j - 1)
    h[s, j] in [0,1]   shared weight s is held on slot j
    T[j], K[j], Kb[j] >= 0  compute, activation-link and gradient-link time per micro-batch
    P >= 0             the slowest resource (stage or link)

Constraints
    sum_j x[l, j] = 1;  x[l, j] <= u[j] <= sum_l x[l, j];  u[j] >= u[j+1]
    sum_j w[j, g] <= |g|
    forward flow (layer a feeds b): sum_{j' >= j} x[b, j'] <= sum_{j' >= j} x[a, j'] for all j
    crossing: c[f, j] >= X[prod f, >= j] - X[v, >= j] for every consumer v of f
    compute (tight big-M per group): T[j] >= sum_l C[l, g] x[l, j] - M_g (1 - w[j, g])
    links, per group pair (g on slot j, h on slot j-1):
        K[j] >= sum_f t_gh(f) c[f, j] - M (2 - w[j, g] - w[j-1, h]), same for Kb
    memory: sum_l (state_l + buffers_l + flight_j act_l) x[l, j] + sum_s state_s h[s, j]
            (+ flight_j x inputs with recomputation) <= cap_g + M (1 - w[j, g])
    P >= T[j], K[j], Kb[j]

Objective: sum_j (T[j] + K[j] + Kb[j]) + (m - 1) P  (throughput), or sum_j (T[j] + K[j])
(latency). Symmetry between interchangeable groups is broken by ordering their use;
a lower bound from a chain DP (`planner.bounds`) is added as a cut and reported with
the gap.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass

import pulp

from cost.memory import in_flight_from_end
from planner.bounds import lower_bound, tail_bound
from planner.objective import Assignment, Evaluation, crossing_tensors, evaluate
from planner.problem import Problem
from planner.solvers import SolveResult, solve


@dataclass(frozen=True)
class IlpResult:
    assignment: Assignment | None
    solve: SolveResult
    lower_bound: float
    variables: int
    constraints: int
    build_seconds: float


def _equivalent_groups(problem: Problem) -> list[tuple[int, int]]:
    """Pairs of groups (g, h), g < h, that can swap roles without changing any cost."""
    pairs = []
    gs = problem.groups
    for g in gs:
        for h in gs:
            if h.index <= g.index or g.spec != h.spec or len(g.devices) != len(h.devices):
                continue
            if problem.links.get((g.index, g.index)) != problem.links.get((h.index, h.index)):
                continue
            if problem.links.get((g.index, h.index)) != problem.links.get((h.index, g.index)):
                continue
            others = [k.index for k in gs if k.index not in (g.index, h.index)]
            if all(
                problem.links[(g.index, k)] == problem.links[(h.index, k)]
                and problem.links[(k, g.index)] == problem.links[(k, h.index)]
                for k in others
            ):
                pairs.append((g.index, h.index))
    return pairs


def solve_ilp(
    problem: Problem, warm: Assignment | None = None, alternatives: Sequence[Assignment] = ()
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
    the full MILP runs at once (the first solve would rarely prove enough)."""
    cfg = problem.config
    has_tail = any(max(row.optimizer_s, default=0.0) > 0 for row in problem.layers) or any(
        max(sp.optimizer_s, default=0.0) > 0 for sp in problem.shared
    )
    if not has_tail or cfg.tail_gap <= 0:
        return _solve_ilp(problem, warm)
    from planner.baselines import BASELINES  # baselines import this module's peers

    bare = without_optimizer_steps(problem)
    priced: dict[tuple[bool, Assignment], Evaluation] = {}

    def price(a: Assignment, tail: bool = True) -> Evaluation:
        """evaluate(), once per assignment and pricing (with or without the tail)."""
        if (tail, a) not in priced:
            priced[tail, a] = evaluate(problem if tail else bare, a)
        return priced[tail, a]

    J = min(cfg.stages or problem.max_stages, problem.max_stages)
    stage_counts = [cfg.stages] if cfg.stages else range(1, J + 1)
    least_tail = min(tail_bound(problem, p) for p in stage_counts)
    if warm is not None and price(warm).fits:
        # when the start's tail exceeds the least possible by more than the tolerance, the
        # first solve would rarely prove its split close enough: solve with the tail at once
        with_tail = price(warm).objective
        excess = with_tail - price(warm, tail=False).objective - least_tail
        if excess > cfg.tail_gap * with_tail:
            return _solve_ilp(problem, warm)
    starts = [a for a in (warm, *alternatives, BASELINES["dp"](bare)) if a is not None]
    starts = [a for a in starts if price(a, tail=False).fits]
    start = min(starts, key=lambda a: price(a, tail=False).objective, default=warm)
    first = _solve_ilp(bare, start)
    if first.assignment is None or first.solve.bound is None:
        return first if first.assignment is None else _solve_ilp(problem, warm)
    # a solver's dual bound is good to its tolerances: shave it before using it as a cut
    floor = max(first.solve.bound * (1 - 1e-6), first.lower_bound) + least_tail
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
    full = _solve_ilp(problem, chosen, floor=floor, time_limit=remaining)
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


def _solve_ilp(
    problem: Problem,
    warm: Assignment | None,
    *,
    floor: float = 0.0,
    time_limit: float | None = None,
) -> IlpResult:
    """The MILP (with the step tail when `problem` has optimizer steps); `floor`: a known
    lower bound on its optimum, added as a cut."""
    start = time.perf_counter()
    cfg = problem.config
    training = problem.training
    m = cfg.microbatches
    L = len(problem.layers)
    G = len(problem.groups)
    J = min(cfg.stages or problem.max_stages, problem.max_stages)
    schedule = cfg.pricing_schedule if training else "infer"
    flows = problem.flows
    lp = pulp.LpProblem("pipeline_partition", pulp.LpMinimize)

    x = {
        (layer, j): pulp.LpVariable(f"x_{layer}_{j}", cat="Binary")
        for layer in range(L)
        for j in range(J)
    }
    w = {(j, g): pulp.LpVariable(f"w_{j}_{g}", cat="Binary") for j in range(J) for g in range(G)}
    u = {j: pulp.LpVariable(f"u_{j}", 0, 1) for j in range(J)}
    T = {j: pulp.LpVariable(f"T_{j}", 0) for j in range(J)}
    K = {j: pulp.LpVariable(f"K_{j}", 0) for j in range(1, J)}
    Kb = {j: pulp.LpVariable(f"Kb_{j}", 0) for j in range(1, J)} if training else {}
    P = pulp.LpVariable("P", 0)
    Z = pulp.LpVariable("Z", 0)  # the step tail: the slowest stage's optimizer step
    c = {
        (f, j): pulp.LpVariable(f"c_{f}_{j}", 0, 1) for f in range(len(flows)) for j in range(1, J)
    }
    h = {
        (s, j): pulp.LpVariable(f"h_{s}_{j}", 0, 1)
        for s in range(len(problem.shared))
        for j in range(J)
    }

    def suffix(layer: int, j: int):
        return pulp.lpSum(x[layer, jj] for jj in range(j, J))

    for layer in range(L):
        lp += pulp.lpSum(x[layer, j] for j in range(J)) == 1, f"assign_{layer}"
    for j in range(J):
        lp += u[j] == pulp.lpSum(w[j, g] for g in range(G)), f"used_{j}"
        lp += pulp.lpSum(x[layer, j] for layer in range(L)) >= u[j], f"nonempty_{j}"
        for layer in range(L):
            lp += x[layer, j] <= u[j], f"open_{layer}_{j}"
        if j + 1 < J:
            lp += u[j] >= u[j + 1], f"prefix_{j}"
    if cfg.stages:
        for j in range(J):
            lp += u[j] == 1, f"fixed_stages_{j}"
    for g, group in enumerate(problem.groups):
        lp += pulp.lpSum(w[j, g] for j in range(J)) <= len(group.devices), f"count_{g}"
    for a, b in problem.edges:
        for j in range(1, J):
            lp += suffix(b, j) <= suffix(a, j), f"flow_{a}_{b}_{j}"
    for f, flow in enumerate(flows):
        for v in flow.consumers:
            for j in range(1, J):
                lp += c[f, j] >= suffix(flow.producer, j) - suffix(v, j), f"cross_{f}_{v}_{j}"

    # Times are scaled to units of the costliest layer, and memory rows to units of the
    # device's capacity, so that the solver's absolute tolerances (1e-6 and up) stay far
    # below the smallest quantities that matter (a link latency of microseconds).
    cost = [[layer.compute_s(g, training) for g in range(G)] for layer in problem.layers]
    tscale = 1.0 / max(max(max(row) for row in cost), 1e-12)
    cost = [[v * tscale for v in row] for row in cost]
    for g in range(G):
        big = sum(cost[layer][g] for layer in range(L))
        for j in range(J):
            lp += (
                T[j]
                >= pulp.lpSum(cost[layer][g] * x[layer, j] for layer in range(L))
                - big * (1 - w[j, g]),
                f"T_{j}_{g}",
            )

    # Valid cuts without big-M (exact when all groups are alike): they tighten the LP
    # relaxation, which big-M rows alone leave weak.
    cheapest = [min(row) for row in cost]
    for j in range(J):
        lp += T[j] >= pulp.lpSum(cheapest[layer] * x[layer, j] for layer in range(L)), f"T_min_{j}"

    # Link time per boundary and group pair.
    pairs = [(g, k) for g in range(G) for k in range(G) if (g, k) in problem.links]
    if pairs:
        fastest = [
            min(problem.link(g, k).transfer_seconds(flow.nbytes) for g, k in pairs) * tscale
            for flow in flows
        ]
        for j in range(1, J):
            lp += K[j] >= pulp.lpSum(t * c[f, j] for f, t in enumerate(fastest)), f"K_min_{j}"
    for j in range(1, J):
        for g, k in pairs:
            link = problem.link(g, k)
            times = [link.transfer_seconds(flow.nbytes) * tscale for flow in flows]
            big = sum(times)
            lp += (
                K[j]
                >= pulp.lpSum(t * c[f, j] for f, t in enumerate(times))
                - big * (2 - w[j, g] - w[j - 1, k]),
                f"K_{j}_{g}_{k}",
            )
            if training:
                float_times = [(f, t) for f, t in enumerate(times) if flows[f].is_float]
                big_b = sum(t for _, t in float_times)
                lp += (
                    Kb[j]
                    >= pulp.lpSum(t * c[f, j] for f, t in float_times)
                    - big_b * (2 - w[j, g] - w[j - 1, k]),
                    f"Kb_{j}_{g}_{k}",
                )

    # Memory per slot.
    for s, sp in enumerate(problem.shared):
        for layer in sp.layers:
            for j in range(J):
                lp += h[s, j] >= x[layer, j], f"shared_{s}_{layer}_{j}"
    for j in range(J):
        flight = in_flight_from_end(schedule, j, m, J) if training else 1
        terms = []
        for layer in problem.layers:
            act = (
                layer.activation_bytes
                if (cfg.recompute and training)
                else flight * layer.activation_bytes
            )
            terms.append((layer.state_bytes + layer.buffer_bytes + act) * x[layer.index, j])
        terms += [sp.state_bytes * h[s, j] for s, sp in enumerate(problem.shared)]
        if cfg.recompute and training and j + 1 < J:
            terms += [flight * flow.nbytes * c[f, j + 1] for f, flow in enumerate(flows)]
        usage = pulp.lpSum(terms)
        worst = (
            sum(
                layer.state_bytes + layer.buffer_bytes + max(flight, 1) * layer.activation_bytes
                for layer in problem.layers
            )
            + sum(sp.state_bytes for sp in problem.shared)
            + sum(flight * fl.nbytes for fl in flows)
        )
        for g in range(G):
            cap = problem.capacity(g)
            big = max(0.0, worst - cap)
            lp += (1.0 / cap) * usage <= 1.0 + (big / cap) * (1 - w[j, g]), f"mem_{j}_{g}"

    # Host-driven sends (gloo on CPUs) hold the sending slot, per micro-batch, in series with
    # its compute: slot j sends activations over boundary j (to slot j - 1, Hf) and
    # gradients over boundary j + 1 (to slot j + 1, the previous stage, Hb).
    Hf: dict = {}
    Hb: dict = {}
    blocking = {
        (g, k): [problem.link(g, k).send_blocking_seconds(f.nbytes) * tscale for f in flows]
        for g, k in pairs
    }
    blocking = {gk: row for gk, row in blocking.items() if any(v > 0 for v in row)}
    if blocking:
        Hf = {j: pulp.LpVariable(f"Hf_{j}", 0) for j in range(1, J)}
        Hb = {j: pulp.LpVariable(f"Hb_{j}", 0) for j in range(J - 1)} if training else {}
        for (g, k), row in blocking.items():
            big = sum(row)
            for j in Hf:
                lp += (
                    Hf[j]
                    >= pulp.lpSum(t * c[f, j] for f, t in enumerate(row))
                    - big * (2 - w[j, g] - w[j - 1, k]),
                    f"Hf_{j}_{g}_{k}",
                )
            floats = [(f, t) for f, t in enumerate(row) if flows[f].is_float]
            big_b = sum(t for _, t in floats)
            for j in Hb:
                lp += (
                    Hb[j]
                    >= pulp.lpSum(t * c[f, j + 1] for f, t in floats)
                    - big_b * (2 - w[j, g] - w[j + 1, k]),
                    f"Hb_{j}_{g}_{k}",
                )

    # Step tail: the optimizer step of each slot's parameters (own and shared), once per
    # iteration after the pipeline drains; the iteration waits for the slowest one.
    step = [list(layer.optimizer_s) or [0.0] * G for layer in problem.layers]
    shared_step = [list(sp.optimizer_s) or [0.0] * G for sp in problem.shared]
    if any(v > 0 for row in step + shared_step for v in row):
        for g in range(G):
            big = (sum(row[g] for row in step) + sum(row[g] for row in shared_step)) * tscale
            for j in range(J):
                lp += (
                    pulp.lpSum(step[layer][g] * tscale * x[layer, j] for layer in range(L))
                    + pulp.lpSum(row[g] * tscale * h[s, j] for s, row in enumerate(shared_step))
                    - big * (1 - w[j, g])
                    <= Z,
                    f"Z_{j}_{g}",
                )
        # valid cuts without big-M (as T_min): every slot's tail at its cheapest group
        # bounds Z, and Z is at least the cheapest total spread over the most slots
        cheapest_step = [min(row) * tscale for row in step]
        cheapest_shared = [min(row) * tscale for row in shared_step]
        for j in range(J):
            lp += (
                pulp.lpSum(cheapest_step[layer] * x[layer, j] for layer in range(L))
                + pulp.lpSum(t * h[s, j] for s, t in enumerate(cheapest_shared))
                <= Z,
                f"Z_min_{j}",
            )
        lp += sum(cheapest_step) <= Z * J, "Z_spread"

    for j in range(J):
        lp += T[j] + Hf.get(j, 0) + Hb.get(j, 0) <= P, f"P_T_{j}"
    for j in range(1, J):
        lp += K[j] <= P, f"P_K_{j}"
        if training:
            lp += Kb[j] <= P, f"P_Kb_{j}"
    for g, k in _equivalent_groups(problem):
        lp += (
            pulp.lpSum(w[j, g] for j in range(J)) >= pulp.lpSum(w[j, k] for j in range(J)),
            f"sym_{g}_{k}",
        )

    links_total = pulp.lpSum(K.values()) + pulp.lpSum(Kb.values())
    held = pulp.lpSum(Hf.values()) + pulp.lpSum(Hb.values())
    if cfg.objective == "latency":
        objective = pulp.lpSum(T.values()) + pulp.lpSum(K.values()) + held + Z
    else:
        objective = pulp.lpSum(T.values()) + links_total + held + (m - 1) * P + Z
    lp += objective
    bound = max(lower_bound(problem, J), floor)
    lp += objective >= bound * tscale * (1 - 1e-9), "analytic_bound"

    warm_ev = evaluate(problem, warm) if warm is not None and warm.num_stages <= J else None
    if warm_ev is not None and warm_ev.fits:
        _set_warm_start(problem, warm, warm_ev, J, x, w, u, T, K, Kb, P, c, h, tscale)
        _warm_holds(problem, warm, J, Hf, Hb, tscale)
        # every variable needs a value, or the solver drops the warm start
        Z.setInitialValue(max((st.optimizer_s for st in warm_ev.stages), default=0.0) * tscale)
    build_seconds = time.perf_counter() - start
    limit = cfg.time_limit_s if time_limit is None else time_limit
    result = solve(lp, backend=cfg.solver, time_limit=limit)
    result = SolveResult(
        result.backend,
        result.status,
        result.objective / tscale if result.objective is not None else None,
        result.bound / tscale if result.bound is not None else None,
        result.seconds,
    )
    assignment = None
    if result.objective is not None:
        assignment = _extract(problem, J, x, w, u)
    return IlpResult(
        assignment, result, bound, len(lp.variables()), len(lp.constraints), build_seconds
    )


def _set_warm_start(
    problem, a: Assignment, ev: Evaluation, J, x, w, u, T, K, Kb, P, c, h, tscale: float
) -> None:
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
    crossing = crossing_tensors(problem, a)
    crossing_sets = [set(cr) for cr in crossing]
    for (f, j), var in c.items():
        # boundary j (slot j -> j-1) is stage boundary s = p - 1 - j (stage s -> s + 1)
        s = p - 1 - j
        var.setInitialValue(1 if 0 <= s < p - 1 and f in crossing_sets[s] else 0)
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


def _warm_holds(problem, a: Assignment, J, Hf: dict, Hb: dict, tscale: float) -> None:
    """Initial values of the send-hold variables for assignment `a` (see `solve_ilp`)."""
    p = a.num_stages
    groups = [problem.group_of_device[d] for d in a.devices]
    crossing = crossing_tensors(problem, a)
    flows = problem.flows
    for j, var in Hf.items():
        s = p - 1 - j  # slot j is stage s; it sends activations to stage s + 1
        value = 0.0
        if 0 <= s < p - 1:
            link = problem.link(groups[s], groups[s + 1])
            value = sum(link.send_blocking_seconds(flows[i].nbytes) for i in crossing[s])
        var.setInitialValue(value * tscale)
    for j, var in Hb.items():
        s = p - 1 - j  # slot j is stage s; it sends gradients to stage s - 1
        value = 0.0
        if 1 <= s < p:
            link = problem.link(groups[s], groups[s - 1])
            value = sum(
                link.send_blocking_seconds(flows[i].nbytes)
                for i in crossing[s - 1]
                if flows[i].is_float
            )
        var.setInitialValue(value * tscale)


def _extract(problem: Problem, J, x, w, u) -> Assignment:
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
