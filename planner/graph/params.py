"""Which tensors are a model's weights: parameters, buffers, and views of them.

A float initializer of more than one element is a **parameter** (trainable) when some
operator reads it as differentiable data, a **buffer** (memory, no gradient) when it is
read only as BatchNorm running statistics or when the dynamo exporter recorded it as a
torch buffer or constant (torch.export's `InputSpec.kind`, e.g. a rotary embedding's
`inv_freq`; the TorchScript exporter records nothing of the kind, so such a buffer
written as an initializer and read as data counts as a weight there). A float tensor of
a Constant node is at most a buffer: both exporters write parameters as initializers and
inline only traced constants as nodes (the TorchScript exporter without constant folding
inlines `inv_freq` so), and the runner never trains one,
and neither when read only as a shape, an index or a configuring scalar (the one table of
such inputs is `cost.opcost.NON_DATA_INPUTS`). A weight is counted once however many
operators read it. Exporters write `x @ W.T` as `MatMul(x, Transpose(W))`: what is
computed from weights alone is a weight too (`weight_views`), so pricing knows that
operand's gradient is a weight gradient and that it is not saved per micro-batch, and the
planner never routes it between stages.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import onnx

from cost.opcost import BUFFER_INPUTS, is_data_input
from cost.tensor import FLOAT_DTYPES, TensorInfo
from planner.graph.fold import RANDOM_OPS, SUBGRAPH_OPS


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


def numel_of(dims) -> int:
    """Elements of a tensor with these `dims` (1 for a scalar)."""
    return int(np.prod(list(dims))) if len(dims) else 1


def find_params(
    nodes: list[onnx.NodeProto],
    names: list[str],
    initializers,
    constant_tensors: dict[str, onnx.TensorProto],
    untrained: frozenset[str] = frozenset(),
) -> dict[str, Param]:
    """Weights and buffers: float tensors of more than one element that feed real data
    (module docstring). `untrained`: tensors the exporter recorded as buffers or constants
    (torch.export's input kinds, `onnx_io.torch_input_kinds`): buffers when read as data."""
    candidates: dict[str, tuple[tuple[int, ...], int, str]] = {}
    for t in initializers:
        if t.data_type in FLOAT_DTYPES and numel_of(t.dims) > 1:
            candidates[t.name] = (tuple(t.dims), t.data_type, "initializer")
    for name, t in constant_tensors.items():
        if t.data_type in FLOAT_DTYPES and numel_of(t.dims) > 1:
            candidates[name] = (tuple(t.dims), t.data_type, "constant")
    uses: dict[str, list[tuple[str, bool, bool]]] = defaultdict(list)
    for node, name in zip(nodes, names, strict=True):
        buffers = BUFFER_INPUTS.get(node.op_type, frozenset())
        for pos, tensor in enumerate(node.input):
            if tensor in candidates:
                uses[tensor].append((name, is_data_input(node.op_type, pos), pos in buffers))
    params: dict[str, Param] = {}
    for tensor, (shape, dtype, source) in candidates.items():
        consumers = uses.get(tensor, [])
        if not consumers:
            continue
        reads_data = any(is_data for _, is_data, _ in consumers)
        # a Constant node is never a parameter: exporters write parameters as initializers
        # and inline only traced constants (a buffer, a mask, a rotary table) as nodes
        fixed = tensor in untrained or source == "constant"
        trainable = reads_data and not fixed
        is_buffer = not trainable and (
            any(buffer for _, _, buffer in consumers) or (reads_data and fixed)
        )
        if trainable or is_buffer:
            params[tensor] = Param(
                tensor, shape, dtype, trainable, source, consumers=[n for n, _, _ in consumers]
            )
    return params


@dataclass
class WeightViews:
    """Tensors computed from weights alone, and the nodes computing them.

    `sources[t]`: the parameters tensor `t` is computed from (a parameter is its own
    source); `nodes`: the nodes that compute a weight from weights and constants only
    (`Transpose(W)`, `Cast(W_fp16)`, `Gather(pos_embed, arange)`, ...). They belong to no
    layer: each stage that reads their output computes them itself, so a weight is never
    sent between stages, and its gradient reaches the parameter on that stage.
    """

    sources: dict[str, frozenset[str]]
    nodes: set[str]

    @property
    def tensors(self) -> set[str]:
        return set(self.sources)


def weight_views(
    nodes: list[onnx.NodeProto],
    names: list[str],
    params: set[str],
    folded: set[str],
    static: set[str],
) -> WeightViews:
    """Parameters and what is computed from them alone (see `WeightViews`): a node none of
    whose inputs depends on a graph input, at least one on a parameter, computes a weight
    (subgraph and random operators excepted)."""
    sources: dict[str, frozenset[str]] = {p: frozenset({p}) for p in params}
    derived: set[str] = set()
    for node, name in zip(nodes, names, strict=True):
        if name in folded or node.op_type in SUBGRAPH_OPS or node.op_type in RANDOM_OPS:
            continue
        data = [i for i in node.input if i]
        if not data or not all(i in sources or i in static for i in data):
            continue
        from_weights = frozenset().union(*(sources[i] for i in data if i in sources))
        if not from_weights:
            continue
        derived.add(name)
        for out in node.output:
            if out:
                sources[out] = from_weights
    return WeightViews(sources, derived)
