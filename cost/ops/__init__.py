"""What one ONNX operator costs: FLOPs, bytes, backward FLOPs and saved tensors.

`op_cost(node)` looks the operator up in `OP_COSTS` and applies its formula; an operator
it does not know (or one from a non-default domain such as "com.microsoft") gets a
byte-only estimate with `estimated=True` (the caller warns). Pure functions, no torch.

Conventions (see `cost.opcost` for the contract):

* 1 multiply-add = 2 FLOPs, as `torch.utils.flop_counter` counts; bias additions are
  counted on top (one FLOP per output element), which torch does not.
* Bytes are every input read once (weights included) plus every output written once.
  Two deliberate exceptions read only what they copy: `Slice` and the `Gather` family
  read ``min(data, output)`` bytes of their data input, not the whole tensor.
* Backward FLOPs are charged only for inputs that need a gradient (see `needs_grad`):
  float tensors, except parameters holding at most one element (scalar constants such
  as the 0.5 of a decomposed Gelu). An op none of whose inputs needs a gradient (shape
  arithmetic on int64, comparisons feeding a mask) has no backward and saves nothing.
* `weight_grad_flops` is the part of `backward_flops` spent on gradients of inputs in
  `node.param_inputs`; `saved_inputs` lists the activation inputs (never parameters)
  that backward reads.
* When a shape the formula needs is unknown, the formula falls back on whatever is
  known (usually the output shape) and sets `estimated=True`; it never raises.

The formulas, one module per operator family, each with its part of `OP_COSTS`:

* `cost.ops.movement`: metadata-only ops, copies, Expand/Tile, Slice, generators, Dropout.
* `cost.ops.indexing`: the Gather and Scatter families.
* `cost.ops.pointwise`: element-wise ops (the `POINTWISE` factor table), Softmax family.
* `cost.ops.norm`: normalisations and LRN.
* `cost.ops.spatial`: Conv, ConvTranspose, pools, Resize.
* `cost.ops.matmul`: Gemm, MatMul, Einsum.
* `cost.ops.reduce`: Reduce*, ArgMax/ArgMin, CumSum, TopK, Trilu.
* `cost.ops.common`: the helpers they share.
"""

from __future__ import annotations

from cost.opcost import OpCost, OpNode
from cost.ops import indexing, matmul, movement, norm, pointwise, reduce, spatial
from cost.ops.common import Formula, estimate_unknown, needs_grad
from cost.ops.matmul import einsum_flops, matmul_dims, parse_einsum
from cost.ops.norm import NORM_BWD, NORM_FWD, NORM_WGRAD
from cost.ops.pointwise import GELU_TANH, POINTWISE, Pointwise
from cost.ops.spatial import window_output_shape

__all__ = [
    "DEFAULT_DOMAINS",
    "GELU_TANH",
    "KNOWN_OPS",
    "NORM_BWD",
    "NORM_FWD",
    "NORM_WGRAD",
    "OP_COSTS",
    "POINTWISE",
    "Pointwise",
    "einsum_flops",
    "estimate_unknown",
    "matmul_dims",
    "needs_grad",
    "op_cost",
    "parse_einsum",
    "window_output_shape",
]


#: Domains whose operators `OP_COSTS` describes ("" and "ai.onnx" are the same domain).
DEFAULT_DOMAINS: frozenset[str] = frozenset({"", "ai.onnx"})


def _merge(*tables: dict[str, Formula]) -> dict[str, Formula]:
    """The family tables as one; an operator priced by two families is an error."""
    merged: dict[str, Formula] = {}
    for table in tables:
        twice = merged.keys() & table.keys()
        if twice:
            raise ValueError(f"operators priced by two families: {sorted(twice)}")
        merged.update(table)
    return merged


#: Operator type -> cost formula, for the operators of `DEFAULT_DOMAINS`.
OP_COSTS: dict[str, Formula] = _merge(
    movement.COSTS,
    indexing.COSTS,
    pointwise.COSTS,
    norm.COSTS,
    spatial.COSTS,
    matmul.COSTS,
    reduce.COSTS,
)

#: The operator types `OP_COSTS` prices.
KNOWN_OPS: frozenset[str] = frozenset(OP_COSTS)


def op_cost(node: OpNode) -> OpCost:
    """Cost of `node`: its formula from `OP_COSTS`, or `estimate_unknown` for an op type
    without one or from a non-default domain. Never raises on odd shapes or attributes:
    a formula that fails falls back on the estimate."""
    formula = OP_COSTS.get(node.op_type) if node.domain in DEFAULT_DOMAINS else None
    if formula is None:
        return estimate_unknown(node)
    try:
        return formula(node)
    except (ArithmeticError, LookupError, TypeError, ValueError):
        return estimate_unknown(node)
