"""Which tensors are a model's weights: parameters, buffers, and views of them.

A float initializer, or a Constant node holding a float tensor, of more than one element
is a **parameter** (trainable) when some operator reads it as differentiable data, a
**buffer** (memory, no gradient) when it is read only as BatchNorm running statistics,
and neither when read only as a shape, an index or a configuring scalar (the one table of
such inputs is `cost.opcost.NON_DATA_INPUTS`). A weight is counted once however many
operators read it. Exporters write `x @ W.T` as `MatMul(x, Transpose(W))`: the outputs of
such re-viewing operators applied to a weight are weights too (`param_views`), so pricing
knows that operand's gradient is a weight gradient and that it is not saved per
micro-batch.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import onnx

from cost.opcost import BUFFER_INPUTS, is_data_input
from cost.tensor import FLOAT_DTYPES, TensorInfo

#: Operators that only re-view a tensor: applied to a weight, their output is still the weight.
VIEW_OPS = frozenset(
    {"Transpose", "Cast", "Reshape", "Identity", "Squeeze", "Unsqueeze", "Flatten", "Expand"}
)


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
) -> dict[str, Param]:
    """Weights and buffers: float tensors of more than one element that feed real data
    (module docstring)."""
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
        trainable = any(is_data for _, is_data, _ in consumers)
        is_buffer = not trainable and any(buffer for _, _, buffer in consumers)
        if trainable or is_buffer:
            params[tensor] = Param(
                tensor, shape, dtype, trainable, source, consumers=[n for n, _, _ in consumers]
            )
    return params


def param_views(
    nodes: list[onnx.NodeProto],
    names: list[str],
    params: set[str],
    folded: set[str],
    static: set[str],
) -> set[str]:
    """Parameters plus the tensors that are views of them (`Transpose(W)` feeding a
    MatMul is W): `VIEW_OPS` applied to a weight and otherwise static inputs."""
    like = set(params)
    for node, name in zip(nodes, names, strict=True):
        if name in folded or node.op_type not in VIEW_OPS:
            continue
        data = [i for i in node.input if i]
        if data and data[0] in like and all(i in like or i in static for i in data[1:]):
            like.update(o for o in node.output if o)
    return like
