"""Sequence ops: SplitToSequence, SequenceAt, SequenceConstruct, SequenceLength.

The dynamo exporter writes `torch.split` as `SplitToSequence` followed by one
`SequenceAt` per piece (onnxscript's optimizer folds them into one `Split`; exports with
`optimize=False` keep them). A sequence is a Python tuple of tensors in the converted
graph; `SequenceAt` with a constant position is an index into it. ONNX semantics kept:
without `split`, SplitToSequence cuts pieces of size 1 and drops the axis unless
`keepdims`; a scalar `split` is a chunk size (the last piece may be smaller).
"""

from __future__ import annotations

import operator

import torch

from runners.convert.core import NodeCtx
from runners.convert.ops.registry import op


def _split_to_sequence(x: torch.Tensor, sizes, axis: int, keepdims: bool):
    if sizes is None:
        pieces = torch.split(x, 1, axis)
        return tuple(p.squeeze(axis) for p in pieces) if not keepdims else pieces
    if isinstance(sizes, torch.Tensor):
        sizes = sizes.tolist()
    return torch.split(x, sizes, axis)


@op("SplitToSequence")
def _split_seq(c: NodeCtx):
    axis = c.attr("axis", 0)
    keepdims = bool(c.attr("keepdims", 1))
    sizes = None
    if c.has(1):
        known = c.const(1)
        if known is None:
            sizes = c.val(1)
        elif known.dim() == 0:
            sizes = int(known)
        else:
            sizes = [int(v) for v in known.tolist()]
    return c.call(_split_to_sequence, c.val(0), sizes, axis, keepdims)


@op("SequenceAt")
def _sequence_at(c: NodeCtx):
    known = c.const(1)
    position = int(known) if known is not None else c.val(1)
    return c.call(operator.getitem, c.val(0), position)


@op("SequenceConstruct")
def _sequence_construct(c: NodeCtx):
    return c.call(tuple, [c.val(i) for i in range(len(c.node.input))])


def _length(seq) -> torch.Tensor:
    return torch.tensor(len(seq), dtype=torch.int64)


@op("SequenceLength")
def _sequence_length(c: NodeCtx):
    return c.call(_length, c.val(0))
