"""Run-time helpers for Softmax-like ops before opset 13 and for normalization ops.

Softmax, LogSoftmax and Hardmax before opset 13 work on the input coerced to 2-D at
``axis`` (``[prod(shape[:axis]), prod(shape[axis:])]``). BatchNormalization in training
mode normalizes by the batch statistics and returns the running statistics updated with
``momentum``; LayerNormalization may return Mean and InvStdDev as well;
GroupNormalization's scale and bias are per group before opset 21 and per channel from
21; MeanVarianceNormalization uses epsilon 1e-9 over ``axes``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from runners.convert.functional.common import ints, wrap_axis


def softmax_2d(x, axis: int, log: bool = False):
    """Softmax/LogSoftmax before opset 13: over the input flattened to 2-D at ``axis``."""
    axis = wrap_axis(axis, x.dim())
    flat = x.reshape(math.prod(x.shape[:axis]), -1)
    out = F.log_softmax(flat, dim=1) if log else F.softmax(flat, dim=1)
    return out.reshape(x.shape)


def hardmax(x, axis: int, legacy: bool = False):
    shape = x.shape
    if legacy:
        axis = wrap_axis(axis, x.dim())
        x = x.reshape(math.prod(shape[:axis]), -1)
        axis = 1
    idx = torch.argmax(x, dim=axis, keepdim=True)
    out = torch.zeros_like(x).scatter(axis, idx, 1.0)
    return out.reshape(shape)


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
    axis = wrap_axis(axis, x.dim())
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
