"""Baseline partitioners, as the well-known systems do it, priced by the same cost model.

All four cut the layers' topological order into contiguous stages and place stage `s` on
the `s`-th device of the cluster (node by node, as launchers number ranks). They serve
as comparisons and as warm starts for the ILP.

* `uniform`: equal layer counts per stage (torchtitan's default pipeline split).
* `params`: balanced parameter bytes (DeepSpeed's `partition_method="parameters"`).
* `greedy`: balanced predicted time, each device's share proportional to its speed
  (torchgpipe's `balance_by_time`, made device-aware).
* `pipedream`: exact dynamic programming for a chain on identical devices, minimising the
  slowest stage or link under the memory limit (PipeDream's planner, Narayanan et al.,
  SOSP 2019, section 3.1), tried for every stage count; the best under the full cost
  model wins.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

from cost.memory import in_flight_from_end
from planner.partition.chain import min_max_partition, stages_from_cuts
from planner.partition.objective import Assignment, evaluate
from planner.partition.problem import Problem


def _stage_count(problem: Problem) -> int:
    return problem.config.stages or problem.max_stages


def _devices(problem: Problem, p: int) -> tuple[str, ...]:
    return tuple(problem.cluster.device_ids()[:p])


def uniform(problem: Problem) -> Assignment:
    n, p = len(problem.layers), _stage_count(problem)
    cuts = [round(i * n / p) for i in range(1, p)]
    return Assignment(stages_from_cuts(cuts, n), _devices(problem, p))


def params(problem: Problem) -> Assignment:
    p = _stage_count(problem)
    weights = [float(layer.param_bytes) for layer in problem.layers]
    if sum(weights) == 0:
        return uniform(problem)
    # Parameter-free layers weigh a little, so that they spread instead of piling up.
    weights = [w + 1e-9 * (sum(weights) or 1) for w in weights]
    return Assignment(
        stages_from_cuts(min_max_partition(weights, p), len(weights)), _devices(problem, p)
    )


def greedy(problem: Problem) -> Assignment:
    n, p = len(problem.layers), _stage_count(problem)
    devices = _devices(problem, p)
    training = problem.training
    groups = [problem.group_of_device[d] for d in devices]
    totals = [sum(layer.compute_s(g, training) for layer in problem.layers) for g in groups]
    speed = [1.0 / t if t > 0 else 1.0 for t in totals]
    share = [sp / sum(speed) for sp in speed]
    cuts, s, done = [], 0, 0.0
    for i, layer in enumerate(problem.layers):
        remaining_layers = n - i
        remaining_stages = p - s - 1
        fraction = layer.compute_s(groups[s], training) / totals[s] if totals[s] > 0 else 1.0 / n
        must_cut = remaining_layers == remaining_stages and i > 0 and remaining_stages > 0
        if (
            s < p - 1
            and i > 0
            and (must_cut or done + fraction / 2 > share[s])
            and (not cuts or cuts[-1] < i)
        ):
            cuts.append(i)
            s += 1
            done = 0.0
            fraction = (
                layer.compute_s(groups[s], training) / totals[s] if totals[s] > 0 else 1.0 / n
            )
        done += fraction
    while len(cuts) < p - 1:  # too few cuts: split the widest stages
        bounds = [0, *cuts, n]
        widest = max(range(len(bounds) - 1), key=lambda i: bounds[i + 1] - bounds[i])
        cuts = sorted([*cuts, (bounds[widest] + bounds[widest + 1]) // 2])
    return Assignment(stages_from_cuts(cuts, n), devices)


def pipedream(problem: Problem) -> Assignment:
    """PipeDream-style DP on the first device's group; best stage count by full cost."""
    n = len(problem.layers)
    cfg = problem.config
    training = problem.training
    devices_all = problem.cluster.device_ids()
    g = problem.group_of_device[devices_all[0]]
    link = problem.links.get((g, g)) or next(iter(problem.links.values()), None)
    compute = [layer.compute_s(g, training) for layer in problem.layers]
    prefix = list(itertools.accumulate(compute, initial=0.0))
    # Bytes crossing the cut after layer i (topological order), and their link time.
    cut_time = [0.0] * n
    cut_bytes = [0] * n
    for flow in problem.flows:
        last = max(flow.consumers)
        for i in range(flow.producer, last):
            cut_bytes[i] += flow.nbytes
            if link is not None:
                cut_time[i] += link.transfer_seconds(flow.nbytes) * (
                    2 if training and flow.is_float else 1
                )
    state = list(
        itertools.accumulate(
            (layer.state_bytes + layer.buffer_bytes for layer in problem.layers), initial=0
        )
    )
    acts = list(
        itertools.accumulate((layer.activation_bytes for layer in problem.layers), initial=0)
    )
    shared_total = sum(sp.state_bytes for sp in problem.shared)
    capacity = problem.capacity(g)
    schedule = cfg.pricing_schedule if training else "infer"
    max_p = cfg.stages or min(len(devices_all), n)
    inf = float("inf")

    def seg_ok(i: int, j: int, rev: int) -> bool:
        # Reverse index rev = p - 1 - s, so 1F1B's in-flight count min(p - s, m) = min(rev + 1, m)
        # does not depend on p: one table serves every stage count.
        flight = in_flight_from_end(schedule, rev, cfg.microbatches, max_p) if training else 1
        mem = state[j] - state[i] + flight * (acts[j] - acts[i]) + shared_total
        return mem <= capacity

    # f[r][i]: min bottleneck for layers i.. in r+1 stages, the first with reverse index r.
    f = [[inf] * (n + 1) for _ in range(max_p)]
    choice = [[-1] * (n + 1) for _ in range(max_p)]
    for i in range(n):
        if seg_ok(i, n, 0):
            f[0][i] = prefix[n] - prefix[i]
    for r in range(1, max_p):
        for i in range(n - r):
            for j in range(i + 1, n - r + 1):
                if f[r - 1][j] == inf:
                    continue
                val = max(prefix[j] - prefix[i], cut_time[j - 1], f[r - 1][j])
                if val < f[r][i] and seg_ok(i, j, r):
                    f[r][i], choice[r][i] = val, j
    best: tuple[tuple, Assignment] | None = None
    p_range = [cfg.stages] if cfg.stages else range(1, max_p + 1)
    for p in p_range:
        if p > max_p or f[p - 1][0] == inf:
            continue
        cuts, i = [], 0
        for r in range(p - 1, 0, -1):
            i = choice[r][i]
            cuts.append(i)
        a = Assignment(stages_from_cuts(cuts, n), tuple(devices_all[:p]))
        score = evaluate(problem, a)
        key = (0 if score.fits else 1, score.objective)
        if best is None or key < best[0]:
            best = (key, a)
    if best is None:
        return uniform(problem)
    return best[1]


BASELINES: dict[str, Callable[[Problem], Assignment]] = {
    "uniform": uniform,
    "params": params,
    "greedy": greedy,
    "pipedream": pipedream,
}
