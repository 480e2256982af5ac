"""Group operators into layers: the units the partitioner places.

Three sources, in order of preference:

1. **User overrides** (`--layers FILE.yaml`: `{layer_name: [node-name regex, ...]}`):
   matching nodes go to that layer, first match wins.
2. **Module scopes** written by the exporter (`pkg.torch.onnx.name_scopes` metadata or
   `/blocks.3/attn/MatMul` names). Starting from the top-level modules, a group heavier
   than `max_layer_share` of the model's work is split into its child modules, until no
   group is too heavy or none can be split (the coarsest grouping that still balances;
   `--layer-depth N` fixes the depth instead). Ops that sit directly in a split module
   (a residual Add) join the group of the op before them.
3. **Structure**, when there are no scopes: cut the topologically ordered operators
   wherever a single tensor carries all live data forward (the "articulation points" of a
   series-parallel network, where a pipeline cut costs one tensor), and merge segments
   with no compute operator into the segment before.

Whatever the source, groups are made convex: a strongly connected component of the layer
graph (a layer feeding another that feeds it back) is merged into one layer, so a
placement that respects layer order respects operator order. A tensor of unknown shape
between two groups counts as an edge both ways, so its producer and consumers (and all
between them) become one layer: no stage boundary is ever priced at 0 bytes for want of
a shape (`LayerGraph.warnings` names the tensors).
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import networkx as nx

from cost.errors import PipeplanError
from cost.files import parse_yaml, read_text
from planner.config import DEFAULT_MAX_LAYER_SHARE
from planner.graph.load import ModelGraph

#: FLOPs per byte used to weigh memory traffic against compute when grouping
#: (a middle-of-the-road ridge point; see shared/context.md "Roofline").
GROUPING_RIDGE_FLOPS_PER_BYTE = 10.0


@dataclass
class Layer:
    """A unit of placement: operators that always live on the same stage."""

    index: int
    name: str
    nodes: list[str]
    flops: int = 0
    backward_flops: int = 0
    weight_grad_flops: int = 0
    bytes_moved: int = 0
    params: list[str] = field(default_factory=list)
    param_count: int = 0
    param_bytes: int = 0
    buffer_bytes: int = 0
    activation_bytes: int = 0
    output_bytes: int = 0
    #: the activations backward needs, whose bytes `activation_bytes` sums
    saved: list[str] = field(default_factory=list)


@dataclass
class LayerGraph:
    """Layers in topological order and the tensors flowing between them."""

    layers: list[Layer]
    dag: nx.DiGraph  # layer index -> layer index, edge attr `tensors`: {name: bytes}
    node_layer: dict[str, int]
    input_consumers: dict[str, list[int]]  # graph input -> layers that read it
    output_producers: dict[str, int]  # graph output -> layer that writes it
    source: str  # "scopes", "structure", "overrides+scopes", ...
    #: tensors of unknown shape that kept groups together (no cut may price them)
    unknown_shape_tensors: list[str] = field(default_factory=list)

    @property
    def warnings(self) -> list[str]:
        if not self.unknown_shape_tensors:
            return []
        names = self.unknown_shape_tensors
        return [
            f"{len(names)} tensor(s) of unknown shape between operators (e.g. {names[0]}): "
            "their layers are kept on one stage, as a cut through them cannot be priced "
            "(bind the dimensions they depend on, or give --input-shape)"
        ]

    def layer_named(self, name: str) -> Layer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)


def load_layer_overrides(path: str | Path) -> dict[str, list[str]]:
    """Read `{layer_name: [regex, ...]}` from YAML; one clear error line when malformed."""
    p = Path(path)
    data = parse_yaml(read_text(p, "layer override file"), f"layer override file {p}")
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, list) and all(isinstance(r, str) for r in v)
        for k, v in data.items()
    ):
        raise PipeplanError(
            f"layer override file {p} must map layer names to lists of node-name regexes"
        )
    for name, patterns in data.items():
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise PipeplanError(
                    f"layer override '{name}': bad regex '{pattern}' ({exc})"
                ) from None
    return data


def group_layers(
    mg: ModelGraph,
    *,
    max_layer_share: float = DEFAULT_MAX_LAYER_SHARE,
    depth: int | None = None,
    overrides: dict[str, list[str]] | None = None,
) -> LayerGraph:
    """Group `mg`'s working operators into convex layers (see module docstring)."""
    ops = mg.op_nodes
    if not ops:
        raise PipeplanError(f"model {mg.path} has no operators to place")
    weight = {n: _work(mg, n) for n in ops}
    keys: dict[str, tuple[str, ...]] = {}
    sources = []
    if overrides:
        compiled = [(name, [re.compile(p) for p in pats]) for name, pats in overrides.items()]
        for n in ops:
            for name, patterns in compiled:
                if any(p.search(n) for p in patterns):
                    keys[n] = ("@" + name,)
                    break
        sources.append("overrides")
    rest = [n for n in ops if n not in keys]
    scopes = {n: mg.graph.nodes[n]["scope"] for n in rest}
    if rest and any(scopes.values()):
        keys.update(_group_by_scope(rest, scopes, weight, max_layer_share, depth))
        sources.append("scopes")
    elif rest:
        keys.update(_group_by_structure(mg, rest))
        sources.append("structure")
    return _build_layer_graph(mg, ops, keys, "+".join(sources))


