"""The `pipeplan` collective operators of tensor-parallel stage models, as torch calls.

Megatron-LM's two conjugate operators (Shoeybi et al. 2019, section 3, figure 3;
`exporters.shard` writes them into the stage models):

* `AllReduce` (Megatron's g): forward, the sum of x over the tensor-parallel group;
  backward, identity (each rank's partial product receives the whole gradient).
* `CopyToGroup` (Megatron's f): forward, identity; backward, the sum of the gradient over
  the group (each rank's columns saw only their part of the input's uses).

* `AllGather` (a vocabulary-parallel head's end): forward, the ranks' slices concatenated
  along an axis; backward, this rank's slice of the gradient.

The converter (`runners.convert.ops.collectives`) emits calls to `all_reduce`,
`copy_to_group` and `all_gather`; the worker names the group with `use_group` before it runs a stage. Every
rank of a group runs the same operators in the same order (the same stage program), so the
collectives match. Without a group (one process) both are the identity, which is right
only for t = 1.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

_GROUP: dist.ProcessGroup | None = None


def use_group(group: dist.ProcessGroup | None) -> None:
    """The tensor-parallel group the collectives of every converted stage use."""
    global _GROUP
    _GROUP = group


def _sum(x: torch.Tensor) -> torch.Tensor:
    y = x.contiguous().clone()
    if _GROUP is not None:
        dist.all_reduce(y, group=_GROUP)
    return y


class _AllReduce(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return _sum(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


class _CopyToGroup(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return _sum(grad)


def all_reduce(x: torch.Tensor) -> torch.Tensor:
    """g: the sum over the group forward, identity backward."""
    return _AllReduce.apply(x)


def copy_to_group(x: torch.Tensor) -> torch.Tensor:
    """f: identity forward, the gradient's sum over the group backward."""
    return _CopyToGroup.apply(x)


class _AllGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, axis):
        ctx.axis = axis % x.dim()
        if _GROUP is None:
            return x.clone()
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size(_GROUP))]
        dist.all_gather(parts, x.contiguous(), group=_GROUP)
        ctx.rank, ctx.size = dist.get_rank(_GROUP), x.shape[ctx.axis]
        return torch.cat(parts, dim=ctx.axis)

    @staticmethod
    def backward(ctx, grad):
        if _GROUP is None:
            return grad, None
        return grad.narrow(ctx.axis, ctx.rank * ctx.size, ctx.size).contiguous(), None


def all_gather(x: torch.Tensor, axis: int) -> torch.Tensor:
    """The ranks' slices joined along `axis` forward; this rank's slice of the gradient
    backward."""
    return _AllGather.apply(x, axis)
