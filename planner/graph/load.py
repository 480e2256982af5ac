"""Load an ONNX model into a `networkx.DiGraph` of priced operators.

Data path: `onnx_io` reads the file (never its weight data) -> `shapes` binds the free
dimensions and infers every tensor's shape -> `params` finds the weights -> `fold` marks
shape arithmetic static and computes its values -> this module builds the graph ->
`price` prices every node with the cost model.

Nodes are ONNX operators (keyed by a unique name, `onnx_io.unique_node_names`) holding
`op_type`, `domain`, `inputs`, `outputs`, `folded`, `scope` (`scopes.scope_of`) and
`order` (file position), plus what `price` adds (`cost`, `input_roles`, `signature`). An
edge u -> v carries the tensors u produces and v consumes (`tensors`: names, `bytes`:
their total size). Subgraph operators (If, Loop, Scan) are opaque nodes.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import networkx as nx
import numpy as np
import onnx
from onnx import numpy_helper

from cost.opcost import OpCost
from cost.tensor import TensorInfo
from cost.timings import phase
from planner.graph.aliases import AliasReport, separate_merged_weights
from planner.graph.constants import folded_constants
from planner.graph.fold import evaluate_folded, folded_nodes
from planner.graph.onnx_io import (
    constant_value,
    external_data_location,
    load_model_proto,
    np_to_onnx_dtype,
    unique_node_names,
    untrained_tensors,
)
from planner.graph.params import Param, WeightViews, find_params, numel_of, weight_views
from planner.graph.price import price_graph
from planner.graph.scopes import scope_of
from planner.graph.shape_fallback import fallback_shapes
from planner.graph.shapes import (
    ShapeBindings,
    bind_input_shapes,
    infer_shapes,
    real_graph_inputs,
    tensor_info_from_value_info,
)

#: Constants up to this many elements are decoded (for Reshape targets and the like).
SMALL_CONSTANT_ELEMENTS = 4096
#: Rounds of folding and shape fallback: folded values feed shapes, which feed values.
FOLD_ROUNDS = 4


@dataclass
class ModelGraph:
    """An ONNX model as the planner sees it: operators, tensors, parameters, costs."""

    path: Path
    model: onnx.ModelProto
    graph: nx.DiGraph
    tensors: dict[str, TensorInfo]
    params: dict[str, Param]
    inputs: list[str]
    outputs: list[str]
    constants: dict[str, np.ndarray]
    opset: int
    producer: str
    graph_hash: str
    symbols: dict[str, int]
    has_weights: bool
    #: parameters and what is computed from them alone, and the nodes computing that
    weights: WeightViews = field(default_factory=lambda: WeightViews({}, set()))
    #: weights the exporter merged with equal ones, and whether they were separated
    aliases: AliasReport = field(default_factory=AliasReport)
    #: float initializers that are folded constants (masks, tables): name -> evidence
    folded_constants: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def param_like(self) -> set[str]:
        """Parameters and tensors computed from them alone (`Transpose(W)` is W)."""
        return self.weights.tensors

    @property
    def op_nodes(self) -> list[str]:
        """Nodes that do work per micro-batch, in topological (file) order: not folded
        shape arithmetic, not weight computations (placed with their consumers)."""
        return [
            n for n, d in self.graph.nodes(data=True) if not d["folded"] and not d["weight_derived"]
        ]

    def proto(self, node: str) -> onnx.NodeProto:
        """The ONNX node behind graph node `node` (its planner name may differ from the
        proto's: unnamed nodes are `<op>_<index>`)."""
        return self.model.graph.node[self.graph.nodes[node]["order"]]

    def cost(self, node: str) -> OpCost:
        return self.graph.nodes[node]["cost"]

    @property
    def trainable_params(self) -> list[Param]:
        return [p for p in self.params.values() if p.trainable]

    @property
    def param_count(self) -> int:
        return sum(p.numel for p in self.trainable_params)

    @property
    def param_bytes(self) -> int:
        return sum(p.nbytes for p in self.trainable_params)

    @property
    def forward_flops(self) -> int:
        return sum(d["cost"].flops for _, d in self.graph.nodes(data=True))


@dataclass
class _Statics:
    """What is known about a graph's tensors before any operator runs."""

    tensors: dict[str, TensorInfo]
    constants: dict[str, np.ndarray]  # decoded values of small static tensors
    initializers: set[str]
    constant_tensors: dict[str, onnx.TensorProto]  # Constant nodes holding a tensor
    has_weights: bool


def load_graph(
    path: str | os.PathLike[str],
    bindings: ShapeBindings | None = None,
    *,
    keep_merged_weights: bool = False,
) -> ModelGraph:
    """Load `path` into a `ModelGraph`: separate the weights the exporter merged (unless
    `keep_merged_weights`, `planner.graph.aliases`), bind shapes, infer, fold, price every
    operator."""
    bindings = bindings or ShapeBindings()
    path = Path(path)
    with phase("load"):
        return _load_graph(path, bindings, keep_merged_weights)


def _load_graph(path: Path, bindings: ShapeBindings, keep_merged_weights: bool) -> ModelGraph:
    model, aliases = separate_merged_weights(load_model_proto(path), keep=keep_merged_weights)
    symbols = bind_input_shapes(model, bindings)
    inferred, warnings = infer_shapes(model)
    g = inferred.graph
    known = _statics(g, path.parent)
    nodes = list(g.node)
    names = unique_node_names(nodes)
    folded = folded_constants(g.initializer, path.parent)
    untrained = untrained_tensors(model.graph) | frozenset(folded)
    params = find_params(nodes, names, g.initializer, known.constant_tensors, untrained)
    static_before = known.initializers | set(known.constants) | set(known.constant_tensors)
    folded_ops = folded_nodes(nodes, names, set(params), static_before)
    _fold(nodes, names, folded_ops, known)
    weights = weight_views(
        nodes, names, set(params), folded_ops, set(known.constants) | known.initializers
    )
    graph = _build_graph(nodes, names, folded_ops, weights.nodes, known.tensors)
    static = known.initializers | set(known.constants) | set(known.constant_tensors)
    with phase("price"):
        warnings += price_graph(
            graph, nodes, names, known.tensors, known.constants, weights.tensors, static
        )
    if aliases.summary():
        warnings.insert(0, aliases.summary())
    folded = {t: why for t, why in folded.items() if t in params}
    if folded:
        first = next(iter(folded))
        warnings.append(
            f"{len(folded)} initializer(s) are constants the exporter folded (e.g. {first}: "
            f"{folded[first]}, {sum(params[t].numel for t in folded):,} values): held as "
            "buffers, never trained"
        )
    inlined = [p for p in params.values() if p.source == "constant" and p.numel > 65536]
    if inlined:
        warnings.append(
            f"{len(inlined)} large float tensor(s) of Constant nodes (e.g. {inlined[0].name}, "
            f"{sum(p.nbytes for p in inlined) / 1e6:.1f} MB) are treated as constants, not "
            "trained: exporters write parameters as initializers"
        )
    opset = next((o.version for o in inferred.opset_import if o.domain in ("", "ai.onnx")), 0)
    return ModelGraph(
        path=path,
        model=model,
        graph=graph,
        tensors=known.tensors,
        params=params,
        inputs=[vi.name for vi in real_graph_inputs(model)],
        outputs=[vi.name for vi in model.graph.output],
        constants=known.constants,
        opset=opset,
        producer=f"{model.producer_name} {model.producer_version}".strip(),
        graph_hash=graph_hash(model),
        symbols=symbols,
        has_weights=known.has_weights,
        weights=weights,
        aliases=aliases,
        folded_constants=folded,
        warnings=warnings,
    )


def _statics(g: onnx.GraphProto, folder: Path) -> _Statics:
    """Shapes from inference, initializers and Constant nodes; small values decoded."""
    tensors: dict[str, TensorInfo] = {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        info = tensor_info_from_value_info(vi)
        if info is not None:
            tensors[vi.name] = info
    known = _Statics(tensors, {}, set(), {}, True)
    for t in g.initializer:
        known.initializers.add(t.name)
        tensors[t.name] = TensorInfo(t.name, tuple(t.dims), t.data_type)
        if external_data_location(t) is not None:
            if not (folder / external_data_location(t)).exists():
                known.has_weights = False
        elif numel_of(t.dims) <= SMALL_CONSTANT_ELEMENTS:
            known.constants[t.name] = numpy_helper.to_array(t)
    for node in g.node:
        if node.op_type != "Constant" or not node.output:
            continue
        out = node.output[0]
        value = constant_value(node)
        if isinstance(value, onnx.TensorProto):
            known.constant_tensors[out] = value
            tensors[out] = TensorInfo(out, tuple(value.dims), value.data_type)
            if (
                numel_of(value.dims) <= SMALL_CONSTANT_ELEMENTS
                and external_data_location(value) is None
            ):
                known.constants[out] = numpy_helper.to_array(value)
        elif value is not None:
            known.constants[out] = np.asarray(value)
            tensors[out] = TensorInfo(
                out, known.constants[out].shape, np_to_onnx_dtype(known.constants[out])
            )
    return known


def _fold(nodes, names, folded: set[str], known: _Statics) -> None:
    """Evaluate folded nodes and fill shapes inference left unknown, until neither moves."""
    for _ in range(FOLD_ROUNDS):
        count = len(known.constants)
        evaluate_folded(nodes, names, folded, known.tensors, known.constants)
        for tensor, value in known.constants.items():
            if tensor not in known.tensors:
                known.tensors[tensor] = TensorInfo(tensor, value.shape, np_to_onnx_dtype(value))
        filled = fallback_shapes(nodes, known.tensors, known.constants)
        if not filled and len(known.constants) == count:
            break


def _build_graph(
    nodes, names, folded: set[str], derived: set[str], tensors: dict[str, TensorInfo]
) -> nx.DiGraph:
    """One networkx node per ONNX node, one edge per producer -> consumer pair."""
    graph = nx.DiGraph()
    producer_of: dict[str, str] = {}
    for order, (node, name) in enumerate(zip(nodes, names, strict=True)):
        graph.add_node(
            name,
            op_type=node.op_type,
            domain=node.domain,
            inputs=tuple(node.input),
            outputs=tuple(o for o in node.output if o),
            folded=name in folded,
            weight_derived=name in derived,
            scope=scope_of(node),
            order=order,
        )
        for tensor in node.input:
            src = producer_of.get(tensor)
            if src is None:
                continue
            nbytes = tensors.get(tensor, TensorInfo(tensor, None)).nbytes
            if graph.has_edge(src, name):
                data = graph.edges[src, name]
                if tensor not in data["tensors"]:
                    data["tensors"].append(tensor)
                    data["bytes"] += nbytes
            else:
                graph.add_edge(src, name, tensors=[tensor], bytes=nbytes)
        for out in node.output:
            if out:
                producer_of[out] = name
    return graph


def graph_hash(model: onnx.ModelProto) -> str:
    """SHA-256 of the graph's structure: operators, attributes, tensor names and shapes.

    Weight values are left out (they are never read), so a model and its weight-less
    twin hash alike; bound input shapes are in (the plan depends on them).
    """
    h = hashlib.sha256()
    g = model.graph
    for vi in list(g.input) + list(g.output):
        h.update(vi.SerializeToString())
    for t in g.initializer:
        h.update(f"{t.name}:{t.data_type}:{tuple(t.dims)};".encode())
    for node in g.node:
        h.update(
            f"{node.op_type}|{node.domain}|{','.join(node.input)}|{','.join(node.output)}|".encode()
        )
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                h.update(f"{attr.name}:{attr.t.data_type}:{tuple(attr.t.dims)}".encode())
                if numel_of(attr.t.dims) <= SMALL_CONSTANT_ELEMENTS:
                    h.update(attr.t.raw_data)
            else:
                h.update(attr.SerializeToString())
    return h.hexdigest()[:16]
