"""The MILP of pipeline partitioning: variables, and one function per constraint family.

The formulation follows the integer programs for pipeline placement of Tarnawski et al.
("Efficient Algorithms for Device Placement of DNN Graph Operators", NeurIPS 2020) and
Piper (Tarnawski et al., NeurIPS 2021), adapted to the cost model of
`planner.partition.objective`, which it reproduces exactly: the MILP's optimum is the best
assignment under that model.

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
    Hf[j], Hb[j] >= 0  time slot j is held by its own sends of activations (to slot j - 1)
                       and of gradients (to slot j + 1) over host-driven links (gloo on
                       CPUs, `LinkSpec.send_blocking_seconds`); only when a link has them
    P >= 0             the slowest resource (a stage's compute plus holds, or a link)
    Z >= 0             the step tail: the slowest slot's optimizer step (once per iteration)

Constraints (`add_*`, in this order)
    assignment: sum_j x[l, j] = 1;  x[l, j] <= u[j] <= sum_l x[l, j];  u[j] >= u[j+1];
        sum_j w[j, g] <= |g|
    flow (layer a feeds b): sum_{j' >= j} x[b, j'] <= sum_{j' >= j} x[a, j'] for all j;
        routes: c[f, j] >= X[prod f, >= j] - X[v, >= j] for every consumer v of f
    compute (tight big-M per group): T[j] >= sum_l C[l, g] x[l, j] - M_g (1 - w[j, g]),
        and the cut T[j] >= sum_l min_g C[l, g] x[l, j]
    links, per group pair (g on slot j, h on slot j-1):
        K[j] >= sum_f t_gh(f) c[f, j] - M (2 - w[j, g] - w[j-1, h]), the same for Kb
        (floating-point tensors), and the cut K[j] >= sum_f min_gh t_gh(f) c[f, j]
    memory: sum_l (state_l + buffers_l + flight_j act_l) x[l, j] + sum_s state_s h[s, j]
        (+ flight_j x inputs with recomputation) <= cap_g + M (1 - w[j, g]);
        h[s, j] >= x[l, j] for each layer l using shared weight s
    send holds: Hf[j] >= sum_f b_gh(f) c[f, j] - M (2 - w[j, g] - w[j-1, h]), Hb alike
    step tail: Z >= sum_l O[l, g] x[l, j] + sum_s O[s, g] h[s, j] - M (1 - w[j, g]), with
        the cuts Z >= sum_l min_g O[l, g] x[l, j] and J Z >= sum_l min_g O[l, g]
    period: P >= T[j] + Hf[j] + Hb[j], P >= K[j], P >= Kb[j]
    symmetry: interchangeable groups g < k are used in order, sum_j w[j, g] >= sum_j w[j, k]

Objective: sum_j (T + K + Kb + Hf + Hb)[j] + (m - 1) P + Z (throughput), or
sum_j (T + K + Hf + Hb)[j] + Z (latency); a lower bound (`planner.partition.bounds`) is a
cut. Times are in units of the costliest layer (`tscale`), memory rows in units of the
device's capacity, so the solver's absolute tolerances stay far below a link latency.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pulp

from cost.memory import in_flight_from_end
from cost.timings import phase
from planner.partition.bounds import lower_bound
from planner.partition.classes import equivalent_groups
from planner.partition.problem import Problem

Var = pulp.LpVariable


@dataclass
class Variables:
    """The MILP's variables (module docstring), keyed as there, and the time scale."""

    J: int  # slots
    tscale: float  # seconds -> solver time units
    x: dict[tuple[int, int], Var]
    w: dict[tuple[int, int], Var]
    u: dict[int, Var]
    T: dict[int, Var]
    K: dict[int, Var]
    Kb: dict[int, Var]
    P: Var
    Z: Var
    c: dict[tuple[int, int], Var]
    h: dict[tuple[int, int], Var]
    Hf: dict[int, Var] = field(default_factory=dict)
    Hb: dict[int, Var] = field(default_factory=dict)

    def suffix(self, layer: int, j: int):
        """Layer `layer` sits on slot j or later (earlier in the pipeline)."""
        return pulp.lpSum(self.x[layer, jj] for jj in range(j, self.J))


@dataclass
class Milp:
    """A built MILP: the PuLP problem, its variables and the bound added as a cut."""

    lp: pulp.LpProblem
    v: Variables
    bound: float


def slot_count(problem: Problem) -> int:
    """Slots the MILP offers: the fixed stage count, else as many as can be used."""
    return min(problem.config.stages or problem.max_stages, problem.max_stages)


