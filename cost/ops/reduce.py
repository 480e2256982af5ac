"""Reductions, scans, sorting and masking: Reduce*, ArgMax/ArgMin, CumSum, TopK, Trilu.

* Reduce*: numel(X) x a per-input factor + numel(Y) x a per-output factor (`REDUCE`);
  backward broadcasts the gradient back, 1-3 FLOPs per input element.
* ArgMax, ArgMin: one compare per input element, no gradient.
* CumSum: one add per element, forward and backward.
* TopK: numel(X) * ceil(log2(k)) compares (a heap of k per row).
* Trilu: a masked copy, one select per element.
"""

from __future__ import annotations

from math import ceil, log2

from cost.opcost import OpCost, OpNode
from cost.ops.common import (
    Formula,
    _activations,
    _bytes_estimated,
    _dim,
    _input,
    _inputs_bytes,
    _int_attr,
    _known,
    _numel,
    _output,
    _output_numel,
    _outputs_bytes,
    needs_grad,
)

#: Reductions: (FLOPs per input element, FLOPs per output element, backward per input
#: element, backward reads the input and output).
REDUCE: dict[str, tuple[int, int, int, bool]] = {
    "ReduceSum": (1, 0, 1, False),  # dx = broadcast(g)
    "ReduceMean": (1, 1, 1, False),  # + one divide per output
    "ReduceMax": (1, 0, 2, True),  # dx = g * (x == y)
    "ReduceMin": (1, 0, 2, True),
    "ReduceProd": (1, 0, 2, True),  # dx = g * y / x
    "ReduceL1": (2, 0, 2, True),  # |x| and add; dx = g * sign(x)
    "ReduceL2": (2, 1, 2, True),  # square and add, sqrt per output; dx = g * x / y
    "ReduceSumSquare": (2, 0, 2, True),
    "ReduceLogSum": (1, 1, 2, True),
    "ReduceLogSumExp": (2, 1, 3, True),
}


def reduce_cost(node: OpNode) -> OpCost:
    """Reduce*: FLOPs = numel(X) x per-input factor + numel(Y) x per-output factor
    (`REDUCE`); backward broadcasts the gradient back over the input (1-3 FLOPs per
    input element); Max/Min/Prod/L1/L2/LogSum* read the input and output."""
    per_in, per_out, per_bwd, saves = REDUCE[node.op_type]
    x, y = _input(node, 0), _output(node)
    est = not _known(x)
    n_in = _numel(x) if not est else _numel(y)
    n_out = _numel(y) if _known(y) else 1
    grad = needs_grad(node, 0)
    return OpCost(
        flops=per_in * n_in + per_out * n_out,
        bytes_read=_inputs_bytes(node),
        bytes_written=_outputs_bytes(node),
        backward_flops=per_bwd * n_in if grad else 0,
        saved_inputs=_activations(node, [0]) if grad and saves else (),
        saves_output=grad and saves,
        kind="memory",
        estimated=est or _bytes_estimated(node),
    )


def arg_reduce_cost(node: OpNode) -> OpCost:
    """ArgMax, ArgMin: one compare per input element; int64 output, no gradient."""
    x = _input(node, 0)
    return OpCost(
        flops=_numel(x),
        bytes_read=_inputs_bytes(node),
        bytes_written=_outputs_bytes(node),
        kind="memory",
        estimated=_bytes_estimated(node),
    )


def once_per_element_cost(node: OpNode) -> OpCost:
    """One FLOP per output element, forward and backward, nothing saved: CumSum (an add;
    backward is the reversed cumulative sum) and Trilu (a masked copy, one select;
    backward masks the gradient the same way)."""
    n, est = _output_numel(node)
    return OpCost(
        flops=n,
        bytes_read=_inputs_bytes(node),
        bytes_written=_outputs_bytes(node),
        backward_flops=n if needs_grad(node, 0) else 0,
        kind="memory",
        estimated=est or _bytes_estimated(node),
    )


def topk_cost(node: OpNode) -> OpCost:
    """TopK: a bytes-level estimate; FLOPs = numel(X) * ceil(log2(k)) compares (a heap
    of k per row), k read from the output shape along `axis`. Backward scatters the
    gradient of the k values back: one per output element; the indices output is kept
    (not an input)."""
    x, values = _input(node, 0), _output(node)
    axis = _int_attr(node, "axis", -1)
    k = _dim(values, axis) if _known(values) else None
    est = k is None or not _known(x)
    compares = _numel(x) * max(1, ceil(log2(k))) if k else _numel(x)
    grad = needs_grad(node, 0)
    return OpCost(
        flops=compares,
        bytes_read=_inputs_bytes(node),
        bytes_written=_outputs_bytes(node),
        backward_flops=_numel(values) if grad else 0,
        kind="memory",
        estimated=est or _bytes_estimated(node),
    )


#: This module's part of `cost.ops.OP_COSTS`.
COSTS: dict[str, Formula] = {
    **{op: reduce_cost for op in REDUCE},
    "ArgMax": arg_reduce_cost,
    "ArgMin": arg_reduce_cost,
    "CumSum": once_per_element_cost,
    "TopK": topk_cost,
    "Trilu": once_per_element_cost,
}
