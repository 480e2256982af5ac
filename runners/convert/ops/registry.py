"""The op-handler registry and the small helpers that handlers of every family share.

``HANDLERS`` maps an ONNX op_type (default domain) to its handler; ``@op("A", "B")``
registers the decorated function under each name. The family modules of
:mod:`runners.convert.ops` register their handlers when they are imported (importing the
package imports them all); :meth:`runners.convert.core.Converter.run` looks them up here.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.fx as fx

from runners.convert.core import NodeCtx

HANDLERS: dict[str, Callable[[NodeCtx], object]] = {}


def op(*names: str):
    def deco(fn):
        for n in names:
            HANDLERS[n] = fn
        return fn

    return deco


def n_outputs(c: NodeCtx) -> int:
    """Number of outputs that are asked for (trailing empty names dropped)."""
    outs = list(c.node.output)
    while outs and not outs[-1]:
        outs.pop()
    return len(outs)


def inline_scalars(a, b):
    """Inline a rank-0 constant as a Python number when the other operand is a node."""
    if isinstance(a, fx.Node) and isinstance(b, torch.Tensor) and b.dim() == 0:
        return a, b.item()
    if isinstance(b, fx.Node) and isinstance(a, torch.Tensor) and a.dim() == 0:
        return a.item(), b
    return a, b


def is_static_shape(shape) -> bool:
    return shape is not None and all(isinstance(d, int) for d in shape)
