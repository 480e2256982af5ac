"""Index-driven data movement: the Gather family (Gather, GatherElements, GatherND)
and the Scatter family (ScatterND, ScatterElements).

No FLOPs, except one per update element for a scatter with a `reduction`. A gather
reads only the gathered elements, min(data, output) bytes of its data input, plus the
indices. An embedding lookup (a parameter table indexed by int ids) has a scatter-add
backward: one add per output element, all of it a weight gradient. Backward keeps the
indices. (NonZero and OneHot are priced as plain copies, in `cost.ops.movement`.)
"""

from __future__ import annotations

from cost.opcost import OpCost, OpNode
from cost.ops.common import (
    Formula,
    _activations,
    _bytes_estimated,
    _input,
    _inputs_bytes,
    _known,
    _nbytes,
    _numel,
    _output,
    _output_numel,
    _outputs_bytes,
    _str_attr,
    needs_grad,
)


def gather_cost(node: OpNode) -> OpCost:
    """Gather, GatherElements, GatherND: no FLOPs; bytes read = the gathered elements
    (min(data, output)) + the indices, bytes written = output.

    Embedding lookup (a parameter table indexed by int ids): rows read = output bytes,
    and backward is a scatter-add of the output gradient into the table, one add per
    output element, all of it a weight gradient. Backward keeps the indices.
    """
    data, indices, out = _input(node, 0), _input(node, 1), _output(node)
    if _known(out):
        read = min(_nbytes(data), _nbytes(out)) if _known(data) else _nbytes(out)
    else:
        read = _nbytes(data)
    n, est = _output_numel(node)
    grad = needs_grad(node, 0)
    bwd = n if grad else 0
    return OpCost(
        bytes_read=read + _nbytes(indices),
        bytes_written=_outputs_bytes(node),
        backward_flops=bwd,
        weight_grad_flops=bwd if 0 in node.param_inputs else 0,
        saved_inputs=_activations(node, [1]) if grad else (),
        kind="memory",
        estimated=est or _bytes_estimated(node),
    )


def scatter_cost(node: OpNode) -> OpCost:
    """ScatterND, ScatterElements: copy `data`, overwrite (or reduce into) it with
    `updates`: bytes = data + indices + updates read, output written; FLOPs = one per
    update element when `reduction` is set, else 0. Backward masks and gathers the
    output gradient (memory only) and keeps the indices."""
    updates = _input(node, 2)
    flops = _numel(updates) if _str_attr(node, "reduction", "none") not in ("none", None) else 0
    grad = needs_grad(node, 0) or needs_grad(node, 2)
    return OpCost(
        flops=flops,
        bytes_read=_inputs_bytes(node),
        bytes_written=_outputs_bytes(node),
        backward_flops=flops if grad else 0,
        saved_inputs=_activations(node, [1]) if grad else (),
        kind="memory",
        estimated=_bytes_estimated(node),
    )


#: This module's part of `cost.ops.OP_COSTS`.
COSTS: dict[str, Formula] = {
    "Gather": gather_cost,
    "GatherElements": gather_cost,
    "GatherND": gather_cost,
    "ScatterND": scatter_cost,
    "ScatterElements": scatter_cost,
}
