"""The `pipeplan` domain's collectives (`exporters.shard`): calls into
`runners.tensor_parallel`, whose autograd functions carry Megatron's f and g."""

from __future__ import annotations

from runners.convert.core import NodeCtx
from runners.convert.ops.registry import op
from runners.tensor_parallel import all_gather, all_reduce, copy_to_group


@op("pipeplan.AllReduce")
def _all_reduce(c: NodeCtx):
    return c.call(all_reduce, c.val(0))


@op("pipeplan.CopyToGroup")
def _copy_to_group(c: NodeCtx):
    return c.call(copy_to_group, c.val(0))


@op("pipeplan.AllGather")
def _all_gather(c: NodeCtx):
    return c.call(all_gather, c.val(0), int(c.attr("axis", -1)))
