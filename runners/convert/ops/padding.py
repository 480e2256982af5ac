"""Pad: constant, reflect, edge and wrap padding.

The pads are an attribute before opset 11 and an input from 11 (every axis' begin, then
every axis' end; negative pads crop), the constant value an optional input, and ``axes``
(opset 18) restricts the pads to those axes. Constant padding with pads known at
conversion time is ``F.pad`` (trailing all-zero pairs dropped); the rest goes to the
run-time ``pad``.
"""

from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn.functional as F

from runners.convert import functional as R
from runners.convert.core import NodeCtx
from runners.convert.functional.padding import torch_pad_list
from runners.convert.ops.registry import op


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
