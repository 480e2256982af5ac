"""Normalisations (BatchNormalization, LayerNormalization, GroupNormalization,
InstanceNormalization, MeanVarianceNormalization, LpNormalization) and LRN.

LayerNormalization = mean, sub, square, sum, scale by rstd, gamma, beta = 7 FLOPs per
element, rounded up to 8 (`NORM_FWD`) for the per-row rsqrt and the one-pass variance
correction; backward about 2x forward (`NORM_BWD`), of which `NORM_WGRAD` per element
are the scale and bias gradients. LRN: size + 5 FLOPs per element, backward 2x.
Normalisation ops are memory-bound, so these factors hardly move a time estimate; the
bytes dominate.
"""

from __future__ import annotations

from cost.opcost import OpCost, OpNode
from cost.ops.common import (
    Formula,
    _activations,
    _bytes_estimated,
    _grad_inputs,
    _inputs_bytes,
    _int_attr,
    _output_numel,
    _outputs_bytes,
    needs_grad,
)

#: Normalisation: forward FLOPs per element, backward FLOPs per element, and the part
#: of backward that makes the scale/bias gradients (dgamma = sum(g*xhat): 2,
#: dbeta = sum(g): 1).
NORM_FWD = 8
NORM_BWD = 16
NORM_WGRAD = 3
BATCHNORM_INFER_FWD = 4  # (x - mean) * rstd * gamma + beta with running statistics
BATCHNORM_STATS_FWD = 3  # batch mean and variance in training mode


def norm_cost(node: OpNode) -> OpCost:
    """LayerNormalization, GroupNormalization, InstanceNormalization,
    BatchNormalization, MeanVarianceNormalization, LpNormalization.

    Forward: `NORM_FWD` = 8 FLOPs per element (mean, subtract, square, sum, scale by
    rstd, gamma, beta, plus the amortised rsqrt); BatchNormalization with running
    statistics (training_mode=0, the usual export) is 4 per element, 7 in training mode.
    Backward: about 2x forward (`NORM_BWD` = 16 per element: recompute xhat, dgamma,
    dbeta, the two row sums and dx), of which `NORM_WGRAD` = 3 per element are the
    scale and bias gradients when those are parameters. Backward reads the input; the
    per-row mean and rstd statistics it also keeps are ignored (N x groups floats, less
    than 1/(hidden size) of the input).
    """
    n, est = _output_numel(node)
    fwd = NORM_FWD
    if node.op_type == "BatchNormalization":
        fwd = BATCHNORM_INFER_FWD
        if _int_attr(node, "training_mode", 0):
            fwd += BATCHNORM_STATS_FWD
    grad = bool(_grad_inputs(node))
    trained = any(i in node.param_inputs and needs_grad(node, i) for i in (1, 2))
    return OpCost(
        flops=fwd * n,
        bytes_read=_inputs_bytes(node),
        bytes_written=_outputs_bytes(node),
        backward_flops=NORM_BWD * n if grad else 0,
        weight_grad_flops=NORM_WGRAD * n if grad and trained else 0,
        saved_inputs=_activations(node, [0]) if grad else (),
        kind="memory",
        estimated=est or _bytes_estimated(node),
    )


def lrn_cost(node: OpNode) -> OpCost:
    """LRN: y = x / (bias + alpha/size * sum_window(x^2))^beta: per element one square,
    `size` adds over the window, then scale, add, pow, divide: size + 5 FLOPs; backward
    about 2x forward, reading input and output."""
    n, est = _output_numel(node)
    size = max(_int_attr(node, "size", 5), 1)
    fwd = (size + 5) * n
    grad = needs_grad(node, 0)
    return OpCost(
        flops=fwd,
        bytes_read=_inputs_bytes(node),
        bytes_written=_outputs_bytes(node),
        backward_flops=2 * fwd if grad else 0,
        saved_inputs=_activations(node, [0]) if grad else (),
        saves_output=grad,
        kind="memory",
        estimated=est or _bytes_estimated(node),
    )


#: This module's part of `cost.ops.OP_COSTS`.
COSTS: dict[str, Formula] = {
    **dict.fromkeys(
        (
            "BatchNormalization",
            "LayerNormalization",
            "GroupNormalization",
            "InstanceNormalization",
            "MeanVarianceNormalization",
            "LpNormalization",
        ),
        norm_cost,
    ),
    "LRN": lrn_cost,
}
