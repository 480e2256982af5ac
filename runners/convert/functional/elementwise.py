"""Run-time helpers for elementwise ops where ONNX and the nearest torch call differ.

ONNX semantics kept: Div truncates toward zero when both operands are integers; Pow's
result has the base's type; PRelu's slope broadcasts to the input (unidirectional
broadcasting); Selu and HardSigmoid take any alpha/gamma/beta; Clip's optional min/max
inputs may be tensors; Dropout returns the mask as its second output when asked for.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from runners.convert.functional.common import scalar


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


def dropout(x, ratio=0.5, training_mode=False, n_out: int = 1):
    train = bool(scalar(training_mode)) if training_mode is not None else False
    y = F.dropout(x, float(scalar(ratio)), training=True) if train else x
    if n_out == 1:
        return y
    mask = (y != 0) if train else torch.ones_like(x, dtype=torch.bool)
    return (y, mask)
