"""What each operator costs on one device of a tensor-parallel group of t.

Megatron-LM's tensor parallelism (Shoeybi et al. 2019; Narayanan et al. SC 2021, section
3.2): in every block `planner.graph.sharding` found that splits t ways, each device runs
its shard of every operator (a column linear's output features, a row linear's input
features, its heads): the operator is priced again by the cost model at its *sharded
shapes* (`cost.ops`), so a small GEMM's lower efficiency is the roofline's, not 1/t of the
whole. Operators outside the blocks are replicated: each device runs them whole.

The group exchanges, per block and micro-batch (Megatron's g and f operators):

* forward, after each row linear: an all-reduce of its output (the partial sums);
* backward, for each tensor the block's columns read: an all-reduce of its gradient;
* forward, for a head split over the vocabulary: an all-gather of the logits.

The bytes of each are recorded here; `planner.partition.problem` prices them on the
group's link (`cost.collectives.ring_allreduce_seconds`). Memory per device: the block's
weights (and their gradients and optimizer state) and the activations inside the block
are 1/t; the rest is whole.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cost.opcost import OpCost, OpNode
from cost.ops import op_cost
from cost.tensor import TensorInfo
from planner.graph.load import ModelGraph
from planner.graph.onnx_io import decode_attributes
from planner.graph.sharding import Block, find_blocks


@dataclass
class TensorParallelGraph:
    """The graph's operators as one device of a tensor-parallel group of `degree` runs them."""

    degree: int
    blocks: list[Block]
    #: block operator -> the cost of its shard
    costs: dict[str, OpCost] = field(default_factory=dict)
    #: tensors split t ways (activations inside blocks, sharded weights and their views)
    sharded_tensors: set[str] = field(default_factory=set)
    #: parameters split t ways
    sharded_params: set[str] = field(default_factory=set)
    #: row operator -> bytes of its output, all-reduced in forward
    forward_reduce_bytes: dict[str, int] = field(default_factory=dict)
    #: first column operator reading a tensor -> bytes of that tensor's gradient,
    #: all-reduced in backward
    backward_reduce_bytes: dict[str, int] = field(default_factory=dict)
    #: operator writing a vocabulary-split graph output -> the output's bytes, all-gathered
    #: in forward
    forward_gather_bytes: dict[str, int] = field(default_factory=dict)
    #: blocks that do not split t ways, each with why
    unsplit: list[tuple[Block, str]] = field(default_factory=list)

    @property
    def nodes(self) -> set[str]:
        return {n for b in self.blocks for n in b.nodes}


def tensor_parallel_graph(
    mg: ModelGraph, degree: int, blocks: list[Block] | None = None
) -> TensorParallelGraph:
    """Price every block operator at its shard's shapes (module docstring)."""
    blocks = find_blocks(mg) if blocks is None else blocks
    ok = [b for b in blocks if not b.why_not(degree)]
    out = TensorParallelGraph(
        degree, ok, unsplit=[(b, b.why_not(degree)) for b in blocks if b.why_not(degree)]
    )
    if degree == 1 or not ok:
        return out
    axes: dict[str, int] = {}
    gathered = {y for b in ok for y in b.gathers}
    for b in ok:
        axes.update({t: a for t, (a, _) in b.tensors.items() if t not in gathered})
        axes.update(b.params)
        for view, _ in b.params.items():
            out.sharded_params |= mg.weights.sources.get(view, frozenset({view}))
    out.sharded_tensors = set(axes)
    for b in ok:
        for name in b.nodes:
            out.costs[name] = _shard_cost(mg, mg.proto(name), name, axes, degree)
        for row in b.rows:
            info = mg.tensors.get(mg.graph.nodes[row]["outputs"][0])
            out.forward_reduce_bytes[row] = info.nbytes if info is not None else 0
        for y in b.gathers:
            writer = next(n for n in b.nodes if y in mg.graph.nodes[n]["outputs"])
            out.forward_gather_bytes[writer] = mg.tensors[y].nbytes
        seen: set[str] = set()
        for col in b.columns:
            x = mg.graph.nodes[col]["inputs"][0]
            info = mg.tensors.get(x)
            if x in seen or info is None or not info.is_float:
                continue
            seen.add(x)
            out.backward_reduce_bytes[col] = info.nbytes
    return out


def _shard_cost(mg: ModelGraph, proto, name: str, axes: dict[str, int], t: int) -> OpCost:
    def shard(tensor: str) -> TensorInfo | None:
        if not tensor:
            return None
        info = mg.tensors.get(tensor, TensorInfo(tensor, None))
        if tensor not in axes or info.shape is None:
            return info
        shape = list(info.shape)
        shape[axes[tensor]] //= t
        return TensorInfo(tensor, tuple(shape), info.dtype)

    op_type = (
        proto.op_type if proto.domain in ("", "ai.onnx") else f"{proto.domain}.{proto.op_type}"
    )
    return op_cost(
        OpNode(
            op_type=op_type,
            domain=proto.domain,
            attrs=decode_attributes(proto),
            inputs=tuple(shard(i) for i in proto.input),
            outputs=tuple(shard(o) for o in proto.output if o),
            param_inputs=frozenset(i for i, x in enumerate(proto.input) if x in mg.param_like),
            name=name,
        )
    )
