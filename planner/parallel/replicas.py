"""Data-parallel replica layouts: r identical copies of one pipeline inside a cluster.

`replica_layouts`: data parallelism over r identical copies of one pipeline.
Nodes are grouped into classes of identical nodes (same device list, same link). A
layout takes `a` (groups of whole nodes) and `b` (slices within a node), r = a x b: each
replica holds floor(n_c / a) nodes of every class c, and from each such node floor(k / b)
of each kind it holds k of. Replicas are disjoint; devices left over stay idle (so adding
a device never removes a layout: every layout of a cluster is still there, with replicas
at least as large, on the cluster with one more device of a kind it holds). Besides,
single-node replicas of every shape a node slice takes are packed into every node with
the same link as often as they fit, whether or not the nodes are identical (8 + 2
devices: ten one-device replicas). For each replica shape the most replicas are kept;
fewer are the first r of them. Clusters with per-pair link `overrides` are planned as a
single replica (r = 1) only.

`slowest_ring_link` finds the slowest hop of each stage's gradient all-reduce ring across
replicas, which `cost.collectives` prices (Patarasuk & Yuan, J. Parallel Distrib. Comput.
69(2), 2009).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cost.cluster import Cluster, NodeSpec
from cost.devices import DeviceSpec
from cost.links import LinkSpec


@dataclass
class ReplicaLayout:
    """r disjoint identical replicas of `sub` inside a cluster.

    `sub` is a standalone cluster (nodes n0, n1, ...); `replicas[i][sub_id]` is the id in
    the scenario's cluster of replica i's device `sub_id`. Replicas are listed in ring
    order for the gradient all-reduce."""

    replicas_count: int
    sub: Cluster
    replicas: list[dict[str, str]] = field(default_factory=list)
    whole_nodes: int = 1
    slices: int = 1

    def first(self, r: int) -> ReplicaLayout:
        """The same layout with only its first r replicas (the others idle)."""
        if not 1 <= r <= self.replicas_count:
            raise ValueError(f"r must be in 1..{self.replicas_count} (got {r})")
        return ReplicaLayout(r, self.sub, self.replicas[:r], self.whole_nodes, self.slices)

    @property
    def description(self) -> str:
        return f"{self.replicas_count} x ({self.sub.summary().split(': ', 1)[1]})"


def _node_key(node: NodeSpec) -> str:
    return "|".join(d.model_dump_json() for d in node.devices) + "#" + node.link.model_dump_json()


def _slice(node: NodeSpec, b: int) -> list[list[int]]:
    """Device indices of each of the b slices of a node: per kind, floor(k / b) devices."""
    by_kind: dict[str, list[int]] = {}
    for i, d in enumerate(node.devices):
        by_kind.setdefault(d.model_dump_json(), []).append(i)
    # Kinds in order of first appearance, each kind's block together: every slice lists
    # the same kinds in the same order, so slice position p is the same kind everywhere.
    slices: list[list[int]] = [[] for _ in range(b)]
    for idx in by_kind.values():
        q = len(idx) // b
        for j in range(b):
            slices[j].extend(idx[j * q : (j + 1) * q])
    return slices


def replica_layouts(cluster: Cluster, *, data_parallel: bool = True) -> list[ReplicaLayout]:
    """The ways to run r identical replicas of one pipeline on `cluster` (see module doc).

    Always starts with r = 1 on the whole cluster. For each distinct replica shape only
    the layout with the most replicas is kept; `ReplicaLayout.first(r)` gives any fewer
    (a fixed global batch may need r to divide the micro-batch count)."""
    whole = ReplicaLayout(1, cluster, [{d: d for d in cluster.device_ids()}])
    if not data_parallel or cluster.overrides or cluster.num_devices < 2:
        return [whole]
    classes: dict[str, list[NodeSpec]] = {}
    for node in cluster.nodes:
        classes.setdefault(_node_key(node), []).append(node)
    max_a = max(len(v) for v in classes.values())
    max_b = max(len(n.devices) for n in cluster.nodes)
    best: dict[str, ReplicaLayout] = {}
    for a in range(1, max_a + 1):
        for b in range(1, max_b + 1):
            if a * b < 2:
                continue
            layout = _layout(cluster, classes, a, b)
            if layout is None:
                continue
            _keep(best, layout)
    for layout in _packings(cluster):
        _keep(best, layout)
    return [whole, *sorted(best.values(), key=lambda x: (x.replicas_count, -x.sub.num_devices))]


def _keep(best: dict[str, ReplicaLayout], layout: ReplicaLayout) -> None:
    if layout.replicas_count < 2:
        return
    key = layout.sub.model_dump_json(exclude={"name"})
    if key not in best or layout.replicas_count > best[key].replicas_count:
        best[key] = layout


def _packings(cluster: Cluster) -> list[ReplicaLayout]:
    """Single-node replicas of every shape a node slice can take, packed into every node
    with that link as many times as its devices allow (nodes need not be identical: a
    node of 8 and a node of 2 hold 10 one-device replicas)."""
    shapes: dict[str, tuple[list[DeviceSpec], LinkSpec]] = {}
    for node in cluster.nodes:
        for b in range(1, len(node.devices) + 1):
            chosen = _slice(node, b)[0]
            if chosen:
                devs = [node.devices[i] for i in chosen]
                key = (
                    "|".join(d.model_dump_json() for d in devs) + "#" + node.link.model_dump_json()
                )
                shapes.setdefault(key, (devs, node.link))
    out = []
    for devs, link in shapes.values():
        need: dict[str, int] = {}
        for d in devs:
            need[d.model_dump_json()] = need.get(d.model_dump_json(), 0) + 1
        replicas: list[dict[str, str]] = []
        for node in cluster.nodes:
            if node.link != link:
                continue
            have: dict[str, list[int]] = {}
            for i, d in enumerate(node.devices):
                have.setdefault(d.model_dump_json(), []).append(i)
            copies = min(len(have.get(k, [])) // n for k, n in need.items())
            for c in range(copies):
                taken = {k: have[k][c * n : (c + 1) * n] for k, n in need.items()}
                mapping = {}
                for pos, d in enumerate(devs):
                    mapping[f"n0.{pos}"] = f"{node.name}.{taken[d.model_dump_json()].pop(0)}"
                replicas.append(mapping)
        sub = Cluster.model_validate(
            {"name": "replica", "nodes": [{"name": "n0", "devices": devs, "link": link}]}
        )
        out.append(ReplicaLayout(len(replicas), sub, replicas, whole_nodes=1, slices=len(replicas)))
    return out


def _layout(
    cluster: Cluster, classes: dict[str, list[NodeSpec]], a: int, b: int
) -> ReplicaLayout | None:
    # Per replica (i_a, i_b): for each class, nodes [i_a q, (i_a + 1) q), slice i_b of each.
    sub_nodes: list[dict] = []
    replicas: list[dict[str, str]] = [{} for _ in range(a * b)]
    k = 0
    for nodes in classes.values():
        q = len(nodes) // a
        if q == 0:
            continue
        slices_by_node = [_slice(node, b) for node in nodes]
        if not slices_by_node[0][0]:
            continue
        for j in range(q):  # j-th node of this class within a replica
            template = nodes[j]
            sub_name = f"n{k}"
            k += 1
            sub_nodes.append(
                {
                    "name": sub_name,
                    "devices": [template.devices[i] for i in slices_by_node[j][0]],
                    "link": template.link,
                }
            )
            for ia in range(a):
                node_index = ia * q + j
                node = nodes[node_index]
                for ib in range(b):
                    chosen = slices_by_node[node_index][ib]
                    for pos, i in enumerate(chosen):
                        replicas[ia * b + ib][f"{sub_name}.{pos}"] = f"{node.name}.{i}"
    if not sub_nodes:
        return None
    inter = cluster.inter_node_link if len(sub_nodes) > 1 else None
    sub = Cluster.model_validate({"name": "replica", "nodes": sub_nodes, "inter_node_link": inter})
    return ReplicaLayout(a * b, sub, replicas, whole_nodes=a, slices=b)


def slowest_ring_link(
    cluster: Cluster, layout: ReplicaLayout, sub_device: str, nbytes: float = 25 * 2**20
) -> LinkSpec | None:
    """The hop of the ring of `sub_device` across the layout's replicas that takes longest
    to move `nbytes` (None when the ring has no hop: one replica)."""
    ring = [rep[sub_device] for rep in layout.replicas]
    worst: LinkSpec | None = None
    worst_t = -1.0
    for i, dev in enumerate(ring):
        nxt = ring[(i + 1) % len(ring)]
        if nxt == dev:
            continue
        link = cluster.link_between(dev, nxt)
        t = link.transfer_seconds(max(1, int(nbytes)))
        if t > worst_t:
            worst, worst_t = link, t
    return worst