def keep_together(mg: ModelGraph, lg: LayerGraph, groups: list[list[str]]) -> LayerGraph:
    """`lg` with each of `groups` (operator names: a tensor-parallel block) inside one
    layer: the layers a group touches are merged, and whatever lies between them (made
    convex as any grouping). `lg` itself when no group spans layers."""
    root = list(range(len(lg.layers)))

    def find(i: int) -> int:
        while root[i] != i:
            root[i] = root[root[i]]
            i = root[i]
        return i

    for nodes in groups:
        touched = sorted({find(lg.node_layer[n]) for n in nodes if n in lg.node_layer})
        for other in touched[1:]:
            root[other] = touched[0]
    if all(find(i) == i for i in range(len(root))):
        return lg
    keys = {n: ("@" + lg.layers[find(i)].name,) for n, i in lg.node_layer.items()}
    return _build_layer_graph(mg, mg.op_nodes, keys, lg.source + "+blocks")


def _work(mg: ModelGraph, node: str) -> float:
    cost = mg.cost(node)
    return cost.flops + GROUPING_RIDGE_FLOPS_PER_BYTE * cost.bytes_moved


def _group_by_scope(ops, scopes, weight, max_share, depth) -> dict[str, tuple[str, ...]]:
    total = sum(weight[n] for n in ops) or 1.0
    if depth is not None:
        keys = {n: scopes[n][:depth] for n in ops}
    else:
        keys = {n: scopes[n][:1] for n in ops}
        while True:
            group_weight: dict[tuple[str, ...], float] = defaultdict(float)
            for n in ops:
                group_weight[keys[n]] += weight[n]
            changed = False
            for key, w in sorted(group_weight.items(), key=lambda kv: -kv[1]):
                if w <= max_share * total or not key:
                    continue
                members = [n for n in ops if keys[n] == key]
                children = {scopes[n][: len(key) + 1] for n in members}
                if len(children) <= 1 and all(len(scopes[n]) <= len(key) for n in members):
                    continue
                if len(children - {key}) == 1 and all(len(scopes[n]) > len(key) for n in members):
                    # A single child (e.g. a ModuleList wrapper): descend without splitting.
                    for n in members:
                        keys[n] = scopes[n][: len(key) + 1]
                    changed = True
                    continue
                if len(children) <= 1:
                    continue
                for n in members:
                    keys[n] = scopes[n][: len(key) + 1]
                changed = True
            if not changed:
                break
    # Ops directly inside a split module, or at the root, join the op before them.
    group_keys = set(keys.values())
    parents = {k[:i] for k in group_keys for i in range(len(k))}
    orphan = {k for k in group_keys if k in parents or not k}
    resolved: dict[str, tuple[str, ...]] = {}
    previous: tuple[str, ...] | None = None
    pending: list[str] = []
    for n in ops:
        if keys[n] in orphan:
            if previous is None:
                pending.append(n)
            else:
                resolved[n] = previous
        else:
            previous = keys[n]
            resolved[n] = previous
            for p in pending:
                resolved[p] = previous
            pending.clear()
    for p in pending:  # no scoped op at all before or after: keep own key
        resolved[p] = keys[p] or ("(root)",)
    return resolved


