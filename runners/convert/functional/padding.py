"""ONNX padding: pads lists, auto_pad and the Pad op.

ONNX pads list every axis' begin, then every axis' end (``[x1_begin, x2_begin, ...,
x1_end, x2_end, ...]``, first axis first); ``F.pad`` wants pairs, last axis first.
auto_pad SAME_UPPER / SAME_LOWER pad so that ``out = ceil(in / stride)``, the odd cell at
the end (UPPER) or at the beginning (LOWER). Pad's modes are constant (negative pads
crop), reflect (no edge repeat), edge and wrap, over all axes or only the given ``axes``
(opset 18).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from runners.convert.functional.common import ints, scalar, wrap_axis


def same_pads(in_sizes, kernel, strides, dilations, upper: bool) -> list[int]:
    begins, ends = [], []
    for n, k, s, d in zip(in_sizes, kernel, strides, dilations, strict=True):
        out = -(-n // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - n)
        small = total // 2
        begins.append(small if upper else total - small)
        ends.append(total - small if upper else small)
    return begins + ends


def torch_pad_list(pads: Sequence[int]) -> list[int]:
    """ONNX pads (begins then ends, first axis first) -> F.pad order (last axis first)."""
    n = len(pads) // 2
    out: list[int] = []
    for i in reversed(range(n)):
        out += [pads[i], pads[i + n]]
    return out


def auto_pad(x, kernel, strides, dilations, mode: str, value: float = 0.0):
    """Pad the spatial dims of ``x`` as ONNX auto_pad SAME_UPPER / SAME_LOWER do."""
    kernel = ints(kernel)
    pads = same_pads(
        list(x.shape[2:]), kernel, ints(strides), ints(dilations), mode == "SAME_UPPER"
    )
    if not any(pads):
        return x
    return F.pad(x, torch_pad_list(pads), value=value)


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
        ax = [wrap_axis(a, r) for a in ints(axes)]
        full = [0] * (2 * r)
        for j, a in enumerate(ax):
            full[a] = pads[j]
            full[a + r] = pads[j + len(ax)]
        pads = full
    if mode == "constant":
        return F.pad(x, torch_pad_list(pads), value=value)
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
