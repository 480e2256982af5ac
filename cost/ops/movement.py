"""Metadata-only and data-movement ops: no FLOPs (bar Range and training Dropout),
priced by their bytes.

* Free (Reshape, Flatten, Squeeze, Unsqueeze, Identity, Shape, Size, Constant,
  inference-mode Dropout): a view or a constant, no FLOPs, no bytes.
* Copies (Transpose, Concat, Split, Pad, Cast, DepthToSpace, NonZero, OneHot...): inputs
  read + outputs written; the gradient is the inverse copy, 0 FLOPs.
* Expand, Tile: a copy whose backward sums the gradient back, one add per output element.
* Slice: reads only what it copies, min(data, output) bytes of its data input.
* Generators (ConstantOfShape, Range, EyeLike, Random*Like): write the output; Range
  adds one FLOP per element.
* Dropout: free in inference; with a `training_mode` input 2 FLOPs per element forward
  and backward.
"""

from __future__ import annotations

from cost.opcost import OpCost, OpNode
from cost.ops.common import (
    Formula,
    _bytes_estimated,
    _input,
    _inputs_bytes,
    _known,
    _nbytes,
    _output,
    _output_numel,
    _outputs_bytes,
    _sum_bytes,
    needs_grad,
)


def free_cost(node: OpNode) -> OpCost:
    """Metadata only (Reshape, Flatten, Squeeze, Unsqueeze, Identity, Shape, Size,
    Constant, inference-mode Dropout): a view or a constant, no FLOPs, no bytes."""
    return OpCost(kind="free")


def copy_cost(node: OpNode) -> OpCost:
    """Pure data movement (Transpose, Concat, Split, Pad, Cast, DepthToSpace...):
    0 FLOPs, bytes = inputs read + outputs written; the gradient is the inverse copy
    (0 FLOPs) and needs no saved tensor."""
    return OpCost(
        bytes_read=_inputs_bytes(node),
        bytes_written=_outputs_bytes(node),
        kind="memory",
        estimated=_bytes_estimated(node),
    )


def broadcast_copy_cost(node: OpNode) -> OpCost:
    """Expand and Tile: read the input, write the (larger) output, 0 FLOPs; backward
    sums the output gradient back onto the input: one add per output element."""
    n, est = _output_numel(node)
    bwd = n if needs_grad(node, 0) else 0
    return OpCost(
        bytes_read=_inputs_bytes(node),
        bytes_written=_outputs_bytes(node),
        backward_flops=bwd,
        kind="memory",
        estimated=est or _bytes_estimated(node),
    )


def slice_cost(node: OpNode) -> OpCost:
    """Slice: copies only the selected elements: bytes read = min(data, output) plus the
    starts/ends/axes/steps inputs, bytes written = output; 0 FLOPs. Backward writes the
    gradient into zeros of the input's shape (memory only)."""
    data, out = _input(node, 0), _output(node)
    if _known(out):
        read = min(_nbytes(data), _nbytes(out)) if _known(data) else _nbytes(out)
    else:
        read = _nbytes(data)
    return OpCost(
        bytes_read=read + _sum_bytes(node.inputs[1:]),
        bytes_written=_outputs_bytes(node),
        kind="memory",
        estimated=_bytes_estimated(node),
    )


def write_cost(node: OpNode) -> OpCost:
    """Generators (ConstantOfShape, Range, EyeLike, RandomNormalLike...): write the
    output, read the small shape/limit inputs; `Range` adds one FLOP per element."""
    n, est = _output_numel(node)
    flops = n if node.op_type == "Range" else 0
    return OpCost(
        flops=flops,
        bytes_read=_inputs_bytes(node),
        bytes_written=_outputs_bytes(node),
        kind="memory",
        estimated=est or _bytes_estimated(node),
    )


def dropout_cost(node: OpNode) -> OpCost:
    """Dropout: free in inference (no `training_mode` input: a view of the input).

    With a `training_mode` input (a training export) it draws a mask and scales: about
    2 FLOPs per element (compare to a random draw, scale), bytes = input read + output
    and mask written; backward multiplies by the mask: 2 per element. The mask is an
    output (saved by the graph layer if it counts it); no input is saved.
    """
    if _input(node, 2) is None:
        return free_cost(node)
    n, est = _output_numel(node)
    grad = needs_grad(node, 0)
    return OpCost(
        flops=2 * n,
        bytes_read=_inputs_bytes(node),
        bytes_written=_outputs_bytes(node),
        backward_flops=2 * n if grad else 0,
        kind="memory",
        estimated=est or _bytes_estimated(node),
    )


_FREE = (
    "Reshape",
    "Flatten",
    "Squeeze",
    "Unsqueeze",
    "Identity",
    "Shape",
    "Size",
    "Constant",
    "SequenceAt",  # an element of a sequence: a view of what SplitToSequence copied
    "SequenceConstruct",
    "SequenceLength",
)
_COPY = (
    "Transpose",
    "Concat",
    "Split",
    "SplitToSequence",
    "Pad",
    "Cast",
    "CastLike",
    "DepthToSpace",
    "SpaceToDepth",
    "ReverseSequence",
    "NonZero",
    "OneHot",
)
_WRITE = ("ConstantOfShape", "Range", "EyeLike", "RandomNormalLike", "RandomUniformLike")


#: This module's part of `cost.ops.OP_COSTS`.
COSTS: dict[str, Formula] = {
    **dict.fromkeys(_FREE, free_cost),
    **dict.fromkeys(_COPY, copy_cost),
    **dict.fromkeys(_WRITE, write_cost),
    "Expand": broadcast_copy_cost,
    "Tile": broadcast_copy_cost,
    "Slice": slice_cost,
    "Dropout": dropout_cost,
}
