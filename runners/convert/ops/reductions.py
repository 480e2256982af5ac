"""Reductions: Reduce*, ArgMax/ArgMin, CumSum and TopK.

Reduce* axes are an attribute (before opset 18; ReduceSum before 13) or an optional
input; empty axes reduce over every axis unless noop_with_empty_axes is set; keepdims
keeps reduced axes as size 1. ArgMax/ArgMin may select the last index of ties; CumSum may
be exclusive and/or reversed; TopK's k is an attribute before opset 10 and an input from
10, and the converter always returns the k values sorted.
"""

from __future__ import annotations

import torch

from runners.convert import functional as R
from runners.convert.core import NodeCtx
from runners.convert.ops.registry import op

_REDUCE_KIND = {
    "ReduceSum": "sum",
    "ReduceMean": "mean",
    "ReduceMax": "max",
    "ReduceMin": "min",
    "ReduceProd": "prod",
    "ReduceL1": "l1",
    "ReduceL2": "l2",
    "ReduceSumSquare": "sumsquare",
    "ReduceLogSum": "logsum",
    "ReduceLogSumExp": "logsumexp",
}


_REDUCE_TORCH = {"sum": torch.sum, "mean": torch.mean, "max": torch.amax, "min": torch.amin}


@op(*_REDUCE_KIND)
def _reduce(c: NodeCtx):
    x = c.val(0)
    kind = _REDUCE_KIND[c.op]
    keep = c.attr("keepdims", 1)
    noop = c.attr("noop_with_empty_axes", 0)
    axes = c.attr("axes")
    axes = list(axes) if axes is not None else c.ints_or_node(1)
    if isinstance(axes, list) and not axes:
        if noop:
            return x
        rank = c.rank(0)
        axes = list(range(rank)) if rank is not None else None
    if isinstance(axes, list) and axes:
        dtype = c.dtype(0)
        fn = _REDUCE_TORCH.get(kind)
        if fn is not None and not (
            kind == "sum" and dtype is not None and not dtype.is_floating_point
        ):
            return c.call(fn, x, axes, keepdim=bool(keep))
    return c.call(R.reduce, x, kind, axes, keep, noop)


@op("ArgMax", "ArgMin")
def _arg(c: NodeCtx):
    axis, keep, last = c.attr("axis", 0), c.attr("keepdims", 1), c.attr("select_last_index", 0)
    largest = c.op == "ArgMax"
    if not last:
        fn = torch.argmax if largest else torch.argmin
        return c.call(fn, c.val(0), axis, bool(keep))
    return c.call(R.arg_extreme, c.val(0), axis, keep, last, largest)


@op("CumSum")
def _cumsum(c: NodeCtx):
    axis = c.const(1)
    exclusive, reverse = c.attr("exclusive", 0), c.attr("reverse", 0)
    dtype = c.dtype(0)
    if axis is not None and not exclusive and not reverse and dtype is not None:
        kw = {} if dtype.is_floating_point else {"dtype": dtype}
        return c.call(torch.cumsum, c.val(0), int(axis.item()), **kw)
    return c.call(R.cumsum, c.val(0), c.val(1), exclusive, reverse)


@op("TopK")
def _topk(c: NodeCtx):
    k = c.attr("k") if c.opset < 10 else c.const(1)
    axis, largest = c.attr("axis", -1), c.attr("largest", 1)
    if k is None:
        return c.call(R.topk, c.val(0), c.val(1), axis, largest, n_out=2)
    return c.call(
        torch.topk,
        c.val(0),
        int(k if isinstance(k, int) else k.item()),
        axis,
        bool(largest),
        True,
        n_out=2,
    )
