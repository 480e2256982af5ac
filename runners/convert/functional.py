"""Runtime helpers called from converted graphs (``call_function`` targets).

Each helper implements one ONNX operator's semantics where no single torch op matches
(ONNX ``0`` entries in Reshape, negative Gather indices, asymmetric pads, Resize
coordinate modes...). They are plain functions of tensors and Python values, built from
differentiable torch ops, so autograd sees through them. Arguments that ONNX gives as
tensors but that must be known to shape the result (shapes, axes, pads) arrive as Python
lists when the converter knew them, or as int64 tensors computed at run time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

IntsLike = Sequence[int] | torch.Tensor


def ints(v: IntsLike | int | None) -> list[int]:
    """A list of Python ints from a list, a tuple, an int or an integer tensor."""
    if v is None:
        return []
    if isinstance(v, torch.Tensor):
        return [int(i) for i in v.reshape(-1).tolist()]
    if isinstance(v, int):
        return [v]
    return [int(i) for i in v]


def floats(v) -> list[float]:
    if v is None:
        return []
    if isinstance(v, torch.Tensor):
        return [float(i) for i in v.reshape(-1).tolist()]
    return [float(i) for i in v]


def scalar(v):
    """A Python number from a number or a one-element tensor."""
    if isinstance(v, torch.Tensor):
        return v.reshape(-1)[0].item()
    return v


def _axis(a: int, rank: int) -> int:
    return a + rank if a < 0 else a


# ----------------------------------------------------------------------------- arithmetic


def div(a, b):
    """ONNX Div: true division for floats, truncation toward zero for integers."""
    a_int = not (a.is_floating_point() if isinstance(a, torch.Tensor) else isinstance(a, float))
    b_int = not (b.is_floating_point() if isinstance(b, torch.Tensor) else isinstance(b, float))
    if a_int and b_int:
        return torch.div(a, b, rounding_mode="trunc")
    return a / b


def pow_(a, b):
    """ONNX Pow: the result has the base's type."""
    out = torch.pow(a, b)
    return out.to(a.dtype) if out.dtype != a.dtype else out


def prelu(x, slope):
    return torch.where(x >= 0, x, x * slope)


def hard_sigmoid(x, alpha: float = 0.2, beta: float = 0.5):
    return torch.clamp(x * alpha + beta, 0.0, 1.0)


def selu(x, alpha: float, gamma: float):
    return gamma * torch.where(x > 0, x, alpha * (torch.exp(x) - 1))


def clip(x, lo=None, hi=None):
    """ONNX Clip with optional tensor bounds (``torch.clamp`` needs matching kinds)."""
    if isinstance(lo, torch.Tensor):
        x = torch.maximum(x, lo.to(x.dtype))
    elif lo is not None:
        x = torch.clamp(x, min=lo)
    if isinstance(hi, torch.Tensor):
        x = torch.minimum(x, hi.to(x.dtype))
    elif hi is not None:
        x = torch.clamp(x, max=hi)
    return x


def softmax_2d(x, axis: int, log: bool = False):
    """Softmax/LogSoftmax before opset 13: over the input flattened to 2-D at ``axis``."""
    axis = _axis(axis, x.dim())
    flat = x.reshape(math.prod(x.shape[:axis]), -1)
    out = F.log_softmax(flat, dim=1) if log else F.softmax(flat, dim=1)
    return out.reshape(x.shape)


def hardmax(x, axis: int, legacy: bool = False):
    shape = x.shape
    if legacy:
        axis = _axis(axis, x.dim())
        x = x.reshape(math.prod(shape[:axis]), -1)
        axis = 1
    idx = torch.argmax(x, dim=axis, keepdim=True)
    out = torch.zeros_like(x).scatter(axis, idx, 1.0)
    return out.reshape(shape)


# ----------------------------------------------------------------------------- normalization


