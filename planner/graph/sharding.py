"""Which operators can be split across a tensor-parallel group, found in the ONNX graph.

Megatron-LM's tensor parallelism (M. Shoeybi et al., "Megatron-LM: Training Multi-Billion
Parameter Language Models Using Model Parallelism", 2019, section 3) splits a *block*:
one or more column-parallel linears (their weights split along the output dimension),
work that stays on each device's shard, then a row-parallel linear (its weight split
along the input dimension) whose partial results are all-reduced. An MLP is a block
(up [and gate] projection, activation, down projection), and so is attention with its
heads split (Q, K, V projections, per-head scores, softmax and context, output
projection); grouped-query attention shards its key/value heads too.

`find_blocks` recognises blocks without knowing the model, by following the sharded axis
of every tensor forward from each linear whose input is replicated (a *column*: a MatMul
or Gemm whose weight is a parameter or a view of one, `ModelGraph.weights`):

* elementwise operators keep the axis; an operand from outside the block must be
  broadcast along it (size 1 there: a mask, a rotary table) or be a parameter of the
  axis' full size (a bias, split with its column);
* Transpose moves the axis; Unsqueeze/Squeeze shift it; Reshape keeps it when the
  dimensions before it keep their product (splitting [.., heads x head_dim] into heads,
  merging them back, `repeat_kv`'s [kv, groups] into heads); Split, Slice and Concat on
  another axis keep it, Split on it cuts a fused QKV projection into its parts; Softmax
  and reductions on another axis keep it; Expand keeps it;
* a MatMul of two sharded tensors on a batch axis (scores, context) keeps it;
* a linear whose input is sharded on its contracted (last) axis is the block's *row*: its
  output is the all-reduced sum, replicated again.

Anything else that meets a sharded tensor (a normalisation over the sharded axis, a
graph output, an operator not listed) makes the block unshardable, with the reason. A
block can be split t ways when t divides the size of every axis it shards (heads, KV
heads, the MLP's width).

A column whose split output is a graph output (an LM head over the vocabulary, Megatron's
vocabulary-parallel head) is a block of its own: each device computes its slice of the
logits and the group all-gathers them. An embedding (a Gather) is not split. A weight the
block would split that is also read outside it (a head tied to the embedding) makes the
block unshardable: one copy cannot be both split and whole.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import onnx

from planner.graph.load import ModelGraph

#: Operators that map each element to one element (any operands broadcast).
ELEMENTWISE = {
    "Abs", "Add", "And", "Cast", "Ceil", "Clip", "Cos", "Div", "Dropout", "Elu", "Equal",
    "Erf", "Exp", "Floor", "Gelu", "Greater", "HardSigmoid", "HardSwish", "Identity",
    "LeakyRelu", "Less", "Log", "Max", "Min", "Mish", "Mul", "Neg", "Not", "Or", "Pow",
    "Reciprocal", "Relu", "Selu", "Sigmoid", "Sign", "Sin", "Softplus", "Softsign", "Sqrt",
    "Sub", "Tanh", "Where", "Trilu", "IsNaN", "IsInf",
}  # fmt: skip
#: Operators with an `axis` (or `axes`) attribute or input that must not be the sharded one.
ALONG_OTHER_AXIS = {"Softmax", "LogSoftmax", "ReduceMax", "ReduceMean", "ReduceSum", "ArgMax"}


@dataclass
class Block:
    """One shardable region: its column linears, its row linears, the nodes between."""

    index: int
    columns: list[str] = field(default_factory=list)
    rows: list[str] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)
    #: every sharded axis' full size (t must divide each): widths, heads, KV heads
    sizes: set[int] = field(default_factory=set)
    heads: list[int] = field(default_factory=list)
    problem: str = ""
    #: every sharded tensor: (its sharded axis, that axis' full size)
    tensors: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: every sharded parameter (or view of one) read by the block: its sharded axis
    params: dict[str, int] = field(default_factory=dict)
    #: the sizes a fused projection is cut into on the sharded axis (Split), in order
    parts: list[int] = field(default_factory=list)
    #: the replicated tensors the columns read (their gradients are all-reduced)
    column_inputs: list[str] = field(default_factory=list)
    #: graph outputs the block computes split on their last axis (an LM head split over
    #: the vocabulary): all-gathered whole (forward), their gradient sliced (backward)
    gathers: list[str] = field(default_factory=list)

    @property
    def kind(self) -> str:
        if self.heads:
            return "attention"
        return "vocabulary" if self.gathers else "mlp"

    @property
    def valid(self) -> bool:
        return not self.problem and bool(self.rows or self.gathers)

    def why_not(self, t: int) -> str:
        """'' when the block splits t ways, else why not."""
        if self.problem:
            return self.problem
        if not self.rows and not self.gathers:
            return "no row-parallel linear closes it"
        bad = sorted(s for s in self.sizes if s % t)
        if bad:
            what = "heads" if set(bad) & set(self.heads) else "width"
            return f"{what} {bad[0]} not divisible by {t}"
        return ""


@dataclass(frozen=True)
class _Shard:
    axis: int  # non-negative, of the tensor's rank
    size: int  # the axis' full (unsharded) size
    block: int


def _attrs(proto: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in proto.attribute}


class _Finder:
    def __init__(self, mg: ModelGraph):
        self.mg = mg
        self.shard: dict[str, _Shard] = {}
        self.blocks: list[Block] = []
        self.parent: list[int] = []
        self.poisoned: set[str] = set()

    # ---------------------------------------------------------------- helpers

    def shape(self, tensor: str) -> tuple[int, ...] | None:
        info = self.mg.tensors.get(tensor)
        return tuple(info.shape) if info is not None and info.shape is not None else None

    def root(self, b: int) -> int:
        while self.parent[b] != b:
            self.parent[b] = self.parent[self.parent[b]]
            b = self.parent[b]
        return b

    def merge(self, blocks: list[int]) -> int:
        roots = sorted({self.root(b) for b in blocks})
        keep = roots[0]
        for other in roots[1:]:
            self.parent[other] = keep
            a, b = self.blocks[keep], self.blocks[other]
            a.columns += b.columns
            a.rows += b.rows
            a.nodes += b.nodes
            a.sizes |= b.sizes
            a.heads += b.heads
            a.problem = a.problem or b.problem
            a.params |= b.params
            a.tensors |= b.tensors
            a.parts += b.parts
            a.column_inputs += [t for t in b.column_inputs if t not in a.column_inputs]
            a.gathers += b.gathers
        return keep

    def fail(self, block: int, node: str, why: str) -> None:
        b = self.blocks[self.root(block)]
        if not b.problem:
            b.problem = f"{self.mg.graph.nodes[node]['op_type']} {node}: {why}"

    def weight_shape(self, node: str) -> tuple[int, int] | None:
        """(K, N) of a linear's weight (a parameter or a view of one), else None."""
        d = self.mg.graph.nodes[node]
        if d["op_type"] not in ("MatMul", "Gemm") or len(d["inputs"]) < 2:
            return None
        w = d["inputs"][1]
        if w not in self.mg.param_like:
            return None
        shape = self.shape(w)
        if shape is None or len(shape) != 2:
            return None
        if d["op_type"] == "Gemm" and _attrs(self.mg.proto(node)).get("transB", 0):
            return shape[1], shape[0]
        return shape[0], shape[1]

    # ---------------------------------------------------------------- the walk

    def run(self) -> list[Block]:
        for node in self.mg.op_nodes:
            self.visit(node)
        for out in self.mg.outputs:
            s = self.shard.get(out)
            if s is None:
                continue
            b = self.blocks[self.root(s.block)]
            shape = self.shape(out)
            if out in self.poisoned or b.rows or shape is None or s.axis != len(shape) - 1:
                b.problem = b.problem or f"graph output {out} would be sharded"
            else:  # a head split over its outputs (the vocabulary): gathered at the end
                b.gathers.append(out)
        blocks = [b for i, b in enumerate(self.blocks) if self.root(i) == i]
        for b in blocks:
            b.problem = b.problem or self.tied(b)
        return blocks

    def tied(self, b: Block) -> str:
        """Why not, when a weight the block would split is also read outside it (a head
        tied to the embedding): one copy cannot be both split and whole."""
        inside = set(b.nodes)
        for view in b.params:
            for p in self.mg.weights.sources.get(view, frozenset({view})):
                outside = [
                    n
                    for n in self.mg.params[p].consumers
                    if n not in inside and not self.mg.graph.nodes[n]["weight_derived"]
                ] if p in self.mg.params else []  # fmt: skip
                if outside:
                    return f"weight {p} is also read outside the block (tied to {outside[0]})"
        return ""

    def visit(self, node: str) -> None:
        d = self.mg.graph.nodes[node]
        inputs = [t for t in d["inputs"] if t]
        sharded = [self.shard[t] for t in inputs if t in self.shard]
        weight = self.weight_shape(node)
        if weight is not None and not sharded:  # a column: its output split on its last axis
            self.new_block(node, weight[1])
            return
        if not sharded:
            return
        block = self.merge([s.block for s in sharded])
        self.blocks[block].nodes.append(node)
        if weight is not None:
            self.row(node, block, weight)
            return
        try:
            outs = self.propagate(node, d, inputs, block)
        except _Unsharded as exc:
            self.fail(block, node, str(exc))
            outs = {}
        for t, s in outs.items():
            self.shard[t] = s
            self.blocks[block].tensors[t] = (s.axis, s.size)
        if not outs:  # the block's data ends here unsharded: poison the outputs
            for t in d["outputs"]:
                if t:
                    self.shard[t] = _Shard(0, 1, block)
                    self.poisoned.add(t)

    def weight_axis(self, node: str, contracted: bool) -> int:
        """The axis of a linear's weight tensor that holds its output (or, `contracted`,
        its input) features."""
        trans_b = self.mg.graph.nodes[node]["op_type"] == "Gemm" and _attrs(
            self.mg.proto(node)
        ).get("transB", 0)
        return int(bool(trans_b) == contracted)

    def new_block(self, node: str, width: int) -> None:
        index = len(self.blocks)
        d = self.mg.graph.nodes[node]
        self.blocks.append(
            Block(
                index,
                columns=[node],
                nodes=[node],
                sizes={width},
                params={d["inputs"][1]: self.weight_axis(node, contracted=False)},
                column_inputs=[d["inputs"][0]],
            )
        )
        self.parent.append(index)
        if d["op_type"] == "Gemm" and len(d["inputs"]) > 2 and d["inputs"][2]:
            bias = d["inputs"][2]
            if bias not in self.mg.param_like or len(self.shape(bias) or ()) != 1:
                self.fail(index, node, "a Gemm bias that is not a per-feature parameter")
            else:
                self.blocks[index].params[bias] = 0
        out = d["outputs"][0]
        shape = self.shape(out)
        if shape is None:
            self.fail(index, node, "output shape unknown")
            return
        self.shard[out] = _Shard(len(shape) - 1, width, index)
        self.blocks[index].tensors[out] = (len(shape) - 1, width)

    def row(self, node: str, block: int, weight: tuple[int, int]) -> None:
        d = self.mg.graph.nodes[node]
        s = self.shard[d["inputs"][0]]
        shape = self.shape(d["inputs"][0])
        if shape is None or s.axis != len(shape) - 1 or s.size != weight[0]:
            self.fail(block, node, "a linear whose input is sharded off its contracted axis")
            return
        self.blocks[block].rows.append(node)  # output: the all-reduced sum, replicated
        self.blocks[block].params[d["inputs"][1]] = self.weight_axis(node, contracted=True)
        a = _attrs(self.mg.proto(node)) if d["op_type"] == "Gemm" else {}
        if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
            self.fail(block, node, "a row Gemm with transA, alpha or beta")

    def propagate(self, node: str, d: dict, inputs: list[str], block: int) -> dict[str, _Shard]:
        op = d["op_type"]
        out = d["outputs"][0]
        out_shape = self.shape(out)
        if out_shape is None:
            raise _Unsharded("output shape unknown")
        first = next(t for t in inputs if t in self.shard)
        s = self.shard[first]
        in_shape = self.shape(first)
        if in_shape is None:
            raise _Unsharded("input shape unknown")
        if op in ELEMENTWISE:
            return {out: self.elementwise(inputs, out_shape, block)}
        if op == "Transpose":
            perm = _attrs(self.mg.proto(node)).get("perm") or list(range(len(in_shape)))[::-1]
            return {out: _Shard(list(perm).index(s.axis), s.size, block)}
        if op == "Reshape":
            return {out: self.reshape(in_shape, out_shape, s, block)}
        if op in ("Unsqueeze", "Squeeze", "Expand", "Flatten"):
            return {out: self.reshape(in_shape, out_shape, s, block, expand=op == "Expand")}
        if op in ALONG_OTHER_AXIS:
            axes = self.axes(node, d, len(in_shape))
            if s.axis in axes:
                raise _Unsharded("reduces over the sharded axis")
            if op.startswith("Reduce") and len(out_shape) != len(in_shape):
                raise _Unsharded("reduction that drops axes")
            return {out: s}
        if op in ("Slice", "Concat", "Split"):
            return self.along(node, d, inputs, in_shape, s, block)
        if op == "MatMul":
            return {out: self.batched_matmul(d, inputs, block)}
        raise _Unsharded("operator not known to keep a split")

    def axes(self, node: str, d: dict, rank: int) -> set[int]:
        a = _attrs(self.mg.proto(node))
        if "axis" in a:
            return {a["axis"] % rank}
        if "axes" in a:
            return {x % rank for x in a["axes"]}
        if len(d["inputs"]) > 1 and d["inputs"][1] in self.mg.constants:
            return {int(x) % rank for x in self.mg.constants[d["inputs"][1]].ravel()}
        if d["op_type"].startswith("Reduce"):
            return set(range(rank))
        return {rank - 1}  # Softmax's default axis (opset 13)

    def elementwise(self, inputs: list[str], out_shape: tuple[int, ...], block: int) -> _Shard:
        rank = len(out_shape)
        axis: int | None = None
        size = 0
        for t in inputs:
            shape = self.shape(t) or ()
            offset = rank - len(shape)  # right-aligned broadcasting
            if t in self.shard:
                s = self.shard[t]
                a = s.axis + offset
                if axis is not None and a != axis:
                    raise _Unsharded("operands sharded on different axes")
                axis, size = a, s.size
        for t in inputs:
            if t in self.shard:
                continue
            shape = self.shape(t) or ()
            offset = rank - len(shape)
            i = axis - offset
            if i < 0 or shape[i] == 1:
                continue  # broadcast along the sharded axis: every device reads it whole
            if t in self.mg.param_like and shape[i] == size:
                self.blocks[block].params[t] = i  # a bias of the axis' size, split with it
                continue
            raise _Unsharded(f"{t} is full-size on the sharded axis")
        return _Shard(axis, size, block)

    def reshape(self, in_shape, out_shape, s: _Shard, block: int, expand: bool = False) -> _Shard:
        if expand:
            if len(in_shape) == len(out_shape) and in_shape[s.axis] == out_shape[s.axis]:
                return s
            raise _Unsharded("expands the sharded axis")
        before = math.prod(in_shape[: s.axis])
        for j in range(len(out_shape)):
            if math.prod(out_shape[:j]) == before and out_shape[j] > 1:
                size = out_shape[j]
                if size != s.size:
                    self.blocks[block].sizes.add(size)
                    if size < s.size:  # split into heads (or KV heads)
                        self.blocks[block].heads.append(size)
                return _Shard(j, size, block)
        raise _Unsharded("reshape splits the sharded axis across dimensions")

    def along(self, node, d, inputs, in_shape, s: _Shard, block: int) -> dict[str, _Shard]:
        op = d["op_type"]
        rank = len(in_shape)
        if op == "Concat":
            axis = _attrs(self.mg.proto(node))["axis"] % rank
            if axis == s.axis or any(t not in self.shard for t in inputs):
                raise _Unsharded("concatenates along the sharded axis or with replicated data")
            return {d["outputs"][0]: s}
        if op == "Slice":
            axes = self.axes_of_slice(d, rank)
            if s.axis in axes:
                raise _Unsharded("slices the sharded axis")
            return {d["outputs"][0]: s}
        axis = _attrs(self.mg.proto(node)).get("axis", 0) % rank
        outs = {}
        for t in d["outputs"]:
            shape = self.shape(t)
            if shape is None:
                raise _Unsharded("output shape unknown")
            size = shape[axis] if axis == s.axis else s.size
            if axis == s.axis:  # a fused projection cut into its parts
                self.blocks[block].sizes.add(size)
                self.blocks[block].parts.append(size)
            outs[t] = _Shard(s.axis, size, block)
        return outs

    def axes_of_slice(self, d: dict, rank: int) -> set[int]:
        ins = d["inputs"]
        if len(ins) > 3 and ins[3] in self.mg.constants:
            return {int(x) % rank for x in self.mg.constants[ins[3]].ravel()}
        return set(range(rank))

    def batched_matmul(self, d: dict, inputs: list[str], block: int) -> _Shard:
        a, b = inputs[0], inputs[1]
        if a not in self.shard or b not in self.shard:
            raise _Unsharded("a product with a replicated activation")
        sa, sb = self.shard[a], self.shard[b]
        ra, rb = len(self.shape(a)), len(self.shape(b))
        if sa.axis >= ra - 2 or sb.axis >= rb - 2 or ra - sa.axis != rb - sb.axis:
            raise _Unsharded("a product over the sharded axis")
        rank = len(self.shape(d["outputs"][0]))
        return _Shard(sa.axis + rank - ra, sa.size, block)


class _Unsharded(Exception):
    pass


def find_blocks(mg: ModelGraph) -> list[Block]:
    """Every candidate block of the graph (module docstring), valid or with its problem."""
    return _Finder(mg).run()
