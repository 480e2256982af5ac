"""Argument coercion shared by the run-time helpers.

ONNX gives shapes, axes, pads and scalars as tensors. The converter passes them as Python
lists and numbers when it knows them at conversion time, and as (int64) tensors computed at
run time otherwise, so every helper accepts both forms through these functions.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

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


def wrap_axis(a: int, rank: int) -> int:
    return a + rank if a < 0 else a
