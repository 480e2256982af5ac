"""Elementwise ops: arithmetic, logic, unary math, activations, Clip, Where, Cast, Dropout.

Also comparisons, the variadic Max/Min/Sum/Mean, Identity and CastLike. ONNX semantics
kept: binary ops broadcast numpy-style (multidirectional broadcasting); Div truncates
toward zero for integers; Pow's result has the base's type; Mod takes the sign of the
divisor (``fmod=0``) or of the dividend (``fmod=1``); IsInf detects the signs asked for;
Clip's bounds are attributes before opset 11 and optional inputs from 11; Mean is the
sum over the count of inputs; Dropout is the identity (and an all-true mask) unless
training_mode (an input from opset 12) is true and the ratio positive.
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx
import torch.nn.functional as F

from runners.convert import functional as R
from runners.convert.core import NodeCtx
from runners.convert.ops.registry import inline_scalars, n_outputs, op
from runners.convert.weights import torch_dtype

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
    a, b = inline_scalars(c.val(0), c.val(1))
    return c.call(_BINARY[c.op], a, b)


@op("Div")
def _div(c: NodeCtx):
    a, b = inline_scalars(c.val(0), c.val(1))
    dtype = c.dtype(0)
    if dtype is not None and dtype.is_floating_point:
        return c.call(operator.truediv, a, b)
    if dtype is not None and dtype != torch.bool:
        return c.call(torch.div, a, b, rounding_mode="trunc")
    return c.call(R.div, a, b)


@op("Pow")
def _pow(c: NodeCtx):
    a, b = inline_scalars(c.val(0), c.val(1))
    dtype = c.dtype(0)
    if dtype is not None and dtype.is_floating_point:
        return c.call(torch.pow, a, b)
    return c.call(R.pow_, c.val(0), b)


@op("Mod")
def _mod(c: NodeCtx):
    a, b = inline_scalars(c.val(0), c.val(1))
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
        x, y = inline_scalars(x, y)
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
    n = n_outputs(c)
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