def build_milp(problem: Problem, floor: float = 0.0) -> Milp:
    """The MILP of the module docstring for `problem`; `floor`: a known lower bound on the
    optimum (seconds), added with the analytic bound as a cut."""
    lp = pulp.LpProblem("pipeline_partition", pulp.LpMinimize)
    cost = compute_costs(problem)
    v = make_variables(problem, slot_count(problem), cost)
    add_assignment(lp, v, problem)
    add_flow(lp, v, problem)
    add_compute(lp, v, problem, cost)
    add_links(lp, v, problem)
    add_memory(lp, v, problem)
    add_send_holds(lp, v, problem)
    add_step_tail(lp, v, problem)
    add_period(lp, v, problem)
    add_symmetry(lp, v, problem)
    objective = objective_of(v, problem)
    lp += objective
    with phase("bound"):
        bound = max(lower_bound(problem, v.J), floor)
    lp += objective >= bound * v.tscale * (1 - 1e-9), "analytic_bound"
    return Milp(lp, v, bound)


def compute_costs(problem: Problem) -> list[list[float]]:
    """Per layer and group: compute time per micro-batch, in seconds."""
    G = len(problem.groups)
    return [[layer.compute_s(g, problem.training) for g in range(G)] for layer in problem.layers]


def make_variables(problem: Problem, J: int, cost: list[list[float]]) -> Variables:
    L, G = len(problem.layers), len(problem.groups)
    flows, training = problem.flows, problem.training
    return Variables(
        J=J,
        tscale=1.0 / max(max(max(row) for row in cost), 1e-12),
        x={
            (layer, j): pulp.LpVariable(f"x_{layer}_{j}", cat="Binary")
            for layer in range(L)
            for j in range(J)
        },
        w={(j, g): pulp.LpVariable(f"w_{j}_{g}", cat="Binary") for j in range(J) for g in range(G)},
        u={j: pulp.LpVariable(f"u_{j}", 0, 1) for j in range(J)},
        T={j: pulp.LpVariable(f"T_{j}", 0) for j in range(J)},
        K={j: pulp.LpVariable(f"K_{j}", 0) for j in range(1, J)},
        Kb={j: pulp.LpVariable(f"Kb_{j}", 0) for j in range(1, J)} if training else {},
        P=pulp.LpVariable("P", 0),
        Z=pulp.LpVariable("Z", 0),
        c={
            (f, j): pulp.LpVariable(f"c_{f}_{j}", 0, 1)
            for f in range(len(flows))
            for j in range(1, J)
        },
        h={
            (s, j): pulp.LpVariable(f"h_{s}_{j}", 0, 1)
            for s in range(len(problem.shared))
            for j in range(J)
        },
    )


def add_assignment(lp: pulp.LpProblem, v: Variables, problem: Problem) -> None:
    """Every layer on one slot; used slots form a prefix, each non-empty, on one group."""
    L, G, J = len(problem.layers), len(problem.groups), v.J
    x, w, u = v.x, v.w, v.u
    for layer in range(L):
        lp += pulp.lpSum(x[layer, j] for j in range(J)) == 1, f"assign_{layer}"
    for j in range(J):
        lp += u[j] == pulp.lpSum(w[j, g] for g in range(G)), f"used_{j}"
        lp += pulp.lpSum(x[layer, j] for layer in range(L)) >= u[j], f"nonempty_{j}"
        for layer in range(L):
            lp += x[layer, j] <= u[j], f"open_{layer}_{j}"
        if j + 1 < J:
            lp += u[j] >= u[j + 1], f"prefix_{j}"
    if problem.config.stages:
        for j in range(J):
            lp += u[j] == 1, f"fixed_stages_{j}"
    for g, group in enumerate(problem.groups):
        lp += pulp.lpSum(w[j, g] for j in range(J)) <= len(group.devices), f"count_{g}"


def add_flow(lp: pulp.LpProblem, v: Variables, problem: Problem) -> None:
    """Data flows forward; a tensor crosses every boundary between producer and consumer."""
    for a, b in problem.edges:
        for j in range(1, v.J):
            lp += v.suffix(b, j) <= v.suffix(a, j), f"flow_{a}_{b}_{j}"
    for f, flow in enumerate(problem.flows):
        for consumer in flow.consumers:
            for j in range(1, v.J):
                lp += (
                    v.c[f, j] >= v.suffix(flow.producer, j) - v.suffix(consumer, j),
                    f"cross_{f}_{consumer}_{j}",
                )