def batch_norm_training(x, scale, bias, mean, var, eps: float, momentum: float, n_out: int):
    """BatchNormalization with training_mode=1: batch statistics, updated running stats."""
    dims = [0, *range(2, x.dim())]
    batch_mean = x.mean(dim=dims)
    batch_var = x.var(dim=dims, unbiased=False)
    shape = [1, -1] + [1] * (x.dim() - 2)
    y = (x - batch_mean.reshape(shape)) / torch.sqrt(batch_var.reshape(shape) + eps)
    y = y * scale.reshape(shape) + bias.reshape(shape)
    if n_out == 1:
        return y
    run_mean = mean * momentum + batch_mean * (1 - momentum)
    run_var = var * momentum + batch_var * (1 - momentum)
    return (y, run_mean, run_var)


def batch_norm(x, scale, bias, mean, var, eps: float):
    """Inference BatchNormalization with statistics that are computed tensors."""
    shape = [1, -1] + [1] * (x.dim() - 2)
    inv = torch.rsqrt(var.reshape(shape) + eps)
    return (x - mean.reshape(shape)) * inv * scale.reshape(shape) + bias.reshape(shape)


def layer_norm(x, scale, bias, axis: int, eps: float, n_out: int = 1):
    """LayerNormalization over dims ``axis..``; scale/bias broadcast to those dims."""
    axis = _axis(axis, x.dim())
    dims = list(range(axis, x.dim()))
    norm_shape = list(x.shape[axis:])
    if (
        n_out == 1
        and list(scale.shape) == norm_shape
        and (bias is None or list(bias.shape) == norm_shape)
    ):
        return F.layer_norm(x, norm_shape, scale, bias, eps)
    mean = x.mean(dim=dims, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=dims, keepdim=True)
    inv = torch.rsqrt(var + eps)
    y = (x - mean) * inv * scale
    if bias is not None:
        y = y + bias
    return (y, mean, inv)[:n_out] if n_out > 1 else y


