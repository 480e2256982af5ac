"""Softmax, LogSoftmax and Hardmax, and the normalization ops.

Normalization: Batch, Layer, Group, Instance, Lp and MeanVariance. Before opset 13
Softmax, LogSoftmax and Hardmax work on the input coerced to 2-D at ``axis`` (default 1),
from 13 on along the one ``axis`` (default -1). BatchNormalization uses the running
statistics unless training_mode is 1 (opset 14 on) or, before opset 14, more than one
output is asked for. GroupNormalization's scale and bias are per group before opset 21
and per channel from 21.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from runners.convert import functional as R
from runners.convert.core import NodeCtx
from runners.convert.ops.registry import is_static_shape, n_outputs, op


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


@op("BatchNormalization")
def _batch_norm(c: NodeCtx):
    x, scale, bias, mean, var = (c.val(i) for i in range(5))
    eps = c.attr("epsilon", 1e-5)
    momentum = c.attr("momentum", 0.9)
    n = n_outputs(c)
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
    n = n_outputs(c)
    shape = c.shape(0)
    if n == 1 and shape is not None:
        norm_shape = shape[axis:]
        s_shape = c.shape(1)
        b_shape = c.shape(2) if bias is not None else norm_shape
        if is_static_shape(norm_shape) and s_shape == norm_shape and b_shape == norm_shape:
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
