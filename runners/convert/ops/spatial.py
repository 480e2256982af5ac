"""Convolutions and pools: Conv, ConvTranspose, MaxPool, AveragePool, LpPool, Global*Pool.

Kernels are 1-, 2- or 3-D. ONNX pads list every axis' begin, then every axis' end;
auto_pad SAME_UPPER / SAME_LOWER give ``out = ceil(in / stride)`` (the odd cell at the
end for UPPER, at the beginning for LOWER) and VALID no padding. Symmetric pads that
torch accepts (for pools, at most half the dilated kernel) map to ``F.convNd`` /
``F.*_poolNd`` directly; asymmetric pads, auto_pad on a spatial shape unknown at
conversion time, ConvTranspose output_shape and AveragePool ceil_mode go to the run-time
helpers. MaxPool's Indices output and AveragePool dilations are not supported.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from runners.convert import functional as R
from runners.convert.core import NodeCtx
from runners.convert.functional.padding import same_pads
from runners.convert.ops.registry import is_static_shape, n_outputs, op

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


_MAXPOOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}


_AVGPOOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def _spatial(c: NodeCtx, nd: int):
    strides = list(c.attr("strides", [1] * nd))
    dilations = list(c.attr("dilations", [1] * nd))
    pads = list(c.attr("pads", [0] * (2 * nd)))
    return strides, dilations, pads


def _resolve_auto_pad(c: NodeCtx, kernel, strides, dilations, pads):
    """Explicit pads for auto_pad when the spatial input shape is static, else None."""
    mode = c.attr("auto_pad", "NOTSET")
    if mode == "VALID":
        return [0] * len(pads), "NOTSET"
    if mode in ("SAME_UPPER", "SAME_LOWER"):
        shape = c.shape(0)
        if shape is not None and is_static_shape(shape[2:]) and is_static_shape(kernel):
            return (
                same_pads(shape[2:], kernel, strides, dilations, mode == "SAME_UPPER"),
                "NOTSET",
            )
        return None, mode
    return pads, "NOTSET"


def _symmetric(pads: list[int]) -> bool:
    n = len(pads) // 2
    return pads[:n] == pads[n:]


@op("Conv")
def _conv(c: NodeCtx):
    x, w, b = c.val(0), c.val(1), c.val(2)
    w_shape = c.shape(1)
    kernel = list(c.attr("kernel_shape", w_shape[2:] if w_shape else []))
    nd = len(kernel)
    if nd not in _CONV:
        raise c.unsupported(f"{nd}-D kernels")
    strides, dilations, pads = _spatial(c, nd)
    group = c.attr("group", 1)
    pads, mode = _resolve_auto_pad(c, kernel, strides, dilations, pads)
    if pads is not None and _symmetric(pads):
        return c.call(_CONV[nd], x, w, b, strides, pads[:nd], dilations, group)
    return c.call(R.conv, x, w, b, strides, pads, dilations, group, mode)


@op("ConvTranspose")
def _conv_transpose(c: NodeCtx):
    x, w, b = c.val(0), c.val(1), c.val(2)
    w_shape = c.shape(1)
    kernel = list(c.attr("kernel_shape", w_shape[2:] if w_shape else []))
    nd = len(kernel)
    if nd not in _CONV_T:
        raise c.unsupported(f"{nd}-D kernels")
    strides, dilations, pads = _spatial(c, nd)
    group = c.attr("group", 1)
    out_pad = list(c.attr("output_padding", [0] * nd))
    out_shape = c.attr("output_shape")
    mode = c.attr("auto_pad", "NOTSET")
    if mode == "VALID":
        pads, mode = [0] * (2 * nd), "NOTSET"
    simple = (
        out_shape is None
        and mode == "NOTSET"
        and _symmetric(pads)
        and all(op_ < max(s, d) for op_, s, d in zip(out_pad, strides, dilations, strict=True))
    )
    if simple:
        return c.call(_CONV_T[nd], x, w, b, strides, pads[:nd], out_pad, group, dilations)
    return c.call(
        R.conv_transpose,
        x,
        w,
        b,
        strides,
        pads,
        dilations,
        group,
        out_pad,
        list(out_shape) if out_shape is not None else None,
        mode,
    )


def _pool_fits(pads: list[int], kernel: list[int], dilations: list[int]) -> bool:
    """torch pools take symmetric padding of at most half the (dilated) kernel."""
    nd = len(kernel)
    return _symmetric(pads) and all(
        pads[i] <= ((kernel[i] - 1) * dilations[i] + 1) // 2 for i in range(nd)
    )


@op("MaxPool")
def _max_pool(c: NodeCtx):
    if n_outputs(c) > 1:
        raise c.unsupported("the Indices output")
    x = c.val(0)
    kernel = list(c.attr("kernel_shape"))
    nd = len(kernel)
    strides, dilations, pads = _spatial(c, nd)
    ceil = c.attr("ceil_mode", 0)
    pads, mode = _resolve_auto_pad(c, kernel, strides, dilations, pads)
    if pads is not None and _pool_fits(pads, kernel, dilations) and nd in _MAXPOOL:
        return c.call(_MAXPOOL[nd], x, kernel, strides, pads[:nd], dilations, bool(ceil))
    return c.call(R.max_pool, x, kernel, strides, pads, dilations, ceil, mode)


@op("AveragePool")
def _avg_pool(c: NodeCtx):
    x = c.val(0)
    kernel = list(c.attr("kernel_shape"))
    nd = len(kernel)
    strides, dilations, pads = _spatial(c, nd)
    if any(d != 1 for d in dilations):
        raise c.unsupported("dilations")
    ceil = c.attr("ceil_mode", 0)
    cip = c.attr("count_include_pad", 0)
    pads, mode = _resolve_auto_pad(c, kernel, strides, dilations, pads)
    if pads is not None and not ceil and _pool_fits(pads, kernel, dilations) and nd in _AVGPOOL:
        return c.call(_AVGPOOL[nd], x, kernel, strides, pads[:nd], False, bool(cip))
    return c.call(R.avg_pool, x, kernel, strides, pads, ceil, cip, mode)


@op("LpPool")
def _lp_pool(c: NodeCtx):
    kernel = list(c.attr("kernel_shape"))
    nd = len(kernel)
    strides, _, pads = _spatial(c, nd)
    return c.call(R.lp_pool, c.val(0), kernel, strides, pads, c.attr("p", 2))


@op("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(c: NodeCtx):
    rank = c.rank(0)
    fn = torch.mean if c.op == "GlobalAveragePool" else torch.amax
    if rank is not None:
        return c.call(fn, c.val(0), list(range(2, rank)), keepdim=True)
    return c.call(R.global_pool, c.val(0), "avg" if c.op == "GlobalAveragePool" else "max")


@op("GlobalLpPool")
def _global_lp_pool(c: NodeCtx):
    return c.call(R.global_pool, c.val(0), "lp", c.attr("p", 2))
