"""Random small partitioning problems and an exhaustive solver, for checking the ILP."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

from hypothesis import strategies as st

from cost.cluster import cluster_from_dict
from planner.config import PlanConfig
from planner.partition.objective import Assignment, evaluate
from planner.partition.problem import Flow, LayerCost, Problem, SharedParam, device_groups

KINDS = ["A100-80GB", "V100-16GB", "T4"]

#: links whose hosts move the bytes: sends hold the sending stage (gloo-like)
HOST_LINKS = (
    {"bandwidth_GBps": 3, "latency_us": 100, "send_blocking_us": 300, "send_blocking_GBps": 4},
    {"bandwidth_GBps": 1, "latency_us": 500, "send_blocking_us": 50},
)


def draw_dag_edges(draw, n: int, min_preds: int) -> list[tuple[int, int]]:
    """Hypothesis: edges of a random DAG on n layers, each layer after the first fed by
    `min_preds` to 2 earlier ones."""
    edges = set()
    for v in range(1, n):
        preds = draw(st.sets(st.integers(0, v - 1), min_size=min_preds, max_size=min(2, v)))
        edges.update((u, v) for u in preds)
    return sorted(edges)


def draw_problem(draw, n, edges, node_kinds, config, link_choices) -> Problem:
    """Hypothesis: `make_problem` with random work, tensor sizes, memory, weights, a weight
    shared by the first and last layers or not, and links drawn from `link_choices`."""
    return make_problem(
        work=draw(st.lists(st.floats(0.001, 50), min_size=n, max_size=n)),
        edges=edges,
        edge_bytes=draw(st.lists(st.integers(0, 4 * 10**8), min_size=1, max_size=4)),
        node_kinds=node_kinds,
        memory_gb={"A100-80GB": draw(st.sampled_from([80, 20])), "V100-16GB": 16, "T4": 16},
        state_bytes=draw(st.lists(st.integers(0, 6 * 10**9), min_size=n, max_size=n)),
        act_bytes=draw(st.lists(st.integers(0, 10**9), min_size=n, max_size=n)),
        config=config,
        shared=[(0, n - 1)] if draw(st.booleans()) and n > 2 else [],
        links=draw(st.sampled_from(link_choices)),
    )


def make_problem(
    *,
    work: list[float],
    edges: list[tuple[int, int]],
    edge_bytes: list[int],
    node_kinds: list[list[str]],
    memory_gb: dict[str, float],
    state_bytes: list[int],
    act_bytes: list[int],
    config: PlanConfig,
    shared: list[tuple[int, ...]] = (),
    links: tuple = ("NVLink3", "IB-HDR"),
) -> Problem:
    """A problem over `len(work)` layers; layer l does work[l] GFLOP (forward)."""
    nodes = []
    for i, kinds in enumerate(node_kinds):
        nodes.append(
            {
                "name": f"n{i}",
                "devices": [{"like": k, "memory_GB": memory_gb[k]} for k in kinds],
                "link": links[0],
            }
        )
    cluster = cluster_from_dict(
        {"name": "random", "nodes": nodes, "inter_node_link": links[1] if len(nodes) > 1 else None}
    )
    groups = device_groups(cluster)
    layers = []
    for i, gflop in enumerate(work):
        fwd = tuple(1e-5 + gflop * 1e9 / (g.spec.peak_flops("fp32") * 0.7) for g in groups)
        layers.append(
            LayerCost(
                i,
                f"l{i}",
                fwd,
                tuple(2 * f for f in fwd),
                tuple(f for f in fwd),
                state_bytes[i],
                0,
                act_bytes[i],
                state_bytes[i] // 4,
                tuple(0.5 * f for f in fwd) if i % 2 == 0 else (),
            )
        )
    by_producer: dict[int, list[int]] = {}
    for u, v in edges:
        by_producer.setdefault(u, []).append(v)
    flows = []
    for idx, (u, vs) in enumerate(sorted(by_producer.items())):
        flows.append(
            Flow(f"t{u}", u, tuple(sorted(vs)), edge_bytes[idx % len(edge_bytes)], idx % 5 != 4)
        )
    links_map = {}
    for a in groups:
        for b in groups:
            if a.index != b.index:
                links_map[(a.index, b.index)] = cluster.link_between(a.devices[0], b.devices[0])
            elif len(a.devices) > 1:
                links_map[(a.index, b.index)] = cluster.link_between(a.devices[0], a.devices[1])
    shared_params = [
        SharedParam(f"s{i}", tuple(ls), 3 * 10**9, tuple(1e-4 for _ in groups))
        for i, ls in enumerate(shared)
    ]
    return Problem(
        layers, sorted(set(edges)), flows, shared_params, groups, cluster, config, links_map
    )


def monotone_maps(n: int, p: int, edges: list[tuple[int, int]]) -> Iterator[tuple[int, ...]]:
    """Every layer -> stage map onto 0..p-1 (all stages used) with stage(u) <= stage(v)."""

    def rec(i: int, current: list[int]):
        if i == n:
            if len(set(current)) == p:
                yield tuple(current)
            return
        low = max((current[u] for u, v in edges if v == i), default=0)
        for s in range(low, p):
            current.append(s)
            yield from rec(i + 1, current)
            current.pop()

    yield from rec(0, [])


def exhaustive_best(problem: Problem) -> float | None:
    """Best objective over all feasible assignments (None when nothing fits)."""
    n = len(problem.layers)
    devices = problem.cluster.device_ids()
    best = None
    max_p = problem.config.stages or min(len(devices), n)
    p_values = [problem.config.stages] if problem.config.stages else range(1, max_p + 1)
    for p in p_values:
        # Devices within a group are interchangeable: enumerate group sequences once.
        seen = set()
        for combo in itertools.permutations(devices, p):
            key = tuple(problem.group_of_device[d] for d in combo)
            if key in seen:
                continue
            seen.add(key)
            for stage_of in monotone_maps(n, p, problem.edges):
                ev = evaluate(problem, Assignment(stage_of, combo))
                if ev.fits and (best is None or ev.objective < best):
                    best = ev.objective
    return best
