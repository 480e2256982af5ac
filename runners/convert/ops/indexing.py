"""Indexing ops: Gather*, Scatter*, OneHot, NonZero and Trilu.

Gather, GatherElements, GatherND, ScatterND, ScatterElements (and the deprecated
Scatter). ONNX indices may be negative and then count from the end of the axis; a
constant index tensor maps to ``torch.select`` / ``index_select`` / ``gather`` directly.
Gather on axis 0 of a 2-D parameter is ``F.embedding`` (which does not wrap negative
ids). Trilu keeps the upper (``upper=1``) or lower triangle from diagonal ``k``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from runners.convert import functional as R
from runners.convert.core import NodeCtx
from runners.convert.ops.registry import op


@op("Gather")
def _gather(c: NodeCtx):
    x, idx = c.val(0), c.val(1)
    axis = c.attr("axis", 0)
    shape = c.shape(0)
    ci = c.const(1)
    if ci is not None:
        if bool((ci < 0).any()):
            if shape is None or not isinstance(shape[axis], int):
                return c.call(R.gather, x, ci, axis)
            ci = torch.where(ci < 0, ci + shape[axis], ci)
        if ci.dim() == 0:
            return c.call(torch.select, x, axis, int(ci.item()))
        if ci.dim() == 1:
            return c.call(torch.index_select, x, axis, ci)
        return c.call(R.gather, x, ci, axis)
    is_param = c.node.input[0] in c.conv.param_names
    if is_param and axis == 0 and shape is not None and len(shape) == 2:
        return c.call(F.embedding, idx, x)
    return c.call(R.gather, x, idx, axis)


@op("GatherElements")
def _gather_elements(c: NodeCtx):
    axis = c.attr("axis", 0)
    ci = c.const(1)
    if ci is not None and not bool((ci < 0).any()):
        return c.call(torch.gather, c.val(0), axis, ci)
    return c.call(R.gather_elements, c.val(0), c.val(1), axis)


@op("GatherND")
def _gather_nd(c: NodeCtx):
    return c.call(R.gather_nd, c.val(0), c.val(1), c.attr("batch_dims", 0))


@op("ScatterND")
def _scatter_nd(c: NodeCtx):
    return c.call(R.scatter_nd, c.val(0), c.val(1), c.val(2), c.attr("reduction", "none"))


@op("ScatterElements", "Scatter")
def _scatter_elements(c: NodeCtx):
    return c.call(
        R.scatter_elements,
        c.val(0),
        c.val(1),
        c.val(2),
        c.attr("axis", 0),
        c.attr("reduction", "none"),
    )


@op("OneHot")
def _one_hot(c: NodeCtx):
    return c.call(R.one_hot, c.val(0), c.val(1), c.val(2), c.attr("axis", -1))


@op("NonZero")
def _non_zero(c: NodeCtx):
    return c.call(R.non_zero, c.val(0))


@op("Trilu")
def _trilu(c: NodeCtx):
    k = c.const(1)
    upper = c.attr("upper", 1)
    fn = torch.triu if upper else torch.tril
    if k is None and c.has(1):
        return c.call(R.trilu, c.val(0), c.val(1), upper)
    return c.call(fn, c.val(0), int(k.item()) if k is not None else 0)
