"""The contract between the graph loader and the per-operator cost formulas.

`OpNode` is everything a cost formula may look at; `OpCost` is what it returns.
Conventions (documented once, used everywhere):

* FLOPs count one multiply-add as **2** FLOPs, as `torch.utils.flop_counter` does.
  (The convnet-burden tables count a MAC as one; divide by 2 to compare.)
* Bytes are the bytes an operator reads (inputs, weights included) and writes (outputs),
  assuming each tensor is touched once: the memory traffic of the roofline model
  (Williams, Waterman, Patterson, "Roofline", CACM 2009).
* Backward FLOPs follow the usual rule: about 2x forward for Conv/Gemm/MatMul (one product
  for the input gradient, one for the weight gradient), about 1x for elementwise and
  normalisation ops (Narayanan et al., "Efficient Large-Scale Language Model Training on
  GPU Clusters Using Megatron-LM", SC 2021, section 5.1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cost.tensor import TensorInfo


@dataclass(frozen=True, slots=True)
class OpNode:
    """One ONNX operator with its attributes decoded and its tensors' static shapes.

    `inputs` keeps ONNX positions: a missing optional input is None. `param_inputs` holds
    the positions of inputs that are parameters (initializers or weight-holding
    Constants), so a formula can tell a weight from an activation.
    """

    op_type: str
    domain: str = ""
    attrs: dict[str, Any] = field(default_factory=dict)
    inputs: tuple[TensorInfo | None, ...] = ()
    outputs: tuple[TensorInfo, ...] = ()
    param_inputs: frozenset[int] = frozenset()
    name: str = ""


@dataclass(frozen=True, slots=True)
class OpCost:
    """Forward and backward cost of one operator, for one micro-batch.

    * `flops`: forward FLOPs (1 MAC = 2).
    * `bytes_read`, `bytes_written`: forward memory traffic.
    * `backward_flops`: FLOPs of the backward pass (input and weight gradients together).
    * `weight_grad_flops`: the part of `backward_flops` that computes weight gradients
      (the `W` step of zero-bubble schedules); 0 for ops without parameters.
    * `saved_inputs`: positions of inputs that backward needs kept (activations; the
      graph layer drops parameters and de-duplicates tensors saved by several ops).
    * `saves_output`: whether backward needs the output (Relu, Sigmoid, Tanh, Softmax...).
    * `kind`: "compute" (FLOP-bound family: Conv, Gemm, MatMul, Einsum), "memory"
      (elementwise, normalisation, data movement) or "free" (metadata only: Reshape,
      Squeeze, Identity...; costs no time).
    * `estimated`: True when the op is unknown and only a byte-based estimate was made.
    """

    flops: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    backward_flops: int = 0
    weight_grad_flops: int = 0
    saved_inputs: tuple[int, ...] = ()
    saves_output: bool = False
    kind: str = "memory"
    estimated: bool = False

    @property
    def bytes_moved(self) -> int:
        return self.bytes_read + self.bytes_written


def _positions(*items: int) -> frozenset[int]:
    return frozenset(items)


_REDUCE_OPS = ("Sum", "Mean", "Max", "Min", "Prod", "L1", "L2", "LogSum", "LogSumExp", "SumSquare")

#: Input positions of operators that never carry differentiable data: shapes, axes, pads,
#: scales, indices, conditions, configuring scalars, running statistics. A float
#: initializer read only at such positions is no trainable weight: the planner does not
#: count it as a parameter and the runner does not make it an `nn.Parameter`. The one
#: table both read (ONNX operator specs, opsets 11-21, for which inputs these are).
NON_DATA_INPUTS: dict[str, frozenset[int]] = {
    "Reshape": _positions(1),
    "Expand": _positions(1),
    "Tile": _positions(1),
    "Slice": _positions(1, 2, 3, 4),
    "Pad": _positions(1, 2, 3),
    "Resize": _positions(1, 2, 3),
    "Upsample": _positions(1),
    "Where": _positions(0),
    "Gather": _positions(1),
    "GatherElements": _positions(1),
    "GatherND": _positions(1),
    "ScatterND": _positions(1),
    "ScatterElements": _positions(1),
    "Unsqueeze": _positions(1),
    "Squeeze": _positions(1),
    "Split": _positions(1),
    "TopK": _positions(1),
    "CumSum": _positions(1),
    "Trilu": _positions(1),
    "OneHot": _positions(0, 1, 2),
    "BatchNormalization": _positions(3, 4),
    "Range": _positions(0, 1, 2),
    "ConstantOfShape": _positions(0),
    "Dropout": _positions(1, 2),
    "Clip": _positions(1, 2),
    **{f"Reduce{kind}": _positions(1) for kind in _REDUCE_OPS},
}

#: Of those, the positions that hold state rather than configuration: BatchNorm's running
#: mean and variance are buffers (memory, no gradient, no optimizer state).
BUFFER_INPUTS: dict[str, frozenset[int]] = {"BatchNormalization": _positions(3, 4)}


def is_data_input(op_type: str, position: int) -> bool:
    """Whether input `position` of an `op_type` node may carry differentiable data."""
    return position not in NON_DATA_INPUTS.get(op_type, frozenset())
