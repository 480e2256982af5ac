"""Run-time helpers for gather/scatter ops, OneHot, NonZero and Trilu.

ONNX indices may be negative and then count from the end of the axis (Gather,
GatherElements, ScatterElements, OneHot; OneHot gives all-off rows for indices out of
``[-depth, depth)``). ScatterND and ScatterElements reduce with none, add, mul, max or
min; NonZero returns an int64 ``[rank, nnz]`` tensor; Trilu's ``k`` may be a tensor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from runners.convert.functional.common import scalar, wrap_axis


def gather(x, indices, axis: int = 0):
    """ONNX Gather (negative indices wrap)."""
    axis = wrap_axis(axis, x.dim())
    n = x.shape[axis]
    indices = torch.where(indices < 0, indices + n, indices)
    out = torch.index_select(x, axis, indices.reshape(-1))
    return out.reshape(*x.shape[:axis], *indices.shape, *x.shape[axis + 1 :])


def gather_elements(x, indices, axis: int = 0):
    n = x.shape[axis]
    indices = torch.where(indices < 0, indices + n, indices)
    return torch.gather(x, axis, indices)


def gather_nd(x, indices, batch_dims: int = 0):
    if batch_dims:
        raise NotImplementedError("GatherND with batch_dims > 0")
    k = indices.shape[-1]
    idx = tuple(indices[..., i] for i in range(k))
    return x[idx]


def scatter_nd(x, indices, updates, reduction: str = "none"):
    k = indices.shape[-1]
    idx = tuple(indices[..., i] for i in range(k))
    if reduction == "none":
        return torch.index_put(x, idx, updates)
    if reduction == "add":
        return torch.index_put(x, idx, updates, accumulate=True)
    out = x.clone()
    flat_idx = indices.reshape(-1, k)
    flat_upd = updates.reshape(flat_idx.shape[0], *updates.shape[indices.dim() - 1 :])
    for i in range(flat_idx.shape[0]):
        pos = tuple(int(v) for v in flat_idx[i])
        if reduction == "mul":
            out[pos] = out[pos] * flat_upd[i]
        elif reduction == "max":
            out[pos] = torch.maximum(out[pos], flat_upd[i])
        elif reduction == "min":
            out[pos] = torch.minimum(out[pos], flat_upd[i])
        else:
            raise ValueError(reduction)
    return out


def scatter_elements(x, indices, updates, axis: int = 0, reduction: str = "none"):
    n = x.shape[axis]
    indices = torch.where(indices < 0, indices + n, indices)
    if reduction == "none":
        return torch.scatter(x, axis, indices, updates)
    reduce_name = {"add": "sum", "mul": "prod", "max": "amax", "min": "amin"}[reduction]
    return torch.scatter_reduce(x, axis, indices, updates, reduce_name, include_self=True)


def one_hot(indices, depth, values, axis: int = -1):
    depth = int(scalar(depth))
    indices = torch.where(indices < 0, indices + depth, indices).long()
    oh = F.one_hot(indices.clamp(0, depth - 1), depth)
    valid = ((indices >= 0) & (indices < depth)).unsqueeze(-1)
    oh = oh * valid
    out = torch.where(oh.bool(), values[1], values[0])
    if axis != -1 and axis != out.dim() - 1:
        out = torch.movedim(out, -1, wrap_axis(axis, out.dim()))
    return out


def non_zero(x):
    return torch.stack(torch.nonzero(x, as_tuple=True)).to(torch.int64)


def trilu(x, k=0, upper: int = 1):
    k = int(scalar(k))
    return torch.triu(x, k) if upper else torch.tril(x, k)
