"""Load an ONNX model into a `networkx.DiGraph` of priced operators.

Nodes are ONNX operators (keyed by a unique name); an edge u -> v carries the tensors
u produces and v consumes (`tensors`: names, `bytes`: their total size). Every node holds
its decoded `OpCost` (see `cost.opcost`) and its `signature` (`op_signature`: what the
operator computes on which shapes, the key of measured times in a calibration profile)
and `input_roles` (per input: `w` parameter, `g` activation with a gradient, `n` data
without one, `k` constant, `-` absent).
Initializers, and Constant nodes that hold weight
tensors, become `Param`s: counted once however many nodes use them.

Shape arithmetic folds away: a node whose inputs are all static (non-parameter constants
and the outputs of Shape/Size, which are known once shapes are bound) is marked
`folded`, costs nothing and belongs to no layer. Subgraph ops (If, Loop, Scan) are opaque.
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import networkx as nx
import numpy as np
import onnx
from onnx import numpy_helper

from cost.opcost import OpCost, OpNode
from cost.ops import KNOWN_OPS, op_cost
from cost.tensor import FLOAT_DTYPES, TensorInfo
from planner.fold import evaluate_folded
from planner.onnx_io import external_data_location, load_model_proto
from planner.shapes import (
    ShapeBindings,
    bind_input_shapes,
    fallback_shapes,
    infer_shapes,
    real_graph_inputs,
    tensor_info_from_value_info,
)

#: Operators whose output is known as soon as shapes are bound.
SHAPE_SOURCES = frozenset({"Shape", "Size"})
#: Operators with subgraphs: priced as opaque nodes.
SUBGRAPH_OPS = frozenset({"If", "Loop", "Scan", "SequenceMap"})
#: Input positions that are never differentiable data (shapes, indices, running stats).
NON_DATA_INPUTS: dict[str, frozenset[int]] = {
    "Reshape": frozenset({1}),
    "Expand": frozenset({1}),
    "Tile": frozenset({1}),
    "Slice": frozenset({1, 2, 3, 4}),
    "Pad": frozenset({1, 2, 3}),
    "Resize": frozenset({1, 2, 3}),
    "Upsample": frozenset({1}),
    "Where": frozenset({0}),
    "Gather": frozenset({1}),
    "GatherElements": frozenset({1}),
    "GatherND": frozenset({1}),
    "ScatterND": frozenset({1}),
    "ScatterElements": frozenset({1}),
    "Unsqueeze": frozenset({1}),
    "Squeeze": frozenset({1}),
    "Split": frozenset({1}),
    "TopK": frozenset({1}),
    "CumSum": frozenset({1}),
    "OneHot": frozenset({0, 1, 2}),
    "BatchNormalization": frozenset({3, 4}),  # running mean / variance are buffers
    "ReduceMean": frozenset({1}),
    "ReduceSum": frozenset({1}),
    "ReduceMax": frozenset({1}),
    "ReduceMin": frozenset({1}),
    "ReduceProd": frozenset({1}),
    "ReduceL2": frozenset({1}),
    "Range": frozenset({0, 1, 2}),
    "ConstantOfShape": frozenset({0}),
    "Dropout": frozenset({1, 2}),
    "Clip": frozenset({1, 2}),
}
#: Constants up to this many elements are decoded (for Reshape targets and the like).
SMALL_CONSTANT_ELEMENTS = 4096


@dataclass
class Param:
    """A weight (trainable) or buffer (e.g. BatchNorm running stats) of the model."""

    name: str
    shape: tuple[int, ...]
    dtype: int
    trainable: bool
    source: str  # "initializer" or "constant"
    consumers: list[str] = field(default_factory=list)

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1

    @property
    def nbytes(self) -> int:
        return TensorInfo(self.name, self.shape, self.dtype).nbytes


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
    param_like: set[str] = field(default_factory=set)  # params and their reshaped/transposed views
    warnings: list[str] = field(default_factory=list)

    @property
    def op_nodes(self) -> list[str]:
        """Nodes that do work (not folded), in topological (file) order."""
        return [n for n, d in self.graph.nodes(data=True) if not d["folded"]]

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


def load_graph(path: str | os.PathLike[str], bindings: ShapeBindings | None = None) -> ModelGraph:
    """Load `path` into a `ModelGraph`: bind shapes, infer, fold, price every operator."""
    bindings = bindings or ShapeBindings()
    path = Path(path)
    model = load_model_proto(path)
    warnings: list[str] = []
    symbols = bind_input_shapes(model, bindings)
    inferred, inference_warnings = infer_shapes(model)
    warnings += inference_warnings
    g = inferred.graph

    tensors: dict[str, TensorInfo] = {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        info = tensor_info_from_value_info(vi)
        if info is not None:
            tensors[vi.name] = info
    constants: dict[str, np.ndarray] = {}
    initializer_names = set()
    has_weights = True
    for t in g.initializer:
        initializer_names.add(t.name)
        tensors[t.name] = TensorInfo(t.name, tuple(t.dims), t.data_type)
        if external_data_location(t) is not None:
            if not (path.parent / external_data_location(t)).exists():
                has_weights = False
        elif _numel(t.dims) <= SMALL_CONSTANT_ELEMENTS:
            constants[t.name] = numpy_helper.to_array(t)
    constant_tensors: dict[str, onnx.TensorProto] = {}
    for node in g.node:
        if node.op_type == "Constant" and node.output:
            value = _constant_value(node)
            if isinstance(value, onnx.TensorProto):
                constant_tensors[node.output[0]] = value
                tensors[node.output[0]] = TensorInfo(
                    node.output[0], tuple(value.dims), value.data_type
                )
                if (
                    _numel(value.dims) <= SMALL_CONSTANT_ELEMENTS
                    and external_data_location(value) is None
                ):
                    constants[node.output[0]] = numpy_helper.to_array(value)
            elif value is not None:
                constants[node.output[0]] = np.asarray(value)
                tensors[node.output[0]] = TensorInfo(
                    node.output[0],
                    constants[node.output[0]].shape,
                    _np_to_onnx(constants[node.output[0]]),
                )
    nodes = list(g.node)
    names = unique_node_names(nodes)
    params = _find_params(nodes, names, g.initializer, constant_tensors)
    folded = _folded_nodes(
        nodes, names, set(params), initializer_names | set(constants) | set(constant_tensors)
    )
    for _ in range(4):  # shapes feed folded values, which feed shapes (Reshape targets)
        known = len(constants)
        evaluate_folded(nodes, names, folded, tensors, constants)
        for tensor, value in constants.items():
            if tensor not in tensors:
                tensors[tensor] = TensorInfo(tensor, value.shape, _np_to_onnx(value))
        filled = fallback_shapes(nodes, tensors, constants)
        if not filled and len(constants) == known:
            break
    param_like = _param_views(nodes, names, set(params), folded, set(constants) | initializer_names)
    static_names = initializer_names | set(constants) | set(constant_tensors)
    grad_tensors: set[str] = set()  # activations that carry a gradient in training

    graph = nx.DiGraph()
    producer_of: dict[str, str] = {}
    unknown_ops: dict[str, int] = defaultdict(int)
    unknown_shapes = 0
    for order, (node, name) in enumerate(zip(nodes, names, strict=True)):
        is_folded = name in folded
        inputs = tuple(tensors.get(i, TensorInfo(i, None)) if i else None for i in node.input)
        outputs = tuple(tensors.get(o, TensorInfo(o, None)) for o in node.output if o)
        if is_folded:
            cost = OpCost(kind="free")
        else:
            op_type = (
                node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
            )
            param_positions = frozenset(i for i, t in enumerate(node.input) if t in param_like)
            opnode = OpNode(
                op_type=op_type,
                domain=node.domain,
                attrs=_decode_attributes(node),
                inputs=inputs,
                outputs=outputs,
                param_inputs=param_positions,
                name=name,
            )
            cost = op_cost(opnode)
            if op_type not in KNOWN_OPS or node.op_type in SUBGRAPH_OPS:
                unknown_ops[op_type] += 1
            elif any(t is not None and t.shape is None for t in (*inputs, *outputs)):
                unknown_shapes += 1
        roles = tuple(
            _input_role(t, param_like, static_names, grad_tensors) if t else "-" for t in node.input
        )
        if not is_folded and any(r in ("w", "g") for r in roles):
            grad_tensors.update(o.name for o in outputs if o.is_float)
        signature = op_signature(
            node.op_type,
            node.domain,
            inputs,
            outputs,
            _decode_attributes(node),
            roles,
            constants,
        )
        graph.add_node(
            name,
            op_type=node.op_type,
            domain=node.domain,
            inputs=tuple(node.input),
            outputs=tuple(o for o in node.output if o),
            folded=is_folded,
            cost=cost,
            scope=_scope_of(node),
            order=order,
            signature=signature,
            input_roles=roles,
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

    for op_type, count in sorted(unknown_ops.items()):
        kind = "subgraph op" if op_type in SUBGRAPH_OPS else "unknown op"
        warnings.append(
            f"{kind} '{op_type}' ({count} node{'s' if count > 1 else ''}): priced by bytes only"
        )
    if unknown_shapes:
        warnings.append(
            f"{unknown_shapes} operator(s) have tensors of unknown shape: their cost is estimated"
        )
    opset = next((o.version for o in inferred.opset_import if o.domain in ("", "ai.onnx")), 0)
    return ModelGraph(
        path=path,
        model=model,
        graph=graph,
        tensors=tensors,
        params=params,
        inputs=[vi.name for vi in real_graph_inputs(model)],
        outputs=[vi.name for vi in model.graph.output],
        constants=constants,
        opset=opset,
        producer=f"{model.producer_name} {model.producer_version}".strip(),
        graph_hash=graph_hash(model),
        symbols=symbols,
        has_weights=has_weights,
        param_like=param_like,
        warnings=warnings,
    )


#: Constant inputs up to this many elements have their values in the signature.
SIGNATURE_VALUE_ELEMENTS = 16


def op_signature(
    op_type: str,
    domain: str,
    inputs: tuple[TensorInfo | None, ...],
    outputs: tuple[TensorInfo, ...],
    attrs: dict,
    roles: tuple[str, ...],
    constants: dict[str, np.ndarray] | None = None,
) -> str:
    """A stable string naming what an operator computes: equal signatures, equal work.

    `op|domain|inputs|outputs|attributes`, e.g.
    `Gemm||float[8,64]g,float[128,64]w,float[128]w|float[8,128]|alpha=1.0;transB=1`.
    Each input is `dtype[shape]` and a role: `w` a parameter (or a view of one), `g` an
    activation that carries a gradient in training, `n` data without one (graph inputs,
    integers), `k` a constant (its values follow as `=[...]` up to
    `SIGNATURE_VALUE_ELEMENTS` elements); a missing optional input is `-`. Attributes are
    sorted by name. Tensor names and node names are left out, so identical operators in
    different places (or models) share a signature: a calibration profile measures each
    signature once (`cost.profile`).
    """
    constants = constants or {}
    ins = []
    for info, role in zip(inputs, roles, strict=True):
        if info is None or role == "-":
            ins.append("-")
            continue
        text = _tensor_text(info) + role
        value = constants.get(info.name) if role == "k" else None
        if value is not None and np.size(value) <= SIGNATURE_VALUE_ELEMENTS:
            text += "=" + _value_text(np.asarray(value).reshape(-1).tolist())
        ins.append(text)
    outs = ",".join(_tensor_text(o) for o in outputs)
    attr_text = ";".join(f"{k}={_value_text(attrs[k])}" for k in sorted(attrs))
    return f"{op_type}|{domain}|{','.join(ins)}|{outs}|{attr_text}"


def _tensor_text(info: TensorInfo) -> str:
    try:
        dtype = onnx.TensorProto.DataType.Name(info.dtype).lower()
    except ValueError:
        dtype = f"dtype{info.dtype}"
    shape = "?" if info.shape is None else ",".join(str(d) for d in info.shape)
    return f"{dtype}[{shape}]"


def _value_text(value) -> str:
    if isinstance(value, TensorInfo):
        return _tensor_text(value)
    if isinstance(value, list | tuple):
        return "[" + ",".join(_value_text(v) for v in value) + "]"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return str(value)


def _input_role(tensor: str, param_like: set[str], static: set[str], grad: set[str]) -> str:
    if tensor in param_like:
        return "w"
    if tensor in static:
        return "k"
    return "g" if tensor in grad else "n"


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
                if _numel(attr.t.dims) <= SMALL_CONSTANT_ELEMENTS:
                    h.update(attr.t.raw_data)
            else:
                h.update(attr.SerializeToString())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------------------


def _numel(dims) -> int:
    return int(np.prod(list(dims))) if len(dims) else 1


def _np_to_onnx(array: np.ndarray) -> int:
    try:
        return onnx.helper.np_dtype_to_tensor_dtype(array.dtype)
    except (KeyError, TypeError, ValueError):
        return onnx.TensorProto.FLOAT


def _constant_value(node: onnx.NodeProto):
    """The tensor a Constant node holds (a TensorProto), or a python value for value_* forms."""
    for attr in node.attribute:
        if attr.name == "value":
            return attr.t
        if attr.name in ("value_float", "value_int"):
            return onnx.helper.get_attribute_value(attr)
        if attr.name in ("value_floats", "value_ints"):
            return list(onnx.helper.get_attribute_value(attr))
    return None


def unique_node_names(nodes) -> list[str]:
    """Node names as the planner uses them: the ONNX name, or `<op>_<index>`, made unique."""
    seen: dict[str, int] = {}
    names = []
    for i, node in enumerate(nodes):
        base = node.name or f"{node.op_type}_{i}"
        name = base
        if name in seen:
            seen[base] += 1
            name = f"{base}__{seen[base]}"
        seen.setdefault(name, 0)
        names.append(name)
    return names


def _decode_attributes(node: onnx.NodeProto) -> dict:
    attrs = {}
    for attr in node.attribute:
        if attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
            attrs[attr.name] = "<subgraph>"
        elif attr.type == onnx.AttributeProto.TENSOR:
            attrs[attr.name] = TensorInfo(attr.name, tuple(attr.t.dims), attr.t.data_type)
        else:
            value = onnx.helper.get_attribute_value(attr)
            attrs[attr.name] = value.decode() if isinstance(value, bytes) else value
    return attrs


def _find_params(nodes, names, initializers, constant_tensors) -> dict[str, Param]:
    """Weights and buffers: float tensors of more than one element that feed real data.

    A float initializer or Constant counts as a trainable weight when some operator uses it
    as differentiable data; used only as running statistics (BatchNorm inputs 3 and 4) it
    is a buffer (memory, no gradient); used only as a shape or index it is neither.
    """
    candidates: dict[str, tuple[tuple[int, ...], int, str]] = {}
    for t in initializers:
        if t.data_type in FLOAT_DTYPES and _numel(t.dims) > 1:
            candidates[t.name] = (tuple(t.dims), t.data_type, "initializer")
    for name, t in constant_tensors.items():
        if t.data_type in FLOAT_DTYPES and _numel(t.dims) > 1:
            candidates[name] = (tuple(t.dims), t.data_type, "constant")
    uses: dict[str, list[tuple[str, bool]]] = defaultdict(list)
    for node, name in zip(nodes, names, strict=True):
        skip = NON_DATA_INPUTS.get(node.op_type, frozenset())
        for pos, tensor in enumerate(node.input):
            if tensor in candidates:
                uses[tensor].append((name, pos not in skip))
    params: dict[str, Param] = {}
    for tensor, (shape, dtype, source) in candidates.items():
        consumers = uses.get(tensor, [])
        if not consumers:
            continue
        trainable = any(is_data for _, is_data in consumers)
        is_buffer = (
            any(
                not is_data and nodes[names.index(n)].op_type == "BatchNormalization"
                for n, is_data in consumers
            )
            if not trainable
            else False
        )
        if trainable or is_buffer:
            params[tensor] = Param(
                tensor, shape, dtype, trainable, source, consumers=[n for n, _ in consumers]
            )
    return params


#: Operators that only re-view a tensor: applied to a weight, their output is still the weight.
VIEW_OPS = frozenset(
    {"Transpose", "Cast", "Reshape", "Identity", "Squeeze", "Unsqueeze", "Flatten", "Expand"}
)


def _param_views(nodes, names, params: set[str], folded: set[str], static: set[str]) -> set[str]:
    """Parameters plus tensors that are views of them (`Transpose(W)` feeding a MatMul is W).

    Exporters write `x @ W.T` as MatMul(x, Transpose(W)); pricing the MatMul must still know
    its second operand is a weight (its gradient is a weight gradient, and it is not an
    activation saved per micro-batch).
    """
    like = set(params)
    for node, name in zip(nodes, names, strict=True):
        if name in folded or node.op_type not in VIEW_OPS:
            continue
        data = [i for i in node.input if i]
        if data and data[0] in like and all(i in like or i in static for i in data[1:]):
            like.update(o for o in node.output if o)
    return like


def _folded_nodes(nodes, names, params: set[str], constant_like: set[str]) -> set[str]:
    """Nodes computing shape arithmetic: every input static, none a parameter."""
    static = {t for t in constant_like if t not in params}
    folded: set[str] = set()
    for node, name in zip(nodes, names, strict=True):
        if node.op_type in SUBGRAPH_OPS:
            continue
        inputs = [i for i in node.input if i]
        if node.op_type in SHAPE_SOURCES or all(i in static for i in inputs):
            if node.op_type in (
                "RandomNormal",
                "RandomUniform",
                "RandomNormalLike",
                "RandomUniformLike",
            ):
                continue
            folded.add(name)
            static.update(o for o in node.output if o)
    return folded


def _scope_of(node: onnx.NodeProto) -> tuple[str, ...]:
    """The module path of a node, as components: ('blocks', '3', 'attn').

    Read from the dynamo exporter's `pkg.torch.onnx.name_scopes` metadata
    (`['', 'blocks.3', 'blocks.3.attn', 'matmul_7']`: the last entry is the op itself),
    else from TorchScript-style names (`/blocks.3/attn/MatMul`). Empty when neither.
    """
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            entries = _parse_list_literal(prop.value)
            modules = [e for e in entries[:-1] if e]
            if modules:
                return tuple(modules[-1].split("."))
            return ()
    name = node.name
    if name.startswith("/") and name.count("/") >= 2:
        # TorchScript writes a container's child relative to it:
        # /layer2/layer2.0/downsample/downsample.0/Conv is module layer2.0.downsample.0
        segments: list[str] = []
        for part in (p for p in name.split("/")[1:-1] if p):
            if segments and part.startswith(segments[-1] + "."):
                segments[-1] = part
            else:
                segments.append(part)
        return tuple(c for seg in segments for c in seg.split("."))
    return ()


def _parse_list_literal(text: str) -> list[str]:
    text = text.strip()
    if not (text.startswith("[") and text.endswith("]")):
        return [text]
    body = text[1:-1]
    return [item.strip().strip("'\"") for item in body.split(",")] if body.strip() else []
