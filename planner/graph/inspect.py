"""`inspect_model`: what a model is made of, layer by layer, before any planning."""

from __future__ import annotations

import os

from pydantic import BaseModel, Field

from cost.errors import PipeplanError
from cost.tensor import dtype_name
from cost.timings import phase
from planner.config import DEFAULT_MAX_LAYER_SHARE
from planner.graph.layers import LayerGraph, group_layers, load_layer_overrides
from planner.graph.load import ModelGraph, load_graph
from planner.graph.shapes import ShapeBindings
from planner.graph.sharding import find_blocks


class TensorSummary(BaseModel):
    name: str
    shape: list[int] | None
    dtype: str
    bytes: int


class LayerSummary(BaseModel):
    index: int
    name: str
    nodes: int = Field(description="number of working (non-folded) ONNX operators")
    forward_flops: int = Field(description="forward FLOPs per micro-batch, 1 multiply-add = 2")
    backward_flops: int
    params: int = Field(
        description="trainable parameters (shared weights counted in each layer that uses them)"
    )
    param_bytes: int
    activation_bytes: int = Field(description="bytes saved for backward per micro-batch")
    output_bytes: int = Field(description="bytes leaving the layer per micro-batch")
    node_names: list[str]


class ShardingRow(BaseModel):
    """One tensor-parallel block candidate (`planner.graph.sharding`) at degree t."""

    kind: str = Field(description="attention (heads split) or mlp")
    layers: list[str] = Field(description="the layers its nodes belong to")
    columns: list[str] = Field(description="column-parallel linears (output split)")
    rows: list[str] = Field(description="row-parallel linears (input split, all-reduced)")
    gathers: list[str] = Field(
        default_factory=list,
        description="graph outputs computed split on their last axis and all-gathered (a head "
        "split over the vocabulary)",
    )
    heads: list[int] = Field(default_factory=list, description="head counts it splits")
    sizes: list[int] = Field(description="every sharded axis' size (t must divide each)")
    splits: bool = Field(description="whether it splits t ways")
    reason: str = Field("", description="why not, when it does not")
    params: int = Field(0, description="parameters of its linears (what sharding divides)")


class TensorParallelReport(BaseModel):
    degree: int
    blocks: list[ShardingRow]
    sharded_params: int = Field(description="parameters in the blocks that split t ways")
    replicated_params: int = Field(description="every other trainable parameter")


class InspectReport(BaseModel):
    """`pipeplan inspect --json`: one object describing the model."""

    model: str
    graph_hash: str
    producer: str
    opset: int
    nodes: int = Field(description="ONNX nodes in the graph, folded ones included")
    working_nodes: int
    folded_nodes: int = Field(description="shape-arithmetic and constant nodes, which cost nothing")
    weight_nodes: int = Field(
        0,
        description="nodes computing a weight from parameters alone (Transpose(W), Cast(W)): "
        "placed with each stage that reads them, never routed",
    )
    merged_weights: int = Field(
        0, description="weights the exporter had merged with an equal one (found)"
    )
    merged_weights_separated: bool = Field(
        True, description="whether they were separated into their own parameters"
    )
    shared_weights: int = Field(
        0, description="weights read by several layers after separation (true ties)"
    )
    folded_constants: dict[str, str] = Field(
        default_factory=dict,
        description="float initializers found to be constants the exporter folded (masks, "
        "position tables), with the evidence: held as buffers, never trained",
    )
    unknown_shape_tensors: list[str] = Field(
        default_factory=list,
        description="tensors of unknown shape between operators; their layers are kept together",
    )
    params: int = Field(description="trainable parameters, each shared weight counted once")
    param_bytes: int
    buffer_bytes: int = Field(
        description="non-trainable state such as BatchNorm running statistics"
    )
    forward_flops: int
    backward_flops: int
    activation_bytes: int
    has_weights: bool
    symbols: dict[str, int]
    inputs: list[TensorSummary]
    outputs: list[TensorSummary]
    layer_source: str
    layers: list[LayerSummary]
    warnings: list[str]
    tensor_parallel: TensorParallelReport | None = Field(
        None, description="with --tp N: which blocks split N ways and why the others do not"
    )


def load_model(
    model: str | os.PathLike[str],
    bindings: ShapeBindings | None = None,
    *,
    layers_file: str | None = None,
    layer_depth: int | None = None,
    max_layer_share: float = DEFAULT_MAX_LAYER_SHARE,
    keep_merged_weights: bool = False,
) -> tuple[ModelGraph, LayerGraph]:
    """Load and group: the first step of every command."""
    mg = load_graph(model, bindings, keep_merged_weights=keep_merged_weights)
    with phase("layers"):
        overrides = load_layer_overrides(layers_file) if layers_file else None
        lg = group_layers(
            mg, max_layer_share=max_layer_share, depth=layer_depth, overrides=overrides
        )
    return mg, lg


