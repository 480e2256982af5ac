"""Tensor parallelism in the layout: every stage on a group of t devices of one node.

The layout practitioners run (D. Narayanan et al., "Efficient Large-Scale Language Model
Training on GPU Clusters Using Megatron-LM", SC 2021, section 3.3: tensor parallelism
inside a node's fast links, pipeline across nodes, data parallelism over the rest). For a
degree t the cluster is seen as its *groups*: t consecutive, identical devices of a node
become one device of a grouped cluster (same memory per device, the node's links); the
pipeline and data-parallel search (`planner.parallel.search`) then run on that cluster
unchanged, with every layer priced as one device of a group runs it
(`planner.graph.shard_price`: the shard's operators at their shapes, the group's
all-reduces on the node's link, 1/t of the sharded weights and activations). The layer
graph keeps each tensor-parallel block inside one layer, so no stage boundary cuts one.

`tensor_job_plan` writes the chosen plan back in the cluster's device ids: a stage's
`device` is its group's first device, `tensor_devices` the whole group.

Which t are tried: `--tp N` alone, or `auto`: 1, 2, 4, 8 where t divides every node's
device count, the devices of each group are identical, and some block of the model
splits t ways (a degree at which nothing shards only replicates the work). A stage's t
is the same everywhere in a plan: a heterogeneous cluster gets one t for all its stages.
"""

from __future__ import annotations

from dataclasses import dataclass

from cost.cluster import Cluster, NodeSpec
from cost.errors import PipeplanError
from planner.config import PlanConfig
from planner.graph.layers import LayerGraph, keep_together
from planner.graph.load import ModelGraph
from planner.graph.shard_price import TensorParallelGraph, tensor_parallel_graph
from planner.graph.sharding import Block, find_blocks
from planner.plan_file import Plan


@dataclass(frozen=True)
class TensorLayout:
    """Degree t: the grouped cluster, its groups, the graph as one device of a group runs
    it, and the layers (blocks kept whole)."""

    degree: int
    cluster: Cluster
    groups: dict[str, tuple[str, ...]]  # grouped device id -> the node's devices
    graph: TensorParallelGraph
    layers: LayerGraph


def grouped_cluster(cluster: Cluster, t: int) -> tuple[Cluster, dict[str, tuple[str, ...]]]:
    """The cluster of groups of t (module docstring); PipeplanError saying why not."""
    if cluster.overrides:
        raise PipeplanError(f"tensor parallelism {t}: clusters with link overrides are not grouped")
    nodes, groups = [], {}
    for node in cluster.nodes:
        n = len(node.devices)
        if n % t:
            raise PipeplanError(
                f"tensor parallelism {t} does not divide node {node.name}'s {n} devices"
            )
        members = []
        for j in range(n // t):
            specs = node.devices[j * t : (j + 1) * t]
            if any(s != specs[0] for s in specs):
                raise PipeplanError(
                    f"tensor parallelism {t}: node {node.name} mixes device kinds in a group"
                )
            members.append(specs[0])
            groups[f"{node.name}.{j}"] = tuple(f"{node.name}.{j * t + i}" for i in range(t))
        nodes.append(NodeSpec(name=node.name, devices=members, link=node.link))
    grouped = Cluster(
        name=f"{cluster.name}-tp{t}", nodes=nodes, inter_node_link=cluster.inter_node_link
    )
    return grouped, groups


def tensor_layouts(
    mg: ModelGraph, lg: LayerGraph, cluster: Cluster, config: PlanConfig
) -> tuple[list[TensorLayout | None], list[str]]:
    """The degrees to plan (None: t = 1, the cluster itself) and, per degree left out,
    why. `--tp N` that cannot be used is an error."""
    fixed = isinstance(config.tensor_parallel, int)
    out: list[TensorLayout | None] = []
    skipped: list[str] = []
    blocks: list[Block] | None = None
    for t in config.tensor_degrees:
        if t == 1:
            out.append(None)
            continue
        try:
            grouped, groups = grouped_cluster(cluster, t)
            blocks = find_blocks(mg) if blocks is None else blocks
            graph = tensor_parallel_graph(mg, t, blocks)
            if not graph.blocks:
                why = "; ".join(dict.fromkeys(w for _, w in graph.unsplit)) or "no blocks found"
                raise PipeplanError(
                    f"tensor parallelism {t}: no attention or MLP block of the model splits "
                    f"{t} ways ({why})"
                )
        except PipeplanError as exc:
            if fixed:
                raise
            skipped.append(str(exc))
            continue
        layers = keep_together(mg, lg, [b.nodes for b in graph.blocks])
        out.append(TensorLayout(t, grouped, groups, graph, layers))
    return out, skipped


def tensor_job_plan(plan: Plan, cluster: Cluster, layout: TensorLayout) -> Plan:
    """`plan` (made on the grouped cluster) in `cluster`'s device ids (module docstring)."""
    first = {v: g[0] for v, g in layout.groups.items()}
    stages = [
        st.model_copy(
            update={
                "device": first[st.device],
                "node": cluster.node_of(first[st.device]),
                "tensor_parallel": layout.degree,
                "tensor_devices": list(layout.groups[st.device]),
            }
        )
        for st in plan.stages
    ]
    schedule = plan.schedule
    if schedule is not None:
        schedule = schedule.model_copy(
            update={
                "stage_device": [first[d] for d in schedule.stage_device],
                "actions": {first[d]: acts for d, acts in schedule.actions.items()},
            }
        )
    simulation = plan.simulation
    if simulation is not None:
        simulation = simulation.model_copy(
            update={
                "per_device": [
                    x.model_copy(update={"device": first[x.device]}) for x in simulation.per_device
                ]
            }
        )
    replicas = [[first[d] for d in rep] for rep in plan.replicas]
    used_groups = {d for rep in plan.replicas for d in rep} or {st.device for st in plan.stages}
    used = {m for v in used_groups for m in layout.groups[v]}
    job_layout = plan.layout.model_copy(
        update={
            "tensor_parallel": layout.degree,
            "devices_used": len(used),
            "devices_idle": [d for d in cluster.device_ids() if d not in used],
        }
    )
    return plan.model_copy(
        update={
            "explanation": [*plan.explanation, *explain_sharding(layout)],
            "cluster": cluster,
            "stages": stages,
            "schedule": schedule,
            "simulation": simulation,
            "replicas": replicas,
            "layout": job_layout,
            "tensor_groups": {g[0]: list(g) for v, g in layout.groups.items() if v in used_groups},
        }
    )


def explain_sharding(layout: TensorLayout) -> list[str]:
    """What the groups split and what every device of a group runs whole, and why."""
    g = layout.graph
    kinds = [b.kind for b in g.blocks]
    line = (
        f"tensor parallel {layout.degree}: {kinds.count('attention')} attention and "
        f"{kinds.count('mlp')} MLP blocks split over each group"
    )
    if not g.unsplit:
        return [line + "; everything else runs whole on every device of a group"]
    reasons = list(dict.fromkeys(why for _, why in g.unsplit))
    return [
        line
        + f"; {len(g.unsplit)} candidate block(s) replicated instead: "
        + "; ".join(reasons[:3])
        + (f" (+{len(reasons) - 3} more)" if len(reasons) > 3 else "")
    ]
