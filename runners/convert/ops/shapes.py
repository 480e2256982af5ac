"""Shape ops: Shape, Size, Reshape, Flatten, Squeeze, Unsqueeze, Transpose, Expand, Tile...

Also Concat, Split and Slice. ONNX semantics kept: Shape takes start/end (opset 15);
Reshape's ``0`` copies the input dim unless allowzero, ``-1`` is inferred; Flatten
reshapes to 2-D at ``axis``; Squeeze/Unsqueeze/Split take axes or sizes as attributes
before opset 13 and as inputs from 13; Unsqueeze's axes index the output; Transpose
without perm reverses the dims; Expand broadcasts both ways; Split without sizes gives
equal chunks, the last one smaller; Slice takes attributes before opset 10 and inputs
from 10 (negative steps included). Shapes known at conversion time reach torch as
Python lists; a static Shape is a constant.
"""

from __future__ import annotations

import math
import operator

import torch

from runners.convert import functional as R
from runners.convert.core import NodeCtx
from runners.convert.ops.registry import is_static_shape, op


@op("Shape")
def _shape(c: NodeCtx):
    start, end = c.attr("start", 0), c.attr("end")
    shape = c.shape(0)
    if is_static_shape(shape):
        return torch.tensor(shape[start:end], dtype=torch.int64)
    return c.call(R.shape, c.val(0), start, end)


@op("Size")
def _size(c: NodeCtx):
    shape = c.shape(0)
    if is_static_shape(shape):
        return torch.tensor(math.prod(shape), dtype=torch.int64)
    return c.call(R.size, c.val(0))


@op("Reshape")
def _reshape(c: NodeCtx):
    x = c.val(0)
    allowzero = c.attr("allowzero", 0)
    target = c.ints_or_node(1)
    if isinstance(target, list):
        if not allowzero and 0 in target:
            shape = c.shape(0)
            if shape is None or any(
                t == 0 and (i >= len(shape) or not isinstance(shape[i], int))
                for i, t in enumerate(target)
            ):
                return c.call(R.reshape, x, target, 0)
            target = [shape[i] if t == 0 else t for i, t in enumerate(target)]
        return c.call(torch.reshape, x, target)
    return c.call(R.reshape, x, target, allowzero)


@op("Flatten")
def _flatten(c: NodeCtx):
    axis = c.attr("axis", 1)
    shape = c.shape(0)
    if shape is not None:
        axis = axis + len(shape) if axis < 0 else axis
        if axis == 0:
            return c.call(torch.reshape, c.val(0), [1, -1])
        if axis == 1 and len(shape) >= 2:
            return c.call(torch.flatten, c.val(0), 1)
        if is_static_shape(shape[:axis]):
            return c.call(torch.reshape, c.val(0), [math.prod(shape[:axis]), -1])
    return c.call(R.flatten, c.val(0), axis)


@op("Squeeze")
def _squeeze(c: NodeCtx):
    axes = c.attr("axes")
    axes = list(axes) if axes is not None else c.ints_or_node(1)
    if axes is None or (isinstance(axes, list) and not axes):
        return c.call(torch.squeeze, c.val(0))
    if isinstance(axes, list):
        return c.call(torch.squeeze, c.val(0), tuple(axes) if len(axes) > 1 else axes[0])
    return c.call(R.squeeze, c.val(0), axes)


@op("Unsqueeze")
def _unsqueeze(c: NodeCtx):
    axes = c.attr("axes")
    axes = list(axes) if axes is not None else c.ints_or_node(1)
    x = c.val(0)
    if isinstance(axes, list):
        if len(axes) == 1:
            return c.call(torch.unsqueeze, x, axes[0])
        rank = c.rank(0)
        if rank is not None or all(a >= 0 for a in axes):
            out_rank = (rank or 0) + len(axes)
            for a in sorted(a + out_rank if a < 0 else a for a in axes):
                x = c.call(torch.unsqueeze, x, a)
            return x
    return c.call(R.unsqueeze, x, axes)


@op("Transpose")
def _transpose(c: NodeCtx):
    perm = c.attr("perm")
    if perm is None:
        rank = c.rank(0)
        if rank is None:
            return c.call(R.transpose, c.val(0), None)
        perm = list(reversed(range(rank)))
    return c.call(torch.permute, c.val(0), list(perm))


@op("Expand")
def _expand(c: NodeCtx):
    x = c.val(0)
    target = c.ints_or_node(1)
    rank = c.rank(0)
    if isinstance(target, list) and rank is not None:
        r = max(rank, len(target))
        full = [1] * (r - len(target)) + target
        out = []
        for i, t in enumerate(full):
            inside = i >= r - rank  # position exists in x
            out.append(-1 if (t == 1 and inside) else t)
        if r == rank and all(t == -1 for t in out):
            return x
        return c.call(torch.broadcast_to, x, out)
    return c.call(R.expand, x, target)


@op("Tile")
def _tile(c: NodeCtx):
    reps = c.ints_or_node(1)
    if isinstance(reps, list):
        return c.call(torch.tile, c.val(0), reps)
    return c.call(R.tile, c.val(0), reps)


@op("Concat")
def _concat(c: NodeCtx):
    return c.call(torch.cat, c.vals(), c.attr("axis"))


@op("Split")
def _split(c: NodeCtx):
    x = c.val(0)
    axis = c.attr("axis", 0)
    n = len(c.node.output)
    sizes = c.attr("split")
    sizes = list(sizes) if sizes is not None else c.ints_or_node(1)
    if n == 1:
        return x
    if sizes is None or (isinstance(sizes, list) and not sizes):
        shape = c.shape(0)
        dim = shape[axis] if shape is not None else None
        if isinstance(dim, int):
            chunk = -(-dim // n)
            sizes = [min(chunk, dim - i * chunk) for i in range(n)]
        else:
            return c.call(R.split, x, axis, None, n, n_out=n)
    if isinstance(sizes, list):
        return c.call(torch.split, x, sizes, axis, n_out=n)
    return c.call(R.split, x, axis, sizes, n, n_out=n)


@op("Slice")
def _slice(c: NodeCtx):
    x = c.val(0)
    if c.opset < 10:
        starts, ends = list(c.attr("starts")), list(c.attr("ends"))
        axes = c.attr("axes")
        axes = list(axes) if axes is not None else list(range(len(starts)))
        steps = [1] * len(starts)
    else:
        starts, ends = c.ints_or_node(1), c.ints_or_node(2)
        axes = c.ints_or_node(3) if c.has(3) else None
        steps = c.ints_or_node(4) if c.has(4) else None
    static = all(isinstance(v, list) or v is None for v in (starts, ends, axes, steps))
    if static:
        axes = axes if axes is not None else list(range(len(starts)))
        steps = steps if steps is not None else [1] * len(starts)
        rank = c.rank(0)
        if all(s > 0 for s in steps) and (rank is not None or all(a >= 0 for a in axes)):
            norm = [a + rank if a < 0 else a for a in axes] if rank is not None else axes
            index = [slice(None)] * (max(norm) + 1)
            for s, e, a, st in zip(starts, ends, norm, steps, strict=True):
                index[a] = slice(s, e, None if st == 1 else st)
            return c.call(operator.getitem, x, tuple(index))
    return c.call(R.slice_, x, starts, ends, axes, steps)