def add_compute(lp: pulp.LpProblem, v: Variables, problem: Problem, cost) -> None:
    """T[j]: the compute of slot j on its group (big-M per group), and a big-M-free cut
    (exact when all groups are alike) that tightens the LP relaxation."""
    L, G = len(problem.layers), len(problem.groups)
    scaled = [[t * v.tscale for t in row] for row in cost]
    for g in range(G):
        big = sum(scaled[layer][g] for layer in range(L))
        for j in range(v.J):
            lp += (
                v.T[j]
                >= pulp.lpSum(scaled[layer][g] * v.x[layer, j] for layer in range(L))
                - big * (1 - v.w[j, g]),
                f"T_{j}_{g}",
            )
    cheapest = [min(row) for row in scaled]
    for j in range(v.J):
        lp += (
            v.T[j] >= pulp.lpSum(cheapest[layer] * v.x[layer, j] for layer in range(L)),
            f"T_min_{j}",
        )


def link_pairs(problem: Problem) -> list[tuple[int, int]]:
    """Ordered group pairs (g, k) a boundary can join."""
    G = len(problem.groups)
    return [(g, k) for g in range(G) for k in range(G) if (g, k) in problem.links]


def add_links(lp: pulp.LpProblem, v: Variables, problem: Problem) -> None:
    """K[j], Kb[j]: activations and gradients over boundary j, on the pair of groups of
    slots j and j - 1 (big-M per pair), and a cut at each tensor's fastest link."""
    flows, pairs = problem.flows, link_pairs(problem)
    if pairs:
        fastest = [
            min(problem.link(g, k).transfer_seconds(flow.nbytes) for g, k in pairs) * v.tscale
            for flow in flows
        ]
        for j in range(1, v.J):
            lp += v.K[j] >= pulp.lpSum(t * v.c[f, j] for f, t in enumerate(fastest)), f"K_min_{j}"
    for j in range(1, v.J):
        for g, k in pairs:
            times = [problem.link(g, k).transfer_seconds(fl.nbytes) * v.tscale for fl in flows]
            both = 2 - v.w[j, g] - v.w[j - 1, k]
            lp += (
                v.K[j]
                >= pulp.lpSum(t * v.c[f, j] for f, t in enumerate(times)) - sum(times) * both,
                f"K_{j}_{g}_{k}",
            )
            if problem.training:
                float_times = [(f, t) for f, t in enumerate(times) if flows[f].is_float]
                big_b = sum(t for _, t in float_times)
                lp += (
                    v.Kb[j] >= pulp.lpSum(t * v.c[f, j] for f, t in float_times) - big_b * both,
                    f"Kb_{j}_{g}_{k}",
                )


def add_memory(lp: pulp.LpProblem, v: Variables, problem: Problem) -> None:
    """What each slot holds fits its group's usable memory (big-M per group)."""
    cfg, training, flows = problem.config, problem.training, problem.flows
    schedule = cfg.pricing_schedule if training else "infer"
    recompute = cfg.recompute and training
    for s, sp in enumerate(problem.shared):
        for layer in sp.layers:
            for j in range(v.J):
                lp += v.h[s, j] >= v.x[layer, j], f"shared_{s}_{layer}_{j}"
    for j in range(v.J):
        flight = in_flight_from_end(schedule, j, cfg.microbatches, v.J) if training else 1
        terms = []
        for layer in problem.layers:
            act = layer.activation_bytes if recompute else flight * layer.activation_bytes
            terms.append((layer.state_bytes + layer.buffer_bytes + act) * v.x[layer.index, j])
        terms += [sp.state_bytes * v.h[s, j] for s, sp in enumerate(problem.shared)]
        if recompute and j + 1 < v.J:
            terms += [flight * flow.nbytes * v.c[f, j + 1] for f, flow in enumerate(flows)]
        usage = pulp.lpSum(terms)
        worst = (
            sum(
                layer.state_bytes + layer.buffer_bytes + max(flight, 1) * layer.activation_bytes
                for layer in problem.layers
            )
            + sum(sp.state_bytes for sp in problem.shared)
            + sum(flight * fl.nbytes for fl in flows)
        )
        for g in range(len(problem.groups)):
            cap = problem.capacity(g)
            big = max(0.0, worst - cap)
            lp += (1.0 / cap) * usage <= 1.0 + (big / cap) * (1 - v.w[j, g]), f"mem_{j}_{g}"


