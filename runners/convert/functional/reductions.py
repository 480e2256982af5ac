"""Run-time helpers for Reduce*, ArgMax/ArgMin, CumSum and TopK.

Reduce* with axes known only at run time, or empty: empty axes reduce over every axis
unless noop_with_empty_axes is set (then the input is returned); the result keeps the
input's type. ArgMax/ArgMin with select_last_index return the last index of ties; CumSum
may be exclusive and/or reversed along an axis given as a tensor; TopK's k may be a
run-time tensor.
"""

from __future__ import annotations

import torch

from runners.convert.functional.common import ints, scalar, wrap_axis


def reduce(x, kind: str, axes=None, keepdims: int = 1, noop_with_empty_axes: int = 0):
    """ONNX Reduce* with axes known only at run time (or empty)."""
    axes = ints(axes)
    if not axes:
        if noop_with_empty_axes:
            return x
        axes = list(range(x.dim()))
    axes = sorted(wrap_axis(a, x.dim()) for a in axes)
    out = _reduce(x, kind, axes, bool(keepdims))
    return out if out.dtype == x.dtype else out.to(x.dtype)


def _reduce(x, kind: str, axes: list[int], k: bool):
    if kind == "sum":
        return torch.sum(x, dim=axes, keepdim=k)
    if kind == "mean":
        return torch.mean(x, dim=axes, keepdim=k)
    if kind == "max":
        return torch.amax(x, dim=axes, keepdim=k)
    if kind == "min":
        return torch.amin(x, dim=axes, keepdim=k)
    if kind == "prod":
        for a in reversed(axes):
            x = torch.prod(x, dim=a, keepdim=k)
        return x
    if kind == "l1":
        return torch.sum(torch.abs(x), dim=axes, keepdim=k)
    if kind == "l2":
        return torch.sqrt(torch.sum(x * x, dim=axes, keepdim=k))
    if kind == "sumsquare":
        return torch.sum(x * x, dim=axes, keepdim=k)
    if kind == "logsum":
        return torch.log(torch.sum(x, dim=axes, keepdim=k))
    if kind == "logsumexp":
        return torch.logsumexp(x, dim=axes, keepdim=k)
    raise ValueError(kind)


def arg_extreme(x, axis: int, keepdims: int, select_last_index: int, largest: bool):
    fn = torch.argmax if largest else torch.argmin
    if not select_last_index:
        return fn(x, dim=axis, keepdim=bool(keepdims))
    n = x.shape[axis]
    idx = fn(torch.flip(x, [axis]), dim=axis, keepdim=bool(keepdims))
    return n - 1 - idx


def cumsum(x, axis, exclusive: int = 0, reverse: int = 0):
    axis = int(scalar(axis))
    if reverse:
        x = torch.flip(x, [axis])
    y = torch.cumsum(x, dim=axis)
    if exclusive:
        y = y - x
    if reverse:
        y = torch.flip(y, [axis])
    return y


def topk(x, k, axis: int = -1, largest: int = 1, sorted_: int = 1):
    values, indices = torch.topk(x, int(scalar(k)), dim=axis, largest=bool(largest), sorted=True)
    return values, indices
