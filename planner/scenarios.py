"""What-if scenarios: clusters derived from a given one, and how each splits into replicas.

Pure functions of `cost.cluster.Cluster` values (no model, no solver, no files).

Scenarios (`build_scenarios`), each a cluster and a name; the given cluster is always the
first ("base"):

* `--add KIND:N[,N...]` (`parse_add`): one scenario per N, adding N devices of KIND
  (`add_devices`). Added devices first fill the nodes that already hold KIND, in order,
  up to `NODE_SIZE` (8) devices per node; the rest go to new nodes of up to 8 devices.
  A new node gets the intra-node link of the first node already holding KIND, else
  `default_intra_link(KIND)` (NVLink4 for H100/H200, NVLink3 for A100, PCIe4
  otherwise). Between nodes: the cluster's `inter_node_link`, or IB-HDR when the given
  cluster has a single node. A KIND already in the cluster is copied as the cluster
  defines it (a `like:` variant keeps its overrides, price included); otherwise it is the
  catalog entry. Each `--add` flag is one *sweep*, its N taken in increasing order.
* `--replace OLD=NEW` (`parse_replace`): every device of kind OLD becomes NEW, in place
  (same ids, same nodes, same links: a V100 box on PCIe stays on PCIe).
* `--link PRESET` (`parse_link`): the inter-node link becomes PRESET. On a cluster with a
  single node there is no inter-node link, so the scenario changes the node's intra-node
  link instead (the only link there is), and its name says so: `link NVLink3
  (intra-node)`.
* None of these: the default sweep doubles the most common kind (ties: the first in
  cluster order): x2 and x4 of its count, i.e. `--add KIND:c,3c` for c devices.

Device kinds are matched by name (`DeviceSpec.name`), case- and punctuation-insensitive.

Replicas (`replica_layouts`): data parallelism over r identical copies of one pipeline.
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
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from cost.cluster import Cluster, NodeSpec
from cost.devices import CATALOG, DeviceSpec, catalog_device, normalise_name, unknown_name_message
from cost.links import PRESETS, LinkSpec, preset_link
from planner.errors import PipeplanError

#: Devices per node when adding devices (an HGX/DGX box).
NODE_SIZE = 8

#: Inter-node link of a scenario that turns a single-node cluster into several nodes.
DEFAULT_INTER_LINK = "IB-HDR"


# ----------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class AddSweep:
    """`--add KIND:N,N,...`: add N devices of `kind` for each N (increasing)."""

    kind: str
    counts: tuple[int, ...]


@dataclass(frozen=True)
class Replace:
    """`--replace OLD=NEW`: every device of kind `old` becomes `new`."""

    old: str
    new: str


def _split_once(text: str, sep: str, flag: str, form: str) -> tuple[str, str]:
    if not isinstance(text, str) or text.count(sep) != 1:
        raise PipeplanError(f"malformed {flag} {text!r}: expected {form}")
    left, right = (part.strip() for part in text.split(sep))
    if not left or not right:
        raise PipeplanError(f"malformed {flag} {text!r}: expected {form}")
    return left, right


def parse_add(text: str) -> AddSweep:
    """'A100-80GB:1,2,4' -> AddSweep('A100-80GB', (1, 2, 4)); the kind is checked later."""
    form = "KIND:N[,N...], e.g. A100-80GB:1,2,4"
    kind, counts_text = _split_once(text, ":", "--add", form)
    counts: list[int] = []
    for part in counts_text.split(","):
        part = part.strip()
        if not part.isdigit():
            raise PipeplanError(f"malformed --add {text!r}: {part!r} is not a count ({form})")
        n = int(part)
        if n < 1:
            raise PipeplanError(f"malformed --add {text!r}: counts must be >= 1 (got {n})")
        counts.append(n)
    return AddSweep(kind, tuple(sorted(set(counts))))


def parse_replace(text: str) -> Replace:
    """'V100-32GB=H100-80GB' -> Replace('V100-32GB', 'H100-80GB')."""
    old, new = _split_once(text, "=", "--replace", "OLD=NEW, e.g. V100-32GB=H100-80GB")
    return Replace(old, new)


def parse_link(text: str) -> LinkSpec:
    """A link preset by name ('IB-NDR'); unknown names -> one-line PipeplanError."""
    return preset_link(text)


# ----------------------------------------------------------------------------- kinds


def kinds_in(cluster: Cluster) -> dict[str, DeviceSpec]:
    """Device kinds of the cluster by name, the first spec seen for each name."""
    out: dict[str, DeviceSpec] = {}
    for node in cluster.nodes:
        for dev in node.devices:
            out.setdefault(dev.name, dev)
    return out


def resolve_kind(cluster: Cluster, name: str, *, must_exist: bool = False) -> DeviceSpec:
    """The device spec for kind `name`: as the cluster defines it, else the catalog entry.

    `must_exist`: the kind must be in the cluster (for `--replace OLD`)."""
    present = kinds_in(cluster)
    key = normalise_name(name) if isinstance(name, str) else None
    for kind, spec in present.items():
        if normalise_name(kind) == key:
            return spec
    if must_exist:
        # Valid catalog name but absent, or not a device at all: say which.
        catalog_device(name)  # raises "unknown device" with suggestions
        raise PipeplanError(
            f"no {catalog_device(name).name} in cluster {cluster.name} "
            f"(it has {', '.join(present)})"
        )
    try:
        return catalog_device(name)
    except PipeplanError:
        raise PipeplanError(
            unknown_name_message(
                "device", name, [*present, *(k for k in CATALOG if k not in present)]
            )
        ) from None


def default_intra_link(kind: str) -> LinkSpec:
    """NVLink4 for H100/H200 (SXM), NVLink3 for A100, PCIe4 for anything else."""
    key = normalise_name(kind)
    if key.startswith("h100") and "pcie" not in key or key.startswith("h200"):
        return PRESETS["NVLink4"]
    if key.startswith("a100"):
        return PRESETS["NVLink3"]
    return PRESETS["PCIe4"]


def _node_link_for(cluster: Cluster | None, spec: DeviceSpec) -> LinkSpec:
    if cluster is not None:
        for node in cluster.nodes:
            if any(d.name == spec.name for d in node.devices):
                return node.link
    return default_intra_link(spec.name)


def _fresh_names(cluster: Cluster, n: int) -> list[str]:
    used = {node.name for node in cluster.nodes}
    names, i = [], len(cluster.nodes)
    while len(names) < n:
        if f"n{i}" not in used:
            names.append(f"n{i}")
            used.add(f"n{i}")
        i += 1
    return names


def _rebuild(cluster: Cluster, **update) -> Cluster:
    """A validated copy (so private lookups are rebuilt)."""
    data = cluster.model_dump() | update
    return Cluster.model_validate(data)


# ----------------------------------------------------------------------------- scenarios


def add_devices(cluster: Cluster, spec: DeviceSpec, n: int) -> Cluster:
    """`cluster` with `n` more devices `spec`: fill its nodes up to 8, then new nodes of 8."""
    if n < 1:
        return cluster
    left = n
    nodes: list[dict] = []
    for node in cluster.nodes:
        devices = list(node.devices)
        if left and any(d.name == spec.name for d in devices) and len(devices) < NODE_SIZE:
            take = min(left, NODE_SIZE - len(devices))
            devices += [spec] * take
            left -= take
        nodes.append({"name": node.name, "devices": devices, "link": node.link})
    link = _node_link_for(cluster, spec)
    fresh = _fresh_names(cluster, math.ceil(left / NODE_SIZE))
    for name in fresh:
        take = min(left, NODE_SIZE)
        nodes.append({"name": name, "devices": [spec] * take, "link": link})
        left -= take
    inter = cluster.inter_node_link
    if len(nodes) > 1 and inter is None:
        inter = PRESETS[DEFAULT_INTER_LINK]
    return _rebuild(cluster, nodes=nodes, inter_node_link=inter)


def replace_devices(cluster: Cluster, old: DeviceSpec, new: DeviceSpec) -> Cluster:
    """Every device named `old.name` becomes `new`; ids, nodes and links unchanged."""
    nodes = [
        {
            "name": node.name,
            "devices": [new if d.name == old.name else d for d in node.devices],
            "link": node.link,
        }
        for node in cluster.nodes
    ]
    return _rebuild(cluster, nodes=nodes)


def with_link(cluster: Cluster, link: LinkSpec) -> tuple[Cluster, bool]:
    """The inter-node link set to `link`; on one node, the intra-node link (second: True)."""
    if len(cluster.nodes) == 1:
        node = cluster.nodes[0]
        nodes = [{"name": node.name, "devices": list(node.devices), "link": link}]
        return _rebuild(cluster, nodes=nodes), True
    return _rebuild(cluster, inter_node_link=link), False


def homogeneous_cluster(
    spec: DeviceSpec, n: int, like: Cluster | None = None, name: str | None = None
) -> Cluster:
    """n devices `spec` in nodes of 8, linked as `add_devices` would link them to `like`."""
    if n < 1:
        raise PipeplanError(f"a cluster needs at least one device (got {n})")
    link = _node_link_for(like, spec)
    inter = None
    if n > NODE_SIZE:
        inter = (like.inter_node_link if like is not None else None) or PRESETS[DEFAULT_INTER_LINK]
    nodes = [
        {"name": f"n{i}", "devices": [spec] * min(NODE_SIZE, n - i * NODE_SIZE), "link": link}
        for i in range(math.ceil(n / NODE_SIZE))
    ]
    return Cluster.model_validate(
        {"name": name or f"{n}x {spec.name}", "nodes": nodes, "inter_node_link": inter}
    )


def device_kinds(cluster: Cluster) -> str:
    """'4x A100-80GB + 2x V100-32GB' (kinds by name, in order of first appearance)."""
    counts: Counter[str] = Counter(d.name for node in cluster.nodes for d in node.devices)
    return " + ".join(f"{n}x {kind}" for kind, n in counts.items())


@dataclass
class Scenario:
    """One cluster to plan. `sweep` groups the rows of one --add flag; `added` counts the
    devices added to the base cluster (for the marginal gain)."""

    name: str
    cluster: Cluster
    sweep: str
    added: int = 0
    note: str = ""


def build_scenarios(
    cluster: Cluster,
    adds: list[str] | None = None,
    replaces: list[str] | None = None,
    links: list[str] | None = None,
    *,
    default_sweep: bool = True,
) -> list[Scenario]:
    """The base cluster, then each --add sweep, each --replace, each --link (see module
    doc); with none of them, the default sweep unless `default_sweep` is False."""
    sweeps = [parse_add(a) for a in adds or []]
    swaps = [parse_replace(r) for r in replaces or []]
    presets = [parse_link(link) for link in links or []]
    out = [Scenario("base", cluster, "base")]
    if default_sweep and not (sweeps or swaps or presets):
        counts = Counter(d.name for node in cluster.nodes for d in node.devices)
        kind, c = max(counts.items(), key=lambda kv: kv[1])  # first in order on ties
        sweeps = [AddSweep(kind, (c, 3 * c))]
    for sweep in sweeps:
        spec = resolve_kind(cluster, sweep.kind)
        label = f"+{spec.name}"
        for n in sweep.counts:
            out.append(Scenario(f"+{n} {spec.name}", add_devices(cluster, spec, n), label, n))
    for swap in swaps:
        old = resolve_kind(cluster, swap.old, must_exist=True)
        new = resolve_kind(cluster, swap.new)
        out.append(
            Scenario(
                f"{old.name}->{new.name}",
                replace_devices(cluster, old, new),
                f"{old.name}->{new.name}",
            )
        )
    for link in presets:
        derived, intra = with_link(cluster, link)
        name = f"link {link.name}" + (" (intra-node)" if intra else "")
        note = "one node: the intra-node link changed" if intra else ""
        out.append(Scenario(name, derived, name, note=note))
    return out


# ----------------------------------------------------------------------------- replicas


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
    def devices_per_replica(self) -> int:
        return self.sub.num_devices

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


def ring_link_seconds(
    cluster: Cluster, layout: ReplicaLayout, sub_device: str, nbytes: float
) -> tuple[float, float]:
    """(alpha, beta) of the slowest hop of the all-reduce ring of `sub_device` across
    replicas: the hop whose link takes longest to move `nbytes`."""
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
    if worst is None:
        return 0.0, math.inf
    return worst.latency_us * 1e-6, worst.effective_bytes_per_s
