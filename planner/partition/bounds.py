"""A lower bound on the pipeline objective, from a chain DP: the ILP's cut and its gap.

For every stage count p the objective is at least

    W_min + hops x (p - 1 link crossings, the cheapest possible) + (m - 1) x B(p)

where `W_min` is every layer's work on its fastest device, `B(p)` a lower bound on the
slowest stage with p stages, and link crossings are priced at the cheapest cut of the
layer order on the fastest link of their kind. Taking the minimum over p gives a bound
valid for every plan; the ILP adds it as a cut, which closes the gap at once when a
baseline's plan meets it.

* Chains: a plan's stages are contiguous, so `B(p)` is the exact min-max partition of
  `W_min` into p parts (the dynamic programme of PipeDream, Narayanan et al., SOSP 2019),
  and every boundary crosses one of the chain's cuts.
* Other DAGs: `B(p) = max(largest layer, W_min / p)` and a boundary costs at least the
  cheapest single tensor (any cut of a connected DAG carries one).
* Nodes: p stages on distinct devices use at least as many nodes as it takes to hold p
  devices, so at least that many boundaries minus one cross between nodes.
* Step tail (the slowest stage's optimizer step, `cost.optimizer`): at least the min-max
  partition of every layer's cheapest step into p parts on chains, `max(largest, total /
  p)` otherwise (shared weights left out: the bound stays valid).
"""

from __future__ import annotations

import math

import networkx as nx

from planner.partition.chain import min_max_partition
from planner.partition.problem import Problem


def _cut_transfer(problem: Problem, intra: bool, floats_only: bool) -> float:
    """Cheapest time one stage boundary can cost on links of one kind (0 if none)."""
    pairs = [
        (g, k)
        for (g, k) in problem.links
        if (problem.groups[g].node == problem.groups[k].node) == intra
    ]
    if not pairs or not problem.flows:
        return 0.0
    flows = [f for f in problem.flows if f.is_float or not floats_only]
    if not flows:
        return 0.0

    def time_of(flow) -> float:
        return min(problem.link(g, k).transfer_seconds(flow.nbytes) for g, k in pairs)

    n = len(problem.layers)
    if problem.is_chain:
        per_cut = [0.0] * max(n - 1, 1)
        for flow in flows:
            for cut in range(flow.producer, max(flow.consumers)):
                per_cut[cut] += time_of(flow)
        return min(per_cut)
    graph = nx.Graph(problem.edges)
    graph.add_nodes_from(range(n))
    if not nx.is_connected(graph) or floats_only:
        return 0.0
    return min(time_of(f) for f in flows)


def _min_nodes(problem: Problem, p: int) -> int:
    sizes = sorted(
        (
            sum(len(g.devices) for g in problem.groups if g.node == node)
            for node in {g.node for g in problem.groups}
        ),
        reverse=True,
    )
    held = 0
    for i, size in enumerate(sizes, start=1):
        held += size
        if held >= p:
            return i
    return len(sizes)


def tail_bound(problem: Problem, p: int) -> float:
    """A lower bound on the step tail of any plan with `p` stages (module docstring)."""
    steps = [min(layer.optimizer_s) if layer.optimizer_s else 0.0 for layer in problem.layers]
    if not any(steps):
        return 0.0
    if problem.is_chain and len(steps) >= p > 1:
        edges = [0, *min_max_partition(steps, p), len(steps)]
        return max(sum(steps[a:b]) for a, b in zip(edges, edges[1:], strict=False))
    return max(max(steps), sum(steps) / max(p, 1))


def lower_bound(problem: Problem, slots: int) -> float:
    """The bound of the module docstring for plans of at most `slots` stages."""
    training = problem.training
    groups = range(len(problem.groups))
    best = [min(layer.compute_s(g, training) for g in groups) for layer in problem.layers]
    total = sum(best)
    m = problem.config.microbatches
    latency = problem.config.objective == "latency"
    has_intra = any(problem.groups[g].node == problem.groups[k].node for g, k in problem.links)
    has_inter = any(problem.groups[g].node != problem.groups[k].node for g, k in problem.links)
    inter = _cut_transfer(problem, False, False)
    inter_b = _cut_transfer(problem, False, True) if training else 0.0
    # A hop that need not leave a node may still take the cheaper inter-node link.
    intra = (
        min(_cut_transfer(problem, True, False), inter)
        if has_inter
        else _cut_transfer(problem, True, False)
    )
    intra_b = 0.0
    if training:
        intra_b = _cut_transfer(problem, True, True)
        intra_b = min(intra_b, inter_b) if has_inter else intra_b
    if not has_intra:
        intra, intra_b = inter, inter_b

    p_values = [problem.config.stages] if problem.config.stages else range(1, max(slots, 1) + 1)
    bound = math.inf
    for p in p_values:
        inter_hops = max(_min_nodes(problem, p) - 1, 0)
        intra_hops = max(p - 1 - inter_hops, 0)
        links = intra_hops * (intra + intra_b) + inter_hops * (inter + inter_b)
        if latency:
            bound = min(bound, total + links + tail_bound(problem, p))
            continue
        if p == 1:
            slowest = total
        elif problem.is_chain and len(best) >= p:
            cuts = min_max_partition(best, p)
            edges = [0, *cuts, len(best)]
            slowest = max(sum(best[a:b]) for a, b in zip(edges, edges[1:], strict=False))
        else:
            slowest = max(max(best), total / p)
        link_floor = min(intra if intra_hops else math.inf, inter if inter_hops else math.inf)
        if p > 1 and math.isfinite(link_floor):
            slowest = max(slowest, link_floor)
        bound = min(bound, total + links + (m - 1) * slowest + tail_bound(problem, p))
    return bound if math.isfinite(bound) else 0.0