def _group_by_structure(mg: ModelGraph, ops: list[str]) -> dict[str, tuple[str, ...]]:
    """Cut where a single producer holds every live tensor (see module docstring)."""
    position = {n: i for i, n in enumerate(ops)}
    opset = set(ops)
    last_use: dict[str, int] = {}
    for n in ops:
        later = [position[s] for s in mg.graph.successors(n) if s in opset]
        last_use[n] = max(later, default=-1)
    segments: list[list[str]] = [[]]
    live: set[str] = set()
    for i, n in enumerate(ops):
        segments[-1].append(n)
        live = {p for p in live if last_use[p] > i}
        if last_use[n] > i:
            live.add(n)
        if len(live) <= 1 and i < len(ops) - 1:
            segments.append([])
    merged: list[list[str]] = []
    for seg in segments:
        has_compute = any(mg.cost(n).kind == "compute" for n in seg)
        if (
            merged
            and not has_compute
            or merged
            and not any(mg.cost(n).kind == "compute" for n in merged[-1])
        ):
            merged[-1].extend(seg)
        else:
            merged.append(list(seg))
    keys = {}
    for i, seg in enumerate(merged):
        head = next(
            (mg.graph.nodes[n]["op_type"] for n in seg if mg.cost(n).kind == "compute"),
            mg.graph.nodes[seg[0]]["op_type"],
        )
        for n in seg:
            keys[n] = (f"seg{i:03d}_{head}",)
    return keys


def _build_layer_graph(mg: ModelGraph, ops: list[str], keys: dict, source: str) -> LayerGraph:
    position = {n: i for i, n in enumerate(ops)}
    groups: dict[tuple[str, ...], list[str]] = defaultdict(list)
    for n in ops:
        groups[keys[n]].append(n)
    group_of = {n: keys[n] for n in ops}
    quotient = nx.DiGraph()
    quotient.add_nodes_from(groups)
    opset = set(ops)
    unknown: list[str] = []
    for u, v in mg.graph.edges():
        if u in opset and v in opset and group_of[u] != group_of[v]:
            quotient.add_edge(group_of[u], group_of[v])
            blind = [t for t in mg.graph.edges[u, v]["tensors"] if _unknown(mg, t)]
            if blind:  # a cut here cannot be priced: the edge back merges both groups
                quotient.add_edge(group_of[v], group_of[u])
                unknown += [t for t in blind if t not in unknown]
    # Convexity: merge strongly connected components.
    condensed = nx.condensation(quotient)
    merged: list[list[str]] = []
    names: list[str] = []
    for comp in condensed.nodes:
        members = sorted(condensed.nodes[comp]["members"], key=lambda k: position[groups[k][0]])
        merged.append(sorted((n for k in members for n in groups[k]), key=position.__getitem__))
        names.append("+".join(_key_name(k) for k in members))
    order = sorted(range(len(merged)), key=lambda i: position[merged[i][0]])
    # Topological order of the condensed graph, ties broken by first operator.
    comp_dag = nx.DiGraph()
    comp_dag.add_nodes_from(range(len(merged)))
    node_comp = {n: i for i, nodes in enumerate(merged) for n in nodes}
    for u, v in mg.graph.edges():
        if u in opset and v in opset and node_comp[u] != node_comp[v]:
            comp_dag.add_edge(node_comp[u], node_comp[v])
    rank = {c: i for i, c in enumerate(order)}
    topo = list(nx.lexicographical_topological_sort(comp_dag, key=rank.__getitem__))
    layers: list[Layer] = []
    node_layer: dict[str, int] = {}
    used_names: set[str] = set()
    for index, comp in enumerate(topo):
        name = names[comp]
        if name in used_names:
            name = f"{name}#{index}"
        used_names.add(name)
        layers.append(Layer(index=index, name=name, nodes=merged[comp]))
        for n in merged[comp]:
            node_layer[n] = index
    dag = nx.DiGraph()
    dag.add_nodes_from(range(len(layers)))
    _fill_layer_costs(mg, layers, node_layer, dag)
    input_consumers: dict[str, list[int]] = defaultdict(list)
    for n in ops:
        for t in mg.graph.nodes[n]["inputs"]:
            if t in mg.inputs and node_layer[n] not in input_consumers[t]:
                input_consumers[t].append(node_layer[n])
    output_producers = {}
    for n in ops:
        for t in mg.graph.nodes[n]["outputs"]:
            if t in mg.outputs:
                output_producers[t] = node_layer[n]
    return LayerGraph(
        layers, dag, node_layer, dict(input_consumers), output_producers, source, unknown
    )


