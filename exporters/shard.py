"""One stage model per tensor-parallel rank: weights sharded, collectives as `pipeplan` ops.

Megatron-LM's layout (Shoeybi et al. 2019, section 3, figure 3): in every block that
`planner.graph.sharding` found and that splits t ways, rank k of the group keeps the k-th
t-th of

* each column linear's weight along its output features (and its bias), a fused
  projection (QKV in one MatMul, cut by a Split) per part: rank k holds the k-th slice of
  Q, of K and of V, so its Split still yields its own heads of each;
* each row linear's weight along its input features (its bias stays whole, added once
  after the sum);
* every tensor in between (heads, the MLP's hidden width), whose static shapes (Reshape,
  Expand and Split constants, value_info) are rewritten to the shard's size.

Two operators of the `pipeplan` domain (version 1) join the shards, Megatron's f and g:

* `pipeplan.CopyToGroup(x) -> y`: identity forward; backward, the all-reduce (sum) of the
  gradient over the tensor-parallel group. It precedes the columns of a block.
* `pipeplan.AllReduce(x) -> y`: the all-reduce (sum) of x over the group forward; backward,
  identity. It follows each row linear (before its bias).

* `pipeplan.AllGather(x) -> y` (attribute `axis`): forward, the ranks' x concatenated
  along `axis` in rank order; backward, this rank's slice of the gradient. It ends a head
  split over the vocabulary (Megatron's vocabulary-parallel output layer, gathered).

All have the attribute `group` = "tensor". `emulate_group` joins the t rank models into
one ONNX model in which AllReduce is a `Sum` of the ranks' partial results, AllGather a
`Concat` and CopyToGroup an `Identity`: onnxruntime then runs the whole group in one process, which is how the
tests prove a sharded stage computes what the unsharded one does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from cost.errors import PipeplanError
from planner.graph.load import ModelGraph
from planner.graph.sharding import Block, find_blocks

DOMAIN = "pipeplan"
DOMAIN_VERSION = 1
ALL_REDUCE = "AllReduce"
COPY_TO_GROUP = "CopyToGroup"
ALL_GATHER = "AllGather"
#: the ops that only re-label a weight: a sharded view is the view of a sharded parameter
_VIEW_OPS = ("Identity", "Cast", "Transpose")


@dataclass(frozen=True)
class ParamShard:
    """How one parameter is cut: along `axis`, each of `parts` (consecutive sizes that
    sum to the axis' length; one part for an ordinary weight) split t ways."""

    axis: int
    parts: tuple[int, ...]


def shard_array(a: np.ndarray, spec: ParamShard, t: int, k: int) -> np.ndarray:
    """Rank k's piece of `a`: the k-th t-th of every part, concatenated."""
    pieces, start = [], 0
    for size in spec.parts:
        step = size // t
        index = [slice(None)] * a.ndim
        index[spec.axis] = slice(start + k * step, start + (k + 1) * step)
        pieces.append(a[tuple(index)])
        start += size
    return np.ascontiguousarray(np.concatenate(pieces, axis=spec.axis))


def unshard_arrays(pieces: list[np.ndarray], spec: ParamShard) -> np.ndarray:
    """The inverse of `shard_array` over the ranks' pieces (rank order)."""
    t = len(pieces)
    out, start = [], 0
    for size in spec.parts:
        step = size // t
        index = [slice(None)] * pieces[0].ndim
        index[spec.axis] = slice(start, start + step)
        out += [p[tuple(index)] for p in pieces]
        start += step
    return np.concatenate(out, axis=spec.axis)


def shardable_blocks(mg: ModelGraph, t: int) -> list[Block]:
    """The blocks of `mg` that split t ways (all of them valid for t)."""
    return [b for b in find_blocks(mg) if b.valid and not b.why_not(t)]


@dataclass
class StageShards:
    """What tensor parallelism changes in one stage: its blocks and its sharded weights."""

    blocks: list[Block]
    params: dict[str, ParamShard]  # initializer name -> how it is cut
    #: views of sharded parameters (`Transpose(W)`): their sharded axis and its full size
    views: dict[str, tuple[int, int]]


def stage_shards(mg: ModelGraph, blocks: list[Block], nodes: list[str], stage: int) -> StageShards:
    """The blocks that lie in a stage's operators (`nodes`, the plan's names). A block cut
    by a stage boundary is an error: the plan must keep each block in one stage."""
    names = set(nodes)
    mine = []
    for b in blocks:
        inside = [n for n in b.nodes if n in names]
        if inside and len(inside) != len(b.nodes):
            raise PipeplanError(
                f"stage {stage} holds part of the tensor-parallel block at {b.columns[0]}: "
                "plan with this --tp so that blocks are kept whole"
            )
        if inside:
            mine.append(b)
    params: dict[str, ParamShard] = {}
    views: dict[str, tuple[int, int]] = {}
    producers = {o: n for n, d in mg.graph.nodes(data=True) for o in d["outputs"]}
    for b in mine:
        for tensor, axis in b.params.items():
            full = mg.tensors[tensor].shape[axis]
            chain = _weight_source(mg, producers, tensor, axis)
            source, source_axis = chain[-1]
            views.update((v, (a, full)) for v, a in chain[:-1])
            parts = tuple(b.parts) if b.parts and sum(b.parts) == full else (full,)
            spec = ParamShard(source_axis, parts)
            if params.get(source, spec) != spec:
                raise PipeplanError(f"parameter {source} would be sharded two ways")
            params[source] = spec
    return StageShards(mine, params, views)


def _weight_source(
    mg: ModelGraph, producers: dict[str, str], tensor: str, axis: int
) -> list[tuple[str, int]]:
    """The views from `tensor` back to the initializer it comes from, each with the axis
    `axis` maps to there (the initializer last); `producers`: tensor -> graph node."""
    chain = [(tensor, axis)]
    while tensor not in mg.params:
        node = producers.get(tensor)
        d = mg.graph.nodes[node] if node is not None else None
        if d is None or d["op_type"] not in _VIEW_OPS:
            raise PipeplanError(f"weight {tensor} is computed in a way that cannot be sharded")
        if d["op_type"] == "Transpose":
            attrs = {a.name: helper.get_attribute_value(a) for a in mg.proto(node).attribute}
            rank = len(mg.tensors[tensor].shape)
            perm = list(attrs.get("perm") or range(rank)[::-1])
            axis = perm[axis]
        tensor = d["inputs"][0]
        chain.append((tensor, axis))
    return chain


def shard_stage_model(
    model: onnx.ModelProto,
    mg: ModelGraph,
    shards: StageShards,
    t: int,
    k: int,
    load: Callable[[onnx.TensorProto], np.ndarray],
) -> onnx.ModelProto:
    """Rank k of t's copy of a stage model (module docstring). `load` reads an
    initializer's values (external data included)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    if not shards.blocks:
        return out
    # weights (and the value_info that describes them, torch.export's kind)
    shapes: dict[str, tuple[int, ...]] = {}
    for init in g.initializer:
        spec = shards.params.get(init.name)
        if spec is None:
            continue
        piece = shard_array(load(init), spec, t, k)
        init.CopyFrom(numpy_helper.from_array(piece, init.name))
        shapes[init.name] = piece.shape
    for vi in g.value_info:
        if vi.name in shapes:
            for dim, size in zip(vi.type.tensor_type.shape.dim, shapes[vi.name], strict=True):
                dim.dim_value = size
    # shapes of sharded tensors
    sharded = {name: ax for b in shards.blocks for name, ax in b.tensors.items()}
    sharded |= shards.views
    gathered = {y for b in shards.blocks for y in b.gathers}
    for vi in g.value_info:
        if vi.name in sharded and vi.name not in gathered and vi.type.tensor_type.HasField("shape"):
            axis, size = sharded[vi.name]
            vi.type.tensor_type.shape.dim[axis].dim_value = size // t
    by_output = {n.output[0]: n for n in g.node if n.output}
    new_inits: list[onnx.TensorProto] = []
    before: dict[str, list[onnx.NodeProto]] = {}  # output of a node -> nodes to put first
    after: dict[str, list[onnx.NodeProto]] = {}
    for b in shards.blocks:
        for y in b.gathers:
            axis, _ = sharded[y]
            node = next(n for n in g.node if y in n.output)
            piece = f"{y}__shard"
            node.output[list(node.output).index(y)] = piece
            after.setdefault(piece, []).append(
                helper.make_node(
                    ALL_GATHER, [piece], [y], domain=DOMAIN, group="tensor", axis=axis,
                    name=f"{y}/AllGather",
                )
            )  # fmt: skip
        for name in b.nodes:
            node = by_output[mg.graph.nodes[name]["outputs"][0]]
            _rewrite_static_shapes(node, mg, sharded, t, new_inits, f"{name}__tp{t}")
        copied: dict[str, str] = {}
        for name in b.columns:
            node = by_output[mg.graph.nodes[name]["outputs"][0]]
            x = node.input[0]
            if x not in copied:
                copied[x] = f"{x}__to_tp_group{b.index}"
                before.setdefault(node.output[0], []).append(
                    helper.make_node(
                        COPY_TO_GROUP, [x], [copied[x]], domain=DOMAIN, group="tensor",
                        name=f"{name}/CopyToGroup",
                    )
                )  # fmt: skip
            node.input[0] = copied[x]
        for name in b.rows:
            node = by_output[mg.graph.nodes[name]["outputs"][0]]
            y = node.output[0]
            partial = f"{y}__partial"
            node.output[0] = partial
            extra = []
            if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2]:
                bias = node.input[2]
                del node.input[2]
                summed = f"{y}__sum"
                extra = [helper.make_node("Add", [summed, bias], [y], name=f"{name}/bias")]
                reduce_out = summed
            else:
                reduce_out = y
            after.setdefault(partial, []).extend(
                [
                    helper.make_node(
                        ALL_REDUCE, [partial], [reduce_out], domain=DOMAIN, group="tensor",
                        name=f"{name}/AllReduce",
                    ),
                    *extra,
                ]
            )  # fmt: skip
    nodes = []
    for node in g.node:
        nodes += before.get(node.output[0], []) if node.output else []
        nodes.append(node)
        nodes += after.get(node.output[0], []) if node.output else []
    del g.node[:]
    g.node.extend(nodes)
    g.initializer.extend(new_inits)
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    kept = [i for i in g.initializer if i.name in used or i.name in shards.params]
    del g.initializer[:]
    g.initializer.extend(kept)
    if not any(o.domain == DOMAIN for o in out.opset_import):
        out.opset_import.append(helper.make_opsetid(DOMAIN, DOMAIN_VERSION))
    return out


def _rewrite_static_shapes(
    node: onnx.NodeProto,
    mg: ModelGraph,
    sharded: dict[str, tuple[int, int]],
    t: int,
    new_inits: list[onnx.TensorProto],
    prefix: str,
) -> None:
    """Shape constants that carry the sharded axis' size: Reshape's and Expand's target
    shape becomes the shard's output shape; Split's sizes on that axis are divided by t."""
    op = node.op_type
    if op in ("Reshape", "Expand") and node.output[0] in sharded:
        axis, size = sharded[node.output[0]]
        shape = list(mg.tensors[node.output[0]].shape)
        shape[axis] = size // t
        name = f"{prefix}/shape"
        new_inits.append(numpy_helper.from_array(np.array(shape, dtype=np.int64), name))
        node.input[1] = name
    elif op == "Split":
        outs = [o for o in node.output if o in sharded]
        if not outs:
            return
        axis_attr = next((a.i for a in node.attribute if a.name == "axis"), 0)
        rank = len(mg.tensors[node.output[0]].shape)
        split_axis = axis_attr % rank
        sizes = [mg.tensors[o].shape[split_axis] for o in node.output]
        if split_axis != sharded[outs[0]][0]:
            return  # split along another axis: sizes unchanged
        sizes = [s // t for s in sizes]
        if len(node.input) > 1 and node.input[1]:
            name = f"{prefix}/split"
            new_inits.append(numpy_helper.from_array(np.array(sizes, dtype=np.int64), name))
            node.input[1] = name
        else:
            for a in node.attribute:
                if a.name == "split":
                    del a.ints[:]
                    a.ints.extend(sizes)


def emulate_group(models: list[onnx.ModelProto]) -> onnx.ModelProto:
    """One ONNX model running t rank models side by side: every rank's tensors prefixed
    `tp<k>/` (graph inputs shared), AllReduce a `Sum` over the ranks, CopyToGroup an
    `Identity`; outputs are rank 0's under their own names plus every rank's `tp<k>/name`."""
    first = models[0].graph
    inputs = {i.name for i in first.input}
    nodes, inits, outputs = [], [], []

    def rename(k: int, name: str) -> str:
        return name if not name or name in inputs else f"tp{k}/{name}"

    for k, m in enumerate(models):
        for init in m.graph.initializer:
            copy = onnx.TensorProto()
            copy.CopyFrom(init)
            copy.name = rename(k, init.name)
            inits.append(copy)
        for node in m.graph.node:
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            del copy.input[:]
            del copy.output[:]
            copy.output.extend(rename(k, o) for o in node.output)
            copy.name = f"tp{k}/{node.name}"
            if node.domain == DOMAIN and node.op_type in (ALL_REDUCE, ALL_GATHER):
                axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
                del copy.attribute[:]
                if node.op_type == ALL_REDUCE:
                    copy.op_type, copy.domain = "Sum", ""
                else:
                    copy.op_type, copy.domain = "Concat", ""
                    copy.attribute.append(helper.make_attribute("axis", axis))
                copy.input.extend(rename(j, node.input[0]) for j in range(len(models)))
            else:
                copy.input.extend(rename(k, i) for i in node.input)
                if node.domain == DOMAIN and node.op_type == COPY_TO_GROUP:
                    copy.op_type, copy.domain = "Identity", ""
                    del copy.attribute[:]
            nodes.append(copy)
        for o in m.graph.output:
            outputs.append(
                helper.make_tensor_value_info(rename(k, o.name), o.type.tensor_type.elem_type, None)
            )
    for o in first.output:
        nodes.append(helper.make_node("Identity", [rename(0, o.name)], [o.name]))
        outputs.append(o)
    graph = helper.make_graph(
        nodes, f"{first.name}_tp{len(models)}", list(first.input), outputs, inits
    )
    opsets = [o for o in models[0].opset_import if o.domain != DOMAIN]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="pipeplan")
    model.ir_version = models[0].ir_version
    model.functions.extend(models[0].functions)
    return model
