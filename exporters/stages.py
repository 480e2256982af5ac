"""Cut an ONNX model into one standalone model per pipeline stage.

A stage model holds the plan's operators for that stage plus what they need that is
static: Constant nodes are copied, folded shape arithmetic is replaced by its value
(an initializer: shapes are bound per micro-batch, so a stage model has fixed shapes),
or, where the value is unknown, the folded subgraph itself is copied; so are the nodes
that compute a weight from parameters (`Transpose(W)`), in every stage that reads it. Its inputs are the
graph inputs it reads and the tensors routed to it; its outputs are the graph outputs it
writes and the tensors it sends on. It keeps exactly the initializers it uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx
from onnx import helper, numpy_helper

from cost.errors import PipeplanError
from planner.graph.load import ModelGraph
from planner.graph.onnx_io import TORCH_INPUT_KIND, torch_input_kinds, unique_node_names
from planner.plan_file import Plan


@dataclass
class StageGraph:
    """The pieces of one stage model, before weights are written."""

    index: int
    nodes: list[onnx.NodeProto]
    initializers: list[onnx.TensorProto]  # copied from the source (possibly external)
    folded_values: list[onnx.TensorProto]  # new, inline: values of folded shape arithmetic
    inputs: list[str]
    outputs: list[str]
    relays: list[tuple[str, int, int]] = field(default_factory=list)  # tensor, from, to


def cut_stages(mg: ModelGraph, plan: Plan) -> list[StageGraph]:
    """Split `mg.model` along `plan` (which must have been made for this graph)."""
    source = mg.model.graph
    names = unique_node_names(source.node)
    by_name = dict(zip(names, source.node, strict=True))
    producer = {}
    for name, node in by_name.items():
        for out in node.output:
            if out:
                producer[out] = name
    # static producers: shape arithmetic (baked into values where known) and weight
    # computations (copied into every stage that reads them: a weight is never routed)
    folded = {n for n, d in mg.graph.nodes(data=True) if d["folded"] or d["weight_derived"]}
    initializers = {t.name: t for t in source.initializer}
    graph_inputs = set(mg.inputs)
    received: dict[int, set[str]] = {}
    sent: dict[int, set[str]] = {}
    relays: dict[int, list[tuple[str, int, int]]] = {}
    for route in plan.routing.forward:
        received.setdefault(route.dst_stage, set()).add(route.tensor)
        if route.origin_stage == route.src_stage:
            sent.setdefault(route.src_stage, set()).add(route.tensor)
        else:
            relays.setdefault(route.src_stage, []).append(
                (route.tensor, route.src_stage - 1, route.dst_stage)
            )
    ctx = _Context(mg, by_name, producer, folded, initializers, names)
    return [
        _cut_one(
            ctx,
            st.index,
            list(st.nodes),
            graph_inputs | received.get(st.index, set()),
            sent.get(st.index, set()),
            relays.get(st.index, []),
        )
        for st in plan.stages
    ]


@dataclass
class _Context:
    mg: ModelGraph
    by_name: dict[str, onnx.NodeProto]
    producer: dict[str, str]
    folded: set[str]
    initializers: dict[str, onnx.TensorProto]
    names: list[str]


def _cut_one(
    ctx: _Context,
    index: int,
    working: list[str],
    available: set[str],
    sent: set[str],
    relays: list[tuple[str, int, int]],
) -> StageGraph:
    mg, by_name, producer = ctx.mg, ctx.by_name, ctx.producer
    missing = [n for n in working if n not in by_name]
    if missing:
        raise PipeplanError(
            f"plan stage {index} names node '{missing[0]}', which the model does not have"
        )
    included: list[str] = []
    included_set: set[str] = set(working)
    folded_values: dict[str, onnx.TensorProto] = {}

    def need_static(tensor: str) -> None:
        """Make a static tensor available in this stage (see module docstring)."""
        if tensor in ctx.initializers or tensor in folded_values:
            return
        node_name = producer.get(tensor)
        if node_name is None or node_name in included_set:
            return
        node = by_name[node_name]
        if node.op_type != "Constant" and tensor in mg.constants:
            folded_values[tensor] = numpy_helper.from_array(mg.constants[tensor], tensor)
            return
        for inp in node.input:
            if not inp or inp in available or producer.get(inp) in included_set:
                continue
            if producer.get(inp) in ctx.folded or inp in ctx.initializers:
                need_static(inp)
            else:
                raise PipeplanError(
                    f"stage {index}: shape arithmetic or a weight computation needs '{inp}', "
                    "which is neither computed in the stage nor routed to it"
                )
        included.append(node_name)
        included_set.add(node_name)

    for name in working:
        for inp in by_name[name].input:
            if inp and producer.get(inp) in ctx.folded:
                need_static(inp)
    order = {n: i for i, n in enumerate(ctx.names)}
    all_nodes = sorted(set(included) | set(working), key=order.__getitem__)
    produced = {o for n in all_nodes for o in by_name[n].output if o}
    consumed = [i for n in all_nodes for i in by_name[n].input if i]
    inputs, used_inits = [], []
    for t in dict.fromkeys(consumed):
        if t in produced or t in folded_values:
            continue
        if t in ctx.initializers:
            used_inits.append(ctx.initializers[t])
        elif t in available:
            inputs.append(t)
        else:
            raise PipeplanError(
                f"stage {index} consumes '{t}', which is neither produced there, a graph input, "
                "nor routed to it: the plan does not match this model"
            )
    outputs = [
        t
        for t in dict.fromkeys(o for n in all_nodes for o in by_name[n].output if o)
        if t in mg.outputs or t in sent
    ]
    return StageGraph(
        index=index,
        nodes=[by_name[n] for n in all_nodes],
        initializers=used_inits,
        folded_values=list(folded_values.values()),
        inputs=inputs,
        outputs=outputs,
        relays=relays,
    )


def value_info(mg: ModelGraph, name: str) -> onnx.ValueInfoProto:
    info = mg.tensors.get(name)
    if info is None or info.shape is None:
        return helper.make_tensor_value_info(
            name, info.dtype if info else onnx.TensorProto.FLOAT, None
        )
    return helper.make_tensor_value_info(name, info.dtype, list(info.shape))


def stage_model(
    mg: ModelGraph, stage: StageGraph, initializers: list[onnx.TensorProto]
) -> onnx.ModelProto:
    """A standalone ModelProto for `stage` with the given (already relocated) initializers."""
    src = mg.model
    nodes = [onnx.NodeProto() for _ in stage.nodes]
    for copy, node in zip(nodes, stage.nodes, strict=True):
        copy.CopyFrom(node)
    inner = {o for n in stage.nodes for o in n.output if o} - set(stage.outputs)
    graph = helper.make_graph(
        nodes,
        f"{src.graph.name or 'model'}_stage{stage.index}",
        [value_info(mg, t) for t in stage.inputs],
        [value_info(mg, t) for t in stage.outputs],
        initializer=[*initializers, *stage.folded_values],
        value_info=[
            value_info(mg, t)
            for t in sorted(inner)
            if t in mg.tensors and mg.tensors[t].shape is not None
        ],
    )
    # torch.export's word on buffers and constants, kept for the runner (which never trains
    # those); the same word for the constants the planner found folded by the exporter
    # (planner.graph.constants) and for the values it folded itself (a mask computed from
    # shapes alone, written here as an initializer)
    kinds = torch_input_kinds(src.graph)
    kinds |= {t: "CONSTANT_TENSOR" for t in mg.folded_constants}
    kinds |= {t.name: "CONSTANT_TENSOR" for t in stage.folded_values}
    for t in [*initializers, *stage.folded_values]:
        if t.name in kinds:
            vi = helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
            entry = vi.metadata_props.add()
            entry.key, entry.value = TORCH_INPUT_KIND, kinds[t.name]
            graph.value_info.append(vi)
    model = helper.make_model(graph, opset_imports=list(src.opset_import), producer_name="pipeplan")
    model.ir_version = src.ir_version
    used_functions = {(n.domain, n.op_type) for n in stage.nodes}
    for fn in src.functions:
        if (fn.domain, fn.name) in used_functions:
            model.functions.append(fn)
    return model


def whole_stage_models(mg: ModelGraph, plan: Plan) -> list[onnx.ModelProto]:
    """Every stage of `plan` as one unsharded model, its weights the source's (external
    data still pointing at the source model's folder): the reference a tensor-parallel
    run is checked against."""
    return [stage_model(mg, st, st.initializers) for st in cut_stages(mg, plan)]