def _unknown(mg: ModelGraph, tensor: str) -> bool:
    """A tensor whose size the planner does not know (no static shape)."""
    info = mg.tensors.get(tensor)
    return info is None or info.shape is None


def _key_name(key: tuple[str, ...]) -> str:
    if key and key[0].startswith("@"):
        return key[0][1:]
    return ".".join(key) if key else "(root)"


def _fill_layer_costs(
    mg: ModelGraph, layers: list[Layer], node_layer: dict[str, int], dag: nx.DiGraph
) -> None:
    """Sum operator costs per layer; record tensors crossing layers (once per consumer layer)."""
    static_producers = {n for n, d in mg.graph.nodes(data=True) if d["folded"]}
    produced_by = {}
    for n, d in mg.graph.nodes(data=True):
        for t in d["outputs"]:
            produced_by[t] = n
    for layer in layers:
        saved: set[str] = set()
        params: set[str] = set()
        for n in layer.nodes:
            data = mg.graph.nodes[n]
            cost = data["cost"]
            layer.flops += cost.flops
            layer.backward_flops += cost.backward_flops
            layer.weight_grad_flops += cost.weight_grad_flops
            layer.bytes_moved += cost.bytes_moved
            inputs = data["inputs"]
            for pos in cost.saved_inputs:
                if pos < len(inputs) and inputs[pos]:
                    saved.add(inputs[pos])
            if cost.saves_output:
                saved.update(data["outputs"][:1])
            for t in inputs:  # a weight computed from parameters (Transpose(W)) is theirs
                params.update(mg.weights.sources.get(t, ()))
        for t in sorted(saved):
            if t in mg.param_like or produced_by.get(t) in static_producers or t in mg.constants:
                continue
            info = mg.tensors.get(t)
            layer.activation_bytes += info.nbytes if info else 0
            layer.saved.append(t)
        layer.params = sorted(params)
        layer.param_count = sum(mg.params[p].numel for p in params if mg.params[p].trainable)
        layer.param_bytes = sum(mg.params[p].nbytes for p in params if mg.params[p].trainable)
        layer.buffer_bytes = sum(mg.params[p].nbytes for p in params if not mg.params[p].trainable)
    for layer in layers:
        crossing: dict[str, int] = {}
        for n in layer.nodes:
            for succ in mg.graph.successors(n):
                dst = node_layer.get(succ)
                if dst is None or dst == layer.index:
                    continue
                for t in mg.graph.edges[n, succ]["tensors"]:
                    nbytes = mg.tensors.get(t).nbytes if t in mg.tensors else 0
                    if dag.has_edge(layer.index, dst):
                        dag.edges[layer.index, dst]["tensors"][t] = nbytes
                    else:
                        dag.add_edge(layer.index, dst, tensors={t: nbytes})
                    crossing[t] = nbytes
            for t in mg.graph.nodes[n]["outputs"]:
                if t in mg.outputs and t in mg.tensors:
                    crossing[t] = mg.tensors[t].nbytes
        layer.output_bytes = sum(crossing.values())