def add_send_holds(lp: pulp.LpProblem, v: Variables, problem: Problem) -> None:
    """Hf[j], Hb[j]: host-driven sends hold the sending slot, per micro-batch, in series
    with its compute: slot j sends activations over boundary j (to slot j - 1, Hf) and
    gradients over boundary j + 1 (to slot j + 1, the previous stage, Hb). Added only
    when some link has send-blocking figures."""
    flows = problem.flows
    blocking = {
        (g, k): [problem.link(g, k).send_blocking_seconds(f.nbytes) * v.tscale for f in flows]
        for g, k in link_pairs(problem)
    }
    blocking = {gk: row for gk, row in blocking.items() if any(t > 0 for t in row)}
    if not blocking:
        return
    v.Hf = {j: pulp.LpVariable(f"Hf_{j}", 0) for j in range(1, v.J)}
    v.Hb = {j: pulp.LpVariable(f"Hb_{j}", 0) for j in range(v.J - 1)} if problem.training else {}
    for (g, k), row in blocking.items():
        for j in v.Hf:
            lp += (
                v.Hf[j]
                >= pulp.lpSum(t * v.c[f, j] for f, t in enumerate(row))
                - sum(row) * (2 - v.w[j, g] - v.w[j - 1, k]),
                f"Hf_{j}_{g}_{k}",
            )
        floats = [(f, t) for f, t in enumerate(row) if flows[f].is_float]
        big_b = sum(t for _, t in floats)
        for j in v.Hb:
            lp += (
                v.Hb[j]
                >= pulp.lpSum(t * v.c[f, j + 1] for f, t in floats)
                - big_b * (2 - v.w[j, g] - v.w[j + 1, k]),
                f"Hb_{j}_{g}_{k}",
            )


def add_step_tail(lp: pulp.LpProblem, v: Variables, problem: Problem) -> None:
    """Z: the optimizer step of each slot's parameters (own and shared), once per
    iteration after the pipeline drains; the iteration waits for the slowest one."""
    L, G = len(problem.layers), len(problem.groups)
    step = [list(layer.optimizer_s) or [0.0] * G for layer in problem.layers]
    shared_step = [list(sp.optimizer_s) or [0.0] * G for sp in problem.shared]
    if not any(t > 0 for row in step + shared_step for t in row):
        return
    x, h, Z, tscale = v.x, v.h, v.Z, v.tscale
    for g in range(G):
        big = (sum(row[g] for row in step) + sum(row[g] for row in shared_step)) * tscale
        for j in range(v.J):
            lp += (
                pulp.lpSum(step[layer][g] * tscale * x[layer, j] for layer in range(L))
                + pulp.lpSum(row[g] * tscale * h[s, j] for s, row in enumerate(shared_step))
                - big * (1 - v.w[j, g])
                <= Z,
                f"Z_{j}_{g}",
            )
    # valid cuts without big-M (as T_min): every slot's tail at its cheapest group bounds
    # Z, and Z is at least the cheapest total spread over the most slots
    cheapest_step = [min(row) * tscale for row in step]
    cheapest_shared = [min(row) * tscale for row in shared_step]
    for j in range(v.J):
        lp += (
            pulp.lpSum(cheapest_step[layer] * x[layer, j] for layer in range(L))
            + pulp.lpSum(t * h[s, j] for s, t in enumerate(cheapest_shared))
            <= Z,
            f"Z_min_{j}",
        )
    lp += sum(cheapest_step) <= Z * v.J, "Z_spread"


def add_period(lp: pulp.LpProblem, v: Variables, problem: Problem) -> None:
    """P: the slowest resource, a slot's compute and send holds or a boundary's link."""
    for j in range(v.J):
        lp += v.T[j] + v.Hf.get(j, 0) + v.Hb.get(j, 0) <= v.P, f"P_T_{j}"
    for j in range(1, v.J):
        lp += v.K[j] <= v.P, f"P_K_{j}"
        if problem.training:
            lp += v.Kb[j] <= v.P, f"P_Kb_{j}"


def add_symmetry(lp: pulp.LpProblem, v: Variables, problem: Problem) -> None:
    """Interchangeable groups are used in order (breaks their symmetry)."""
    for g, k in equivalent_groups(problem):
        lp += (
            pulp.lpSum(v.w[j, g] for j in range(v.J)) >= pulp.lpSum(v.w[j, k] for j in range(v.J)),
            f"sym_{g}_{k}",
        )


def objective_of(v: Variables, problem: Problem):
    """Iteration time in solver units (module docstring)."""
    held = pulp.lpSum(v.Hf.values()) + pulp.lpSum(v.Hb.values())
    if problem.config.objective == "latency":
        return pulp.lpSum(v.T.values()) + pulp.lpSum(v.K.values()) + held + v.Z
    links = pulp.lpSum(v.K.values()) + pulp.lpSum(v.Kb.values())
    return pulp.lpSum(v.T.values()) + links + held + (problem.config.microbatches - 1) * v.P + v.Z