def _tensor_summary(mg: ModelGraph, name: str) -> TensorSummary:
    info = mg.tensors.get(name)
    if info is None or info.shape is None:
        return TensorSummary(
            name=name, shape=None, dtype=dtype_name(info.dtype) if info else "unknown", bytes=0
        )
    return TensorSummary(
        name=name, shape=list(info.shape), dtype=info.dtype_name, bytes=info.nbytes
    )


def inspect_model(
    model: str | os.PathLike[str],
    bindings: ShapeBindings | None = None,
    *,
    layers_file: str | None = None,
    layer_depth: int | None = None,
    max_layer_share: float = DEFAULT_MAX_LAYER_SHARE,
    keep_merged_weights: bool = False,
    tensor_parallel: int | None = None,
) -> InspectReport:
    """Load `model`, price every operator, group layers, and summarise; with
    `tensor_parallel` t, also which blocks split t ways (`planner.graph.sharding`)."""
    mg, lg = load_model(
        model,
        bindings,
        layers_file=layers_file,
        layer_depth=layer_depth,
        max_layer_share=max_layer_share,
        keep_merged_weights=keep_merged_weights,
    )
    report = report_of(mg, lg)
    if tensor_parallel is not None:
        if tensor_parallel < 1:
            raise PipeplanError(f"--tp must be at least 1 (got {tensor_parallel})")
        report.tensor_parallel = tensor_parallel_report(mg, lg, tensor_parallel)
    return report


def tensor_parallel_report(mg: ModelGraph, lg: LayerGraph, t: int) -> TensorParallelReport:
    """Every block candidate at degree t, and how many parameters would be split."""
    layer_of = {n: layer.name for layer in lg.layers for n in layer.nodes}
    rows, sharded = [], 0
    for block in find_blocks(mg):
        # split: every linear's weight, a column Gemm's bias, the biases inside the block
        read = [w for n in block.rows for w in mg.graph.nodes[n]["inputs"][1:2]]
        read += [
            w for n in block.nodes if n not in block.rows for w in mg.graph.nodes[n]["inputs"][1:]
        ]
        params = {q for w in read for q in mg.weights.sources.get(w, ())}
        count = sum(mg.params[q].numel for q in params if q in mg.params and mg.params[q].trainable)
        reason = block.why_not(t)
        if not reason:
            sharded += count
        rows.append(
            ShardingRow(
                kind=block.kind,
                layers=list(dict.fromkeys(layer_of[n] for n in block.nodes if n in layer_of)),
                columns=block.columns,
                rows=block.rows,
                gathers=block.gathers,
                heads=sorted(set(block.heads)),
                sizes=sorted(block.sizes),
                splits=not reason,
                reason=reason,
                params=count,
            )
        )
    return TensorParallelReport(
        degree=t, blocks=rows, sharded_params=sharded, replicated_params=mg.param_count - sharded
    )


def report_of(mg: ModelGraph, lg: LayerGraph) -> InspectReport:
    layers = [
        LayerSummary(
            index=layer.index,
            name=layer.name,
            nodes=len(layer.nodes),
            forward_flops=layer.flops,
            backward_flops=layer.backward_flops,
            params=layer.param_count,
            param_bytes=layer.param_bytes,
            activation_bytes=layer.activation_bytes,
            output_bytes=layer.output_bytes,
            node_names=layer.nodes,
        )
        for layer in lg.layers
    ]
    folded = sum(1 for _, d in mg.graph.nodes(data=True) if d["folded"])
    derived = sum(1 for _, d in mg.graph.nodes(data=True) if d["weight_derived"])
    users: dict[str, int] = {}
    for layer in lg.layers:
        for p in layer.params:
            users[p] = users.get(p, 0) + 1
    return InspectReport(
        model=str(mg.path),
        graph_hash=mg.graph_hash,
        producer=mg.producer,
        opset=mg.opset,
        nodes=mg.graph.number_of_nodes(),
        working_nodes=mg.graph.number_of_nodes() - folded - derived,
        folded_nodes=folded,
        weight_nodes=derived,
        merged_weights=len(mg.aliases.merges),
        merged_weights_separated=mg.aliases.separated,
        shared_weights=sum(1 for n in users.values() if n > 1),
        folded_constants=mg.folded_constants,
        unknown_shape_tensors=lg.unknown_shape_tensors,
        params=mg.param_count,
        param_bytes=mg.param_bytes,
        buffer_bytes=sum(p.nbytes for p in mg.params.values() if not p.trainable),
        forward_flops=mg.forward_flops,
        backward_flops=sum(layer.backward_flops for layer in lg.layers),
        activation_bytes=sum(layer.activation_bytes for layer in lg.layers),
        has_weights=mg.has_weights,
        symbols=mg.symbols,
        inputs=[_tensor_summary(mg, n) for n in mg.inputs],
        outputs=[_tensor_summary(mg, n) for n in mg.outputs],
        layer_source=lg.source,
        layers=layers,
        warnings=mg.warnings + lg.warnings,
    )
