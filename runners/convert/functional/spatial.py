"""Run-time helpers for Conv, ConvTranspose and the pools that torch cannot do in one call.

They pad explicitly (asymmetric pads, auto_pad SAME_* on the actual input shape), then
call torch with zero padding: MaxPool pads with -inf, AveragePool divides window sums by
the number of cells counted (count_include_pad or not), ceil_mode drops the windows that
start in the end padding as onnxruntime does, and ConvTranspose computes the full
transpose, then crops ``pads`` or to ``output_shape``. GlobalLpPool and LpPool are
``(sum |x|^p) ^ (1/p)`` over the window.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from runners.convert.functional.common import ints
from runners.convert.functional.padding import auto_pad, same_pads, torch_pad_list

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def conv(x, w, b, strides, pads, dilations, groups: int, auto_pad_mode: str = "NOTSET"):
    """Conv with asymmetric or automatic padding (the simple case is F.convNd directly)."""
    nd = w.dim() - 2
    if auto_pad_mode in ("SAME_UPPER", "SAME_LOWER"):
        x = auto_pad(x, list(w.shape[2:]), strides, dilations, auto_pad_mode)
    elif pads is not None and any(pads):
        x = F.pad(x, torch_pad_list(ints(pads)))
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
        y = F.pad(y, torch_pad_list([0] * nd + extra))
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
        pads = same_pads(
            list(x.shape[2:]), kernel, ints(strides), ints(dilations), auto_pad_mode == "SAME_UPPER"
        )
    pads = ints(pads) or [0] * (2 * nd)
    strides, dilations = ints(strides) or [1] * nd, ints(dilations) or [1] * nd
    in_sizes = list(x.shape[2:])
    if any(pads):
        x = F.pad(x, torch_pad_list(pads), value=float("-inf"))
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
        pads = same_pads(
            list(x.shape[2:]), kernel, strides, [1] * nd, auto_pad_mode == "SAME_UPPER"
        )
    pads = ints(pads) or [0] * (2 * nd)
    tpads = torch_pad_list(pads)
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
    x = F.pad(x, torch_pad_list(pads))
    return _sum_pool(x.abs() ** p, kernel, ints(strides) or [1] * nd, False) ** (1.0 / p)


def global_pool(x, kind: str = "avg", p: int = 2):
    dims = list(range(2, x.dim()))
    if kind == "avg":
        return x.mean(dim=dims, keepdim=True)
    if kind == "max":
        return x.amax(dim=dims, keepdim=True)
    return torch.linalg.vector_norm(x, ord=p, dim=dims, keepdim=True)
