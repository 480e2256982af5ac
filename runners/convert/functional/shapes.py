"""Run-time helpers for shape ops whose shape, axes, sizes or bounds are tensors.

Shape and Size (int64 results), Reshape (``0`` copies the input dim unless allowzero,
``-1`` is inferred), Flatten (to 2-D at ``axis``), Squeeze, Unsqueeze (axes of the
output), Transpose (reversed dims without perm), Expand (bidirectional broadcast), Tile,
Split (equal chunks, the last one smaller, without sizes), Slice (negative steps, bounds
clamped as ONNX does), ConstantOfShape and Range.
"""

from __future__ import annotations

import math

import torch

from runners.convert.functional.common import ints, scalar, wrap_axis


def shape(x, start: int = 0, end: int | None = None):
    return torch.tensor(list(x.shape)[start:end], dtype=torch.int64, device=x.device)


def size(x):
    return torch.tensor(x.numel(), dtype=torch.int64, device=x.device)


def reshape(x, shape, allowzero: int = 0):
    """ONNX Reshape: ``0`` copies the input dim (unless allowzero), ``-1`` is inferred."""
    target = ints(shape)
    if not allowzero:
        target = [x.shape[i] if s == 0 else s for i, s in enumerate(target)]
    return torch.reshape(x, target)


def flatten(x, axis: int = 1):
    axis = wrap_axis(axis, x.dim())
    lead = math.prod(x.shape[:axis])
    return torch.reshape(x, (lead, math.prod(x.shape[axis:])))


def squeeze(x, axes=None):
    axes = ints(axes)
    if not axes:
        return torch.squeeze(x)
    return torch.squeeze(x, tuple(wrap_axis(a, x.dim()) for a in axes))


def unsqueeze(x, axes):
    axes = ints(axes)
    rank = x.dim() + len(axes)
    for a in sorted(wrap_axis(a, rank) for a in axes):
        x = torch.unsqueeze(x, a)
    return x


def transpose(x, perm=None):
    perm = ints(perm) if perm is not None else list(reversed(range(x.dim())))
    return torch.permute(x, perm)


def expand(x, shape):
    """ONNX Expand: bidirectional broadcast of ``x`` with ``shape``."""
    out = torch.broadcast_shapes(tuple(x.shape), tuple(ints(shape)))
    return x.expand(out)


def tile(x, repeats):
    return torch.tile(x, tuple(ints(repeats)))


def split(x, axis: int, sizes=None, n: int = 1):
    if sizes is None or len(ints(sizes)) == 0:
        dim = x.shape[axis]
        chunk = -(-dim // n)
        sizes = [min(chunk, dim - i * chunk) for i in range(n)]
    return tuple(torch.split(x, ints(sizes), dim=axis))


def slice_(x, starts, ends, axes=None, steps=None):
    """ONNX Slice (negative steps included) with Python-style clamping of bounds."""
    starts, ends = ints(starts), ints(ends)
    axes = ints(axes) if axes is not None and len(ints(axes)) else list(range(len(starts)))
    steps = ints(steps) if steps is not None and len(ints(steps)) else [1] * len(starts)
    index: list = [slice(None)] * x.dim()
    flips = []
    for s, e, a, st in zip(starts, ends, axes, steps, strict=True):
        a = wrap_axis(a, x.dim())
        n = x.shape[a]
        if st > 0:
            index[a] = slice(s, e, st)
            continue
        # negative step: clamp as ONNX does, then slice the flipped axis forward
        s = s + n if s < 0 else s
        e = e + n if e < 0 else e
        s = min(max(s, -1), n - 1)
        e = min(max(e, -1), n - 1)
        # elements s, s+st, ... > e  ->  in flipped coordinates (n-1-s) ... < (n-1-e)
        index[a] = slice(n - 1 - s, n - 1 - e, -st)
        flips.append(a)
    if flips:
        x = torch.flip(x, flips)
    return x[tuple(index)]


def constant_of_shape(shape, value: torch.Tensor):
    device = shape.device if isinstance(shape, torch.Tensor) else value.device
    return torch.full(ints(shape), value.reshape(-1)[0].item(), dtype=value.dtype, device=device)


def range_(start, limit, delta):
    ref = next((t for t in (start, limit, delta) if isinstance(t, torch.Tensor)), None)
    dtype = ref.dtype if ref is not None else None
    device = ref.device if ref is not None else None
    return torch.arange(scalar(start), scalar(limit), scalar(delta), dtype=dtype, device=device)