def group_norm(x, scale, bias, num_groups: int, eps: float, per_group: bool):
    """GroupNormalization; opset 18 gives scale/bias per group, opset 21 per channel."""
    c = x.shape[1]
    if per_group:
        scale = scale.repeat_interleave(c // num_groups)
        bias = bias.repeat_interleave(c // num_groups)
    return F.group_norm(x, num_groups, scale, bias, eps)


def lp_normalization(x, axis: int = -1, p: int = 2):
    return x / torch.linalg.vector_norm(x, ord=p, dim=axis, keepdim=True)


def mean_variance_normalization(x, axes=(0, 2, 3)):
    axes = ints(axes)
    mean = x.mean(dim=axes, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=axes, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-9)


# ----------------------------------------------------------------------------- conv / pool


def _same_pads(in_sizes, kernel, strides, dilations, upper: bool) -> list[int]:
    begins, ends = [], []
    for n, k, s, d in zip(in_sizes, kernel, strides, dilations, strict=True):
        out = -(-n // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - n)
        small = total // 2
        begins.append(small if upper else total - small)
        ends.append(total - small if upper else small)
    return begins + ends


def _torch_pad_list(pads: Sequence[int]) -> list[int]:
    """ONNX pads (begins then ends, first axis first) -> F.pad order (last axis first)."""
    n = len(pads) // 2
    out: list[int] = []
    for i in reversed(range(n)):
        out += [pads[i], pads[i + n]]
    return out


def auto_pad(x, kernel, strides, dilations, mode: str, value: float = 0.0):
    """Pad the spatial dims of ``x`` as ONNX auto_pad SAME_UPPER / SAME_LOWER do."""
    kernel = ints(kernel)
    pads = _same_pads(
        list(x.shape[2:]), kernel, ints(strides), ints(dilations), mode == "SAME_UPPER"
    )
    if not any(pads):
        return x
    return F.pad(x, _torch_pad_list(pads), value=value)


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def conv(x, w, b, strides, pads, dilations, groups: int, auto_pad_mode: str = "NOTSET"):
    """Conv with asymmetric or automatic padding (the simple case is F.convNd directly)."""
    nd = w.dim() - 2
    if auto_pad_mode in ("SAME_UPPER", "SAME_LOWER"):
        x = auto_pad(x, list(w.shape[2:]), strides, dilations, auto_pad_mode)
    elif pads is not None and any(pads):
        x = F.pad(x, _torch_pad_list(ints(pads)))
    return _CONV[nd](x, w, b, ints(strides), 0, ints(dilations), groups)


def conv_transpose(
    x,
    w,
    b,
    strides,
    pads,
    dilations,
    groups: int,
    output_padding,
    output_shape=None,
    auto_pad_mode: str = "NOTSET",
):
    """ConvTranspose with ONNX pads/output_shape/auto_pad, as a full transpose then a crop."""
    nd = w.dim() - 2
    strides, dilations = ints(strides), ints(dilations)
    output_padding = ints(output_padding) or [0] * nd
    kernel = list(w.shape[2:])
    in_sizes = list(x.shape[2:])
    full = [
        (n - 1) * s + (k - 1) * d + 1 + op
        for n, s, k, d, op in zip(in_sizes, strides, kernel, dilations, output_padding, strict=True)
    ]
    if output_shape is not None and len(ints(output_shape)):
        want = ints(output_shape)[-nd:]
        total = [f - o for f, o in zip(full, want, strict=True)]
        upper = auto_pad_mode != "SAME_LOWER"
        begins = [t // 2 if upper else t - t // 2 for t in total]
        pads = begins + [t - bgn for t, bgn in zip(total, begins, strict=True)]
    elif auto_pad_mode in ("SAME_UPPER", "SAME_LOWER"):
        want = [n * s for n, s in zip(in_sizes, strides, strict=True)]
        total = [f - o for f, o in zip(full, want, strict=True)]
        upper = auto_pad_mode == "SAME_UPPER"
        begins = [t // 2 if upper else t - t // 2 for t in total]
        pads = begins + [t - bgn for t, bgn in zip(total, begins, strict=True)]
    else:
        pads = ints(pads) or [0] * (2 * nd)
    # full transpose: output_padding cells at the end get only the bias
    y = _CONV_T[nd](x, w, None, strides, 0, 0, groups, dilations)
    extra = [f - s for f, s in zip(full, y.shape[2:], strict=True)]
    if any(extra):
        y = F.pad(y, _torch_pad_list([0] * nd + extra))
    index = [slice(None), slice(None)]
    for i in range(nd):
        index.append(slice(pads[i], y.shape[2 + i] - pads[i + nd]))
    y = y[tuple(index)]
    if b is not None:
        y = y + b.reshape([1, -1] + [1] * nd)
    return y


_MAXPOOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}


def _ceil_crop(y, in_sizes, pads, kernel, strides, dilations):
    """Drop ceil-mode windows that start in the end padding (torch and onnxruntime do)."""
    nd = len(kernel)
    index = [slice(None), slice(None)]
    for i in range(nd):
        n, pb, pe = in_sizes[i], pads[i], pads[i + nd]
        k = (kernel[i] - 1) * dilations[i] + 1
        out = -(-(n + pb + pe - k) // strides[i]) + 1
        if (out - 1) * strides[i] >= n + pb:
            out -= 1
        index.append(slice(0, out))
    return y[tuple(index)]


def max_pool(x, kernel, strides, pads, dilations, ceil_mode: int = 0, auto_pad_mode="NOTSET"):
    """MaxPool with asymmetric / automatic padding (pads with -inf, then pools)."""
    kernel = ints(kernel)
    nd = len(kernel)
    if auto_pad_mode in ("SAME_UPPER", "SAME_LOWER"):
        pads = _same_pads(
            list(x.shape[2:]), kernel, ints(strides), ints(dilations), auto_pad_mode == "SAME_UPPER"
        )
    pads = ints(pads) or [0] * (2 * nd)
    strides, dilations = ints(strides) or [1] * nd, ints(dilations) or [1] * nd
    in_sizes = list(x.shape[2:])
    if any(pads):
        x = F.pad(x, _torch_pad_list(pads), value=float("-inf"))
    y = _MAXPOOL[nd](x, kernel, strides, 0, dilations, bool(ceil_mode))
    return _ceil_crop(y, in_sizes, pads, kernel, strides, dilations) if ceil_mode else y


def _sum_pool(x, kernel: list[int], strides: list[int], ceil_mode: bool):
    """Window sums (no padding); 1-D pools go through the 2-D kernel for divisor_override."""
    nd = len(kernel)
    if nd == 1:
        y = F.avg_pool2d(x.unsqueeze(-2), [1, *kernel], [1, *strides], 0, ceil_mode, True, 1)
        return y.squeeze(-2)
    fn = F.avg_pool2d if nd == 2 else F.avg_pool3d
    return fn(x, kernel, strides, 0, ceil_mode, True, 1)


def avg_pool(
    x, kernel, strides, pads, ceil_mode: int = 0, count_include_pad: int = 0, auto_pad_mode="NOTSET"
):
    """AveragePool with asymmetric / automatic padding: window sums of the zero-padded
    input over the number of cells counted (padding included or not)."""
    kernel = ints(kernel)
    nd = len(kernel)
    strides = ints(strides) or [1] * nd
    if auto_pad_mode in ("SAME_UPPER", "SAME_LOWER"):
        pads = _same_pads(
            list(x.shape[2:]), kernel, strides, [1] * nd, auto_pad_mode == "SAME_UPPER"
        )
    pads = ints(pads) or [0] * (2 * nd)
    tpads = _torch_pad_list(pads)
    xp = F.pad(x, tpads)
    ones = torch.ones((1, 1, *x.shape[2:]), dtype=x.dtype, device=x.device)
    ones = F.pad(ones, tpads, value=1.0 if count_include_pad else 0.0)
    total = _sum_pool(xp, kernel, strides, bool(ceil_mode))
    count = _sum_pool(ones, kernel, strides, bool(ceil_mode))
    y = total / count
    if ceil_mode:
        y = _ceil_crop(y, list(x.shape[2:]), pads, kernel, strides, [1] * nd)
    return y


def lp_pool(x, kernel, strides, pads, p: int = 2):
    kernel = ints(kernel)
    nd = len(kernel)
    pads = ints(pads) or [0] * (2 * nd)
    x = F.pad(x, _torch_pad_list(pads))
    return _sum_pool(x.abs() ** p, kernel, ints(strides) or [1] * nd, False) ** (1.0 / p)


def global_pool(x, kind: str = "avg", p: int = 2):
    dims = list(range(2, x.dim()))
    if kind == "avg":
        return x.mean(dim=dims, keepdim=True)
    if kind == "max":
        return x.amax(dim=dims, keepdim=True)
    return torch.linalg.vector_norm(x, ord=p, dim=dims, keepdim=True)


# ----------------------------------------------------------------------------- reductions


def reduce(x, kind: str, axes=None, keepdims: int = 1, noop_with_empty_axes: int = 0):
    """ONNX Reduce* with axes known only at run time (or empty)."""
    axes = ints(axes)
    if not axes:
        if noop_with_empty_axes:
            return x
        axes = list(range(x.dim()))
    axes = sorted(_axis(a, x.dim()) for a in axes)
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


# ----------------------------------------------------------------------------- shapes


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
    axis = _axis(axis, x.dim())
    lead = math.prod(x.shape[:axis])
    return torch.reshape(x, (lead, math.prod(x.shape[axis:])))


def squeeze(x, axes=None):
    axes = ints(axes)
    if not axes:
        return torch.squeeze(x)
    return torch.squeeze(x, tuple(_axis(a, x.dim()) for a in axes))


def unsqueeze(x, axes):
    axes = ints(axes)
    rank = x.dim() + len(axes)
    for a in sorted(_axis(a, rank) for a in axes):
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
        a = _axis(a, x.dim())
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


def gather(x, indices, axis: int = 0):
    """ONNX Gather (negative indices wrap)."""
    axis = _axis(axis, x.dim())
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
        out = torch.movedim(out, -1, _axis(axis, out.dim()))
    return out


def constant_of_shape(shape, value: torch.Tensor):
    device = shape.device if isinstance(shape, torch.Tensor) else value.device
    return torch.full(ints(shape), value.reshape(-1)[0].item(), dtype=value.dtype, device=device)


def range_(start, limit, delta):
    ref = next((t for t in (start, limit, delta) if isinstance(t, torch.Tensor)), None)
    dtype = ref.dtype if ref is not None else None
    device = ref.device if ref is not None else None
    return torch.arange(scalar(start), scalar(limit), scalar(delta), dtype=dtype, device=device)


def non_zero(x):
    return torch.stack(torch.nonzero(x, as_tuple=True)).to(torch.int64)


def trilu(x, k=0, upper: int = 1):
    k = int(scalar(k))
    return torch.triu(x, k) if upper else torch.tril(x, k)


# ----------------------------------------------------------------------------- pad / resize


def _edge_or_reflect_index(n: int, before: int, after: int, mode: str, device) -> torch.Tensor:
    i = torch.arange(-before, n + after, device=device)
    if mode == "edge":
        return i.clamp(0, n - 1)
    if mode == "wrap":
        return torch.remainder(i, n)
    # reflect (no edge repeat)
    if n == 1:
        return torch.zeros_like(i)
    period = 2 * (n - 1)
    i = torch.remainder(i, period)
    return torch.where(i >= n, period - i, i)


def pad(x, pads, mode: str = "constant", value=0.0, axes=None):
    """ONNX Pad on any axes: constant (negative pads crop), reflect, edge and wrap."""
    pads = ints(pads)
    value = 0.0 if value is None else scalar(value)
    r = x.dim()
    if axes is not None and len(ints(axes)):
        ax = [_axis(a, r) for a in ints(axes)]
        full = [0] * (2 * r)
        for j, a in enumerate(ax):
            full[a] = pads[j]
            full[a + r] = pads[j + len(ax)]
        pads = full
    if mode == "constant":
        return F.pad(x, _torch_pad_list(pads), value=value)
    for a in range(r):
        before, after = pads[a], pads[a + r]
        if before == 0 and after == 0:
            continue
        if before < 0 or after < 0:
            x = x.narrow(a, max(0, -before), x.shape[a] - max(0, -before) - max(0, -after))
            before, after = max(0, before), max(0, after)
        idx = _edge_or_reflect_index(x.shape[a], before, after, mode, x.device)
        x = torch.index_select(x, a, idx)
    return x


def _source_coords(out_n: int, in_n: int, scale: float, mode: str, roi=None, device=None):
    i = torch.arange(out_n, dtype=torch.float64, device=device)
    if mode == "half_pixel":
        return (i + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return (i + 0.5) / scale - 0.5 if out_n > 1 else torch.zeros_like(i)
    if mode == "align_corners":
        return i * (in_n - 1) / (out_n - 1) if out_n > 1 else torch.zeros_like(i)
    if mode == "asymmetric":
        return i / scale
    if mode == "half_pixel_symmetric":
        adj = out_n / (scale * in_n)
        center = in_n / 2
        offset = center * (1 - adj)
        return offset + (i + 0.5) / scale - 0.5
    if mode == "tf_crop_and_resize":
        start, end = roi
        if out_n > 1:
            return start * (in_n - 1) + i * (end - start) * (in_n - 1) / (out_n - 1)
        return torch.full_like(i, 0.5 * (start + end) * (in_n - 1))
    raise NotImplementedError(f"Resize coordinate_transformation_mode={mode!r}")


def _nearest(coords: torch.Tensor, mode: str, scale: float) -> torch.Tensor:
    if mode == "round_prefer_floor":
        idx = torch.ceil(coords - 0.5)
    elif mode == "round_prefer_ceil":
        idx = torch.floor(coords + 0.5)
    elif mode == "floor":
        idx = torch.floor(coords)
    elif mode == "ceil":
        idx = torch.ceil(coords)
    else:
        raise NotImplementedError(f"Resize nearest_mode={mode!r}")
    return idx.long()


def resize(
    x,
    roi=None,
    scales=None,
    sizes=None,
    mode: str = "nearest",
    coordinate_transformation_mode: str = "half_pixel",
    nearest_mode: str = "round_prefer_floor",
    axes=None,
    keep_aspect_ratio_policy: str = "stretch",
    cubic_coeff_a: float = -0.75,
    exclude_outside: int = 0,
    extrapolation_value: float = 0.0,
):
    """ONNX Resize (nearest and linear), one axis at a time with index arithmetic."""
    r = x.dim()
    ax = (
        [_axis(a, r) for a in ints(axes)]
        if axes is not None and len(ints(axes))
        else list(range(r))
    )
    in_sizes = [x.shape[a] for a in ax]
    sizes_l = ints(sizes) if sizes is not None else []
    scales_l = floats(scales) if scales is not None else []
    if sizes_l:
        if keep_aspect_ratio_policy != "stretch":
            ratios = [o / i for o, i in zip(sizes_l, in_sizes, strict=True)]
            s = min(ratios) if keep_aspect_ratio_policy == "not_larger" else max(ratios)
            sizes_l = [int(math.floor(i * s + 0.5)) for i in in_sizes]
            scales_l = [s] * len(ax)
        else:
            scales_l = [o / i for o, i in zip(sizes_l, in_sizes, strict=True)]
    elif scales_l:
        sizes_l = [int(math.floor(i * s)) for i, s in zip(in_sizes, scales_l, strict=True)]
    else:
        raise ValueError("Resize needs scales or sizes")
    roi_l = floats(roi) if roi is not None else []
    if mode == "cubic":
        raise NotImplementedError("Resize mode 'cubic' is not supported by pipeplan's converter")
    for j, a in enumerate(ax):
        n_in, n_out, s = in_sizes[j], sizes_l[j], scales_l[j]
        if n_in == n_out and coordinate_transformation_mode != "tf_crop_and_resize":
            continue
        roi_a = None
        if roi_l:
            roi_a = (
                roi_l[j] if len(roi_l) == 2 * len(ax) else roi_l[a],
                roi_l[j + len(ax)] if len(roi_l) == 2 * len(ax) else roi_l[a + r],
            )
        coords = _source_coords(n_out, n_in, s, coordinate_transformation_mode, roi_a, x.device)
        outside = (coords < 0) | (coords > n_in - 1)
        if mode == "nearest":
            idx = _nearest(coords, nearest_mode, s).clamp(0, n_in - 1)
            y = torch.index_select(x, a, idx)
        else:  # linear
            c = coords.clamp(0, n_in - 1)
            lo = torch.floor(c).long().clamp(0, n_in - 1)
            hi = (lo + 1).clamp(max=n_in - 1)
            w = (c - lo.to(c.dtype)).to(x.dtype)
            shape = [1] * r
            shape[a] = n_out
            w = w.reshape(shape)
            y = torch.index_select(x, a, lo) * (1 - w) + torch.index_select(x, a, hi) * w
        if coordinate_transformation_mode == "tf_crop_and_resize" and bool(outside.any()):
            shape = [1] * r
            shape[a] = n_out
            y = torch.where(
                outside.reshape(shape),
                torch.tensor(extrapolation_value, dtype=y.dtype, device=y.device),
                y,
            )
        x = y
    return x


# ----------------------------------------------------------------------------- misc


def dropout(x, ratio=0.5, training_mode=False, n_out: int = 1):
    train = bool(scalar(training_mode)) if training_mode is not None else False
    y = F.dropout(x, float(scalar(ratio)), training=True) if train else x
    if n_out == 1:
        return y
    mask = (y != 0) if train else torch.ones_like(x, dtype=torch.bool)
    return (y, mask)
