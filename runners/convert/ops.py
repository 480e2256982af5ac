"""ONNX op handlers: one function per operator family, emitting torch calls.

A handler receives a :class:`~runners.convert.core.NodeCtx` and returns the value of
the node's output (or a list, one per output). It prefers plain torch calls with static
arguments (readable ``GraphModule.code``) and falls back to the run-time helpers of
:mod:`runners.convert.functional` when shapes, axes or pads are only known at run time
or when ONNX semantics need more than one torch op.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable

import torch
import torch.fx as fx
import torch.nn.functional as F
from onnx import numpy_helper

from runners.convert import functional as R
from runners.convert.core import NodeCtx
from runners.convert.functional.padding import same_pads, torch_pad_list
from runners.convert.weights import array_to_torch, torch_dtype

HANDLERS: dict[str, Callable[[NodeCtx], object]] = {}


def op(*names: str):
    def deco(fn):
        for n in names:
            HANDLERS[n] = fn
        return fn

    return deco


def _n_out(c: NodeCtx) -> int:
    """Number of outputs that are asked for (trailing empty names dropped)."""
    outs = list(c.node.output)
    while outs and not outs[-1]:
        outs.pop()
    return len(outs)


def _scalars(a, b):
    """Inline a rank-0 constant as a Python number when the other operand is a node."""
    if isinstance(a, fx.Node) and isinstance(b, torch.Tensor) and b.dim() == 0:
        return a, b.item()
    if isinstance(b, fx.Node) and isinstance(a, torch.Tensor) and a.dim() == 0:
        return a.item(), b
    return a, b


def _static_shape(shape) -> bool:
    return shape is not None and all(isinstance(d, int) for d in shape)


# ----------------------------------------------------------------------------- elementwise

_BINARY = {
    "Add": operator.add,
    "Sub": operator.sub,
    "Mul": operator.mul,
    "Equal": operator.eq,
    "Less": operator.lt,
    "Greater": operator.gt,
    "LessOrEqual": operator.le,
    "GreaterOrEqual": operator.ge,
    "And": operator.and_,
    "Or": operator.or_,
    "Xor": operator.xor,
    "BitwiseAnd": operator.and_,
    "BitwiseOr": operator.or_,
    "BitwiseXor": operator.xor,
}


@op(*_BINARY)
def _binary(c: NodeCtx):
    a, b = _scalars(c.val(0), c.val(1))
    return c.call(_BINARY[c.op], a, b)


@op("Div")
def _div(c: NodeCtx):
    a, b = _scalars(c.val(0), c.val(1))
    dtype = c.dtype(0)
    if dtype is not None and dtype.is_floating_point:
        return c.call(operator.truediv, a, b)
    if dtype is not None and dtype != torch.bool:
        return c.call(torch.div, a, b, rounding_mode="trunc")
    return c.call(R.div, a, b)


@op("Pow")
def _pow(c: NodeCtx):
    a, b = _scalars(c.val(0), c.val(1))
    dtype = c.dtype(0)
    if dtype is not None and dtype.is_floating_point:
        return c.call(torch.pow, a, b)
    return c.call(R.pow_, c.val(0), b)


@op("Mod")
def _mod(c: NodeCtx):
    a, b = _scalars(c.val(0), c.val(1))
    fn = torch.fmod if c.attr("fmod", 0) else torch.remainder
    if not isinstance(a, fx.Node | torch.Tensor):
        a = c.val(0)
    return c.call(fn, a, b)


_UNARY = {
    "Relu": torch.relu,
    "Sigmoid": torch.sigmoid,
    "Tanh": torch.tanh,
    "Erf": torch.erf,
    "Sqrt": torch.sqrt,
    "Exp": torch.exp,
    "Log": torch.log,
    "Neg": torch.neg,
    "Abs": torch.abs,
    "Reciprocal": torch.reciprocal,
    "Floor": torch.floor,
    "Ceil": torch.ceil,
    "Round": torch.round,
    "Sign": torch.sign,
    "IsNaN": torch.isnan,
    "Sin": torch.sin,
    "Cos": torch.cos,
    "Tan": torch.tan,
    "Asin": torch.asin,
    "Acos": torch.acos,
    "Atan": torch.atan,
    "Sinh": torch.sinh,
    "Cosh": torch.cosh,
    "Asinh": torch.asinh,
    "Acosh": torch.acosh,
    "Atanh": torch.atanh,
    "Not": torch.logical_not,
    "BitwiseNot": torch.bitwise_not,
    "Softsign": F.softsign,
    "Softplus": F.softplus,
    "Mish": F.mish,
    "HardSwish": F.hardswish,
}


@op(*_UNARY)
def _unary(c: NodeCtx):
    return c.call(_UNARY[c.op], c.val(0))


@op("IsInf")
def _isinf(c: NodeCtx):
    neg, pos = c.attr("detect_negative", 1), c.attr("detect_positive", 1)
    fn = torch.isinf if neg and pos else torch.isneginf if neg else torch.isposinf
    if not neg and not pos:
        return c.call(torch.zeros_like, c.val(0), dtype=torch.bool)
    return c.call(fn, c.val(0))


@op("Identity")
def _identity(c: NodeCtx):
    return c.val(0)


@op("LeakyRelu")
def _leaky_relu(c: NodeCtx):
    return c.call(F.leaky_relu, c.val(0), c.attr("alpha", 0.01))


@op("Elu")
def _elu(c: NodeCtx):
    return c.call(F.elu, c.val(0), c.attr("alpha", 1.0))


@op("Celu")
def _celu(c: NodeCtx):
    return c.call(F.celu, c.val(0), c.attr("alpha", 1.0))


@op("Selu")
def _selu(c: NodeCtx):
    alpha = c.attr("alpha", 1.67326319217681884765625)
    gamma = c.attr("gamma", 1.05070102214813232421875)
    if abs(alpha - 1.6732632423543772) < 1e-6 and abs(gamma - 1.0507009873554805) < 1e-6:
        return c.call(F.selu, c.val(0))
    return c.call(R.selu, c.val(0), alpha, gamma)


@op("ThresholdedRelu")
def _thresholded_relu(c: NodeCtx):
    return c.call(F.threshold, c.val(0), c.attr("alpha", 1.0), 0.0)


@op("HardSigmoid")
def _hard_sigmoid(c: NodeCtx):
    return c.call(R.hard_sigmoid, c.val(0), c.attr("alpha", 0.2), c.attr("beta", 0.5))


@op("Gelu")
def _gelu(c: NodeCtx):
    return c.call(F.gelu, c.val(0), approximate=c.attr("approximate", "none"))


@op("PRelu")
def _prelu(c: NodeCtx):
    return c.call(R.prelu, c.val(0), c.val(1))


@op("Clip")
def _clip(c: NodeCtx):
    x = c.val(0)
    if c.opset < 11:
        lo, hi = c.attr("min"), c.attr("max")
    else:
        lo, hi = c.scalar_or_val(1), c.scalar_or_val(2)
    if lo is None and hi is None:
        return x
    if isinstance(lo, fx.Node | torch.Tensor) or isinstance(hi, fx.Node | torch.Tensor):
        return c.call(R.clip, x, lo, hi)
    return c.call(torch.clamp, x, lo, hi)


@op("Where")
def _where(c: NodeCtx):
    cond, x, y = c.val(0), c.val(1), c.val(2)
    if isinstance(x, fx.Node) or isinstance(y, fx.Node):
        x, y = _scalars(x, y)
    return c.call(torch.where, cond, x, y)


@op("Max", "Min", "Sum", "Mean")
def _variadic(c: NodeCtx):
    xs = c.vals()
    if len(xs) == 1:
        return xs[0]
    fn = {"Max": torch.maximum, "Min": torch.minimum}.get(c.op, operator.add)
    out = xs[0]
    for x in xs[1:]:
        out = c.call(fn, out, x)
    if c.op == "Mean":
        out = c.call(operator.truediv, out, float(len(xs)))
    return out


# ----------------------------------------------------------------------------- softmax


@op("Softmax", "LogSoftmax")
def _softmax(c: NodeCtx):
    x = c.val(0)
    log = c.op == "LogSoftmax"
    fn = F.log_softmax if log else F.softmax
    if c.opset >= 13:
        return c.call(fn, x, c.attr("axis", -1))
    axis = c.attr("axis", 1)
    rank = c.rank(0)
    if axis == -1 or (rank is not None and axis in (rank - 1, -1)):
        return c.call(fn, x, -1)
    return c.call(R.softmax_2d, x, axis, log)


@op("Hardmax")
def _hardmax(c: NodeCtx):
    legacy = c.opset < 13
    return c.call(R.hardmax, c.val(0), c.attr("axis", 1 if legacy else -1), legacy)


# ----------------------------------------------------------------------------- linear algebra


@op("MatMul")
def _matmul(c: NodeCtx):
    return c.call(torch.matmul, c.val(0), c.val(1))


@op("Gemm")
def _gemm(c: NodeCtx):
    a, b, cc = c.val(0), c.val(1), c.val(2)
    alpha, beta = c.attr("alpha", 1.0), c.attr("beta", 1.0)
    ta, tb = c.attr("transA", 0), c.attr("transB", 0)
    c_rank = c.rank(2) if cc is not None else None
    if tb and not ta and alpha == 1.0 and beta == 1.0 and (cc is None or c_rank == 1):
        return c.call(F.linear, a, b, cc)
    if ta:
        a = c.call(torch.t, a)
    if tb:
        b = c.call(torch.t, b)
    if cc is None:
        y = c.call(torch.mm, a, b)
        return y if alpha == 1.0 else c.call(operator.mul, y, alpha)
    kwargs = {}
    if alpha != 1.0:
        kwargs["alpha"] = alpha
    if beta != 1.0:
        kwargs["beta"] = beta
    return c.call(torch.addmm, cc, a, b, **kwargs)


@op("Einsum")
def _einsum(c: NodeCtx):
    eq = c.attr("equation").replace(" ", "")
    return c.call(torch.einsum, eq, *c.vals())


# ----------------------------------------------------------------------------- conv / pool

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
        if shape is not None and _static_shape(shape[2:]) and _static_shape(kernel):
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
    if _n_out(c) > 1:
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


# ----------------------------------------------------------------------------- normalization


@op("BatchNormalization")
def _batch_norm(c: NodeCtx):
    x, scale, bias, mean, var = (c.val(i) for i in range(5))
    eps = c.attr("epsilon", 1e-5)
    momentum = c.attr("momentum", 0.9)
    n = _n_out(c)
    training = bool(c.attr("training_mode", 0)) or (c.opset < 14 and n > 1)
    if training:
        k = min(n, 3)
        args = (x, scale, bias, mean, var, eps, momentum, k)
        return c.call(R.batch_norm_training, *args, n_out=k)
    if isinstance(mean, torch.Tensor) and isinstance(var, torch.Tensor):
        return c.call(F.batch_norm, x, mean, var, scale, bias, False, 0.0, eps)
    return c.call(R.batch_norm, x, scale, bias, mean, var, eps)


@op("LayerNormalization")
def _layer_norm(c: NodeCtx):
    x, scale, bias = c.val(0), c.val(1), c.val(2)
    axis = c.attr("axis", -1)
    eps = c.attr("epsilon", 1e-5)
    n = _n_out(c)
    shape = c.shape(0)
    if n == 1 and shape is not None:
        norm_shape = shape[axis:]
        s_shape = c.shape(1)
        b_shape = c.shape(2) if bias is not None else norm_shape
        if _static_shape(norm_shape) and s_shape == norm_shape and b_shape == norm_shape:
            return c.call(F.layer_norm, x, norm_shape, scale, bias, eps)
    out = c.call(R.layer_norm, x, scale, bias, axis, eps, n, n_out=n)
    return out


@op("GroupNormalization")
def _group_norm(c: NodeCtx):
    x, scale, bias = c.val(0), c.val(1), c.val(2)
    groups = c.attr("num_groups")
    eps = c.attr("epsilon", 1e-5)
    if c.opset >= 21:
        return c.call(F.group_norm, x, groups, scale, bias, eps)
    return c.call(R.group_norm, x, scale, bias, groups, eps, True)


@op("InstanceNormalization")
def _instance_norm(c: NodeCtx):
    return c.call(
        F.instance_norm, c.val(0), weight=c.val(1), bias=c.val(2), eps=c.attr("epsilon", 1e-5)
    )


@op("LpNormalization")
def _lp_norm(c: NodeCtx):
    return c.call(R.lp_normalization, c.val(0), c.attr("axis", -1), c.attr("p", 2))


@op("MeanVarianceNormalization")
def _mvn(c: NodeCtx):
    return c.call(R.mean_variance_normalization, c.val(0), list(c.attr("axes", [0, 2, 3])))


# ----------------------------------------------------------------------------- reductions

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


# ----------------------------------------------------------------------------- indexing


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


# ----------------------------------------------------------------------------- shapes


@op("Shape")
def _shape(c: NodeCtx):
    start, end = c.attr("start", 0), c.attr("end")
    shape = c.shape(0)
    if _static_shape(shape):
        return torch.tensor(shape[start:end], dtype=torch.int64)
    return c.call(R.shape, c.val(0), start, end)


@op("Size")
def _size(c: NodeCtx):
    shape = c.shape(0)
    if _static_shape(shape):
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
        if _static_shape(shape[:axis]):
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


@op("Cast")
def _cast(c: NodeCtx):
    dtype = torch_dtype(c.attr("to"))
    if c.dtype(0) == dtype:
        return c.val(0)
    return c.method("to", c.val(0), dtype)


@op("CastLike")
def _cast_like(c: NodeCtx):
    dtype = c.dtype(1)
    if dtype is None:
        return c.method("type_as", c.val(0), c.val(1))
    if c.dtype(0) == dtype:
        return c.val(0)
    return c.method("to", c.val(0), dtype)


@op("Dropout")
def _dropout(c: NodeCtx):
    x = c.val(0)
    n = _n_out(c)
    if c.opset < 12:
        ratio, training = c.attr("ratio", 0.5), False
    else:
        r, t = c.const(1), c.const(2)
        ratio = float(r.item()) if r is not None else 0.5
        if c.has(2) and t is None:
            raise c.unsupported("a run-time training_mode")
        training = bool(t.item()) if t is not None else False
    if training and ratio > 0:
        return (
            c.call(R.dropout, x, ratio, True, n, n_out=n)
            if n > 1
            else c.call(F.dropout, x, ratio, True)
        )
    if n > 1:
        return [x, c.call(torch.ones_like, x, dtype=torch.bool)]
    return x


# ----------------------------------------------------------------------------- constants


def _constant_value(c: NodeCtx) -> torch.Tensor:
    a = c.attrs
    if "value" in a:
        return array_to_torch(numpy_helper.to_array(a["value"]))
    if "value_float" in a:
        return torch.tensor(a["value_float"], dtype=torch.float32)
    if "value_floats" in a:
        return torch.tensor(list(a["value_floats"]), dtype=torch.float32)
    if "value_int" in a:
        return torch.tensor(a["value_int"], dtype=torch.int64)
    if "value_ints" in a:
        return torch.tensor(list(a["value_ints"]), dtype=torch.int64)
    if "sparse_value" in a:
        sp = a["sparse_value"]
        values = array_to_torch(numpy_helper.to_array(sp.values))
        idx = array_to_torch(numpy_helper.to_array(sp.indices))
        dense = torch.zeros(math.prod(sp.dims), dtype=values.dtype)
        if idx.dim() == 2:  # [NNZ, rank] coordinates
            strides = torch.tensor([math.prod(sp.dims[i + 1 :]) for i in range(len(sp.dims))])
            idx = (idx * strides).sum(-1)
        dense[idx.reshape(-1)] = values
        return dense.reshape(list(sp.dims))
    raise c.unsupported("a string value")


@op("Constant")
def _constant(c: NodeCtx):
    return _constant_value(c)


@op("ConstantOfShape")
def _constant_of_shape(c: NodeCtx):
    value = c.attrs.get("value")
    v = (
        array_to_torch(numpy_helper.to_array(value))
        if value is not None
        else torch.zeros(1, dtype=torch.float32)
    )
    shape = c.ints_or_node(0)
    if isinstance(shape, list):
        return torch.full(shape, v.reshape(-1)[0].item(), dtype=v.dtype)
    return c.call(R.constant_of_shape, shape, v)


@op("Range")
def _range(c: NodeCtx):
    return c.call(R.range_, c.val(0), c.val(1), c.val(2))


@op("Trilu")
def _trilu(c: NodeCtx):
    k = c.const(1)
    upper = c.attr("upper", 1)
    fn = torch.triu if upper else torch.tril
    if k is None and c.has(1):
        return c.call(R.trilu, c.val(0), c.val(1), upper)
    return c.call(fn, c.val(0), int(k.item()) if k is not None else 0)


# ----------------------------------------------------------------------------- pad / resize


@op("Pad")
def _pad(c: NodeCtx):
    x = c.val(0)
    mode = c.attr("mode", "constant")
    if c.opset < 11:
        pads, value, axes = list(c.attr("pads")), c.attr("value", 0.0), None
    else:
        pads = c.ints_or_node(1)
        value = c.scalar_or_val(2) if c.has(2) else 0.0
        axes = c.ints_or_node(3) if c.has(3) else None
    rank = c.rank(0)
    if (
        mode == "constant"
        and isinstance(pads, list)
        and not isinstance(value, fx.Node | torch.Tensor)
    ) and (axes is None or (isinstance(axes, list) and rank is not None)):
        if axes is not None:
            r = rank
            full = [0] * (2 * r)
            for j, a in enumerate(axes):
                a = a + r if a < 0 else a
                full[a], full[a + r] = pads[j], pads[j + len(axes)]
            pads = full
        tp = torch_pad_list(pads)
        while len(tp) >= 2 and tp[-1] == 0 and tp[-2] == 0:
            tp = tp[:-2]
        if not tp:
            return x
        return c.call(F.pad, x, tp, value=value)
    return c.call(R.pad, x, pads, mode, value, axes)


def _floats_or_val(c: NodeCtx, i: int):
    v = c.const(i)
    if v is not None:
        return [float(t) for t in v.reshape(-1).tolist()]
    return c.val(i)


@op("Resize", "Upsample")
def _resize(c: NodeCtx):
    x = c.val(0)
    mode = c.attr("mode", "nearest")
    if c.op == "Upsample" or c.opset < 11:
        scales = c.attr("scales")
        scales = list(scales) if scales is not None else _floats_or_val(c, 1)
        coord, nearest, roi, sizes = "asymmetric", "floor", None, None
    else:
        roi = _floats_or_val(c, 1) if c.has(1) else None
        scales = _floats_or_val(c, 2) if c.has(2) else None
        sizes = c.ints_or_node(3) if c.has(3) else None
        if isinstance(scales, list) and not scales:
            scales = None
        if isinstance(roi, list) and not roi:
            roi = None
        coord = c.attr("coordinate_transformation_mode", "half_pixel")
        nearest = c.attr("nearest_mode", "round_prefer_floor")
    if mode == "cubic":
        raise c.unsupported("mode 'cubic'")
    if c.attr("antialias", 0):
        raise c.unsupported("antialias")
    axes = c.attr("axes")
    return c.call(
        R.resize,
        x,
        roi,
        scales,
        sizes,
        mode,
        coord,
        nearest,
        list(axes) if axes is not None else None,
        c.attr("keep_aspect_ratio_policy", "stretch"),
        c.attr("cubic_coeff_a", -0.75),
        c.attr("exclude_outside", 0),
        c.attr("extrapolation_value", 0.0),
    )
