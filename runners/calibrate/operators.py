"""Operators of models, timed as the runner runs them.

Every distinct operator (by `cost.signature.op_signature`) becomes a one-node ONNX model
(`single_node_model`), converted with `runners.onnx_to_torch.convert(weights="random")` and
timed (`OpTimer`): forward under autograd, then `torch.autograd.backward` to its inputs that
carry a gradient and its parameters, with ready-made output gradients. The time of calling
an empty converted module (forward) and of an empty backward call is measured and
subtracted (`overhead:`): a stage pays those once, not once per operator. The whole
converted model is timed the same way (`time_whole_model`), for the context correction
(`runners.calibrate.model_ops`).
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch

from runners.calibrate.timing import Timer

#: Repeats of the (microsecond) empty-module measurement, even in quick mode.
OVERHEAD_REPEATS = 200


def single_node_model(mg, node_name: str):
    """A one-operator ONNX model of `node_name` of `mg` (a `planner.graph.load.ModelGraph`).

    Inputs that carry data (roles `g` and `n` of the signature) become graph inputs;
    parameters (`w`) initializers (random values; `convert(weights="random")` re-draws
    them); constants (`k`) initializers with their values when known, else zeros. The
    model's opsets and local functions are kept.
    """
    import onnx
    from onnx import helper, numpy_helper

    data = mg.graph.nodes[node_name]
    proto = mg.proto(node_name)
    roles = _roles(data, len(proto.input))
    inputs, inits, seen = [], [], set()
    for tensor, role in zip(proto.input, roles, strict=True):
        if not tensor or tensor in seen:
            continue
        seen.add(tensor)
        info = mg.tensors.get(tensor)
        if info is None or info.shape is None:
            raise ValueError(f"input {tensor} has no known shape")
        if role in ("g", "n"):
            inputs.append(helper.make_tensor_value_info(tensor, info.dtype, list(info.shape)))
            continue
        value = mg.constants.get(tensor) if role == "k" else None
        np_dtype = helper.tensor_dtype_to_np_dtype(info.dtype)
        if value is None or tuple(np.shape(value)) != tuple(info.shape):
            value = (
                np.random.default_rng(0).normal(0, 0.02, info.shape).astype(np_dtype)
                if role == "w"
                else np.zeros(info.shape, dtype=np_dtype)
            )
        inits.append(numpy_helper.from_array(np.asarray(value, dtype=np_dtype), tensor))
    outputs = []
    for tensor in proto.output:
        if not tensor:
            continue
        info = mg.tensors.get(tensor)
        if info is None:
            outputs.append(helper.make_empty_tensor_value_info(tensor))
        else:
            shape = None if info.shape is None else list(info.shape)
            outputs.append(helper.make_tensor_value_info(tensor, info.dtype, shape))
    node = onnx.NodeProto()
    node.CopyFrom(proto)
    graph = helper.make_graph([node], "op", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=list(mg.model.opset_import))
    model.ir_version = mg.model.ir_version
    for fn in mg.model.functions:
        model.functions.append(fn)
    return model


def _roles(data: dict, n_inputs: int) -> list[str]:
    """Input roles of a graph node (`w`, `g`, `n`, `k` or `-`; see `op_signature`)."""
    roles = list(data["input_roles"])
    if len(roles) != n_inputs:
        raise ValueError("the graph node and the ONNX node disagree on the inputs")
    return roles


def _sample_input(info, role: str, node_proto, position: int, mg, device) -> torch.Tensor:
    from runners.convert.weights import torch_dtype

    shape = tuple(info.shape)
    dtype = torch_dtype(info.dtype)
    if dtype.is_floating_point:
        value = torch.rand(shape, device=device).to(dtype) + 0.5
        return value.requires_grad_(role == "g")
    if dtype == torch.bool:
        return torch.rand(shape, device=device) > 0.5
    if node_proto.op_type in ("Gather", "GatherElements") and position == 1:
        data = mg.tensors.get(node_proto.input[0])
        axis = next((a.i for a in node_proto.attribute if a.name == "axis"), 0)
        if data is not None and data.shape:
            high = int(data.shape[axis % len(data.shape)])
            return torch.randint(0, max(1, high), shape, device=device, dtype=dtype)
    return torch.zeros(shape, dtype=dtype, device=device)


class OpTimer:
    """Times converted one-operator modules the way the runner runs a stage."""

    def __init__(self, timer: Timer):
        self.timer = timer
        self.overhead = {"forward_call_s": 0.0, "backward_call_s": 0.0}

    def measure_overhead(self) -> dict[str, float]:
        """An empty converted module (Identity): the forward call, and a backward call."""
        from onnx import TensorProto, helper

        from runners.onnx_to_torch import convert

        graph = helper.make_graph(
            [helper.make_node("Identity", ["x"], ["y"])],
            "empty",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 64])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 64])],
        )
        gm = convert(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
        gm = gm.to(self.timer.device)
        x = torch.rand(8, 64, device=self.timer.device, requires_grad=True)
        fwd, bwd = self._time(gm, [x], [x], min_repeats=OVERHEAD_REPEATS)
        self.overhead = {"forward_call_s": fwd, "backward_call_s": bwd or 0.0}
        return self.overhead

    def _time(
        self,
        gm,
        args: list[torch.Tensor],
        leaves: list[torch.Tensor],
        min_repeats: int | None = None,
    ):
        """Median (forward_s, backward_s or None) of `gm(*args)` and its backward.

        Only the module call and the `torch.autograd.backward` call are timed: the output
        gradients (ones) are made beforehand, as the runner receives them from the next stage.
        """
        targets = leaves + [p for p in gm.parameters() if p.requires_grad]
        timer = self.timer
        state: dict = {}

        def forward():
            with torch.enable_grad():
                state["outs"] = gm(*args)

        def prepare():
            outs = state["outs"]
            outs = outs if isinstance(outs, tuple | list) else (outs,)
            roots = [o for o in outs if isinstance(o, torch.Tensor) and o.requires_grad]
            state["roots"] = roots
            state["grads"] = [torch.ones_like(r) for r in roots]
            return bool(roots) and bool(targets)

        def backward():
            torch.autograd.backward(state["roots"], state["grads"], inputs=targets)

        def clear():
            state.clear()
            for leaf in leaves:
                leaf.grad = None

        start = time.perf_counter()
        has_backward = False
        warmup = max(1, timer.sizes.warmup)
        for _ in range(warmup):
            forward()
            has_backward = prepare()
            if has_backward:
                backward()
            clear()
        per_rep = (time.perf_counter() - start) / warmup
        n = int(timer.sizes.budget_s / max(per_rep, 1e-7))
        n = max(min_repeats or timer.sizes.min_repeats, min(timer.sizes.max_repeats, n))
        forward_times: list[float] = []
        backward_times: list[float] = []
        for _ in range(n):
            forward_times.append(timer.once(forward))
            if has_backward:
                prepare()
                backward_times.append(timer.once(backward))
            clear()
        fwd = statistics.median(forward_times)
        bwd = statistics.median(backward_times) if backward_times else None
        return fwd, bwd

    def time_node(self, mg, node_name: str) -> tuple[float, float]:
        """(forward_s, backward_s) of one operator of `mg`, call overheads subtracted."""
        from runners.onnx_to_torch import convert

        model = single_node_model(mg, node_name)
        gm = convert(model, weights="random").to(self.timer.device)
        data = mg.graph.nodes[node_name]
        proto = mg.proto(node_name)
        roles = _roles(data, len(proto.input))
        by_name: dict[str, torch.Tensor] = {}
        for pos, (tensor, role) in enumerate(zip(proto.input, roles, strict=True)):
            if tensor and role in ("g", "n") and tensor not in by_name:
                by_name[tensor] = _sample_input(
                    mg.tensors[tensor], role, proto, pos, mg, self.timer.device
                )
        args = [by_name[name] for name in gm.input_names]
        leaves = [a for a in args if a.requires_grad]
        fwd, bwd = self._time(gm, args, leaves)
        fwd = max(0.0, fwd - self.overhead["forward_call_s"])
        bwd = 0.0 if bwd is None else max(0.0, bwd - self.overhead["backward_call_s"])
        return fwd, bwd


def index_bounds(mg) -> dict[str, int]:
    """Graph inputs used as Gather indices -> the size of the table they index."""
    bounds: dict[str, int] = {}
    for _, data in mg.graph.nodes(data=True):
        if data["op_type"] == "Gather" and len(data["inputs"]) > 1:
            table = mg.tensors.get(data["inputs"][0])
            if table is not None and table.shape:
                ids = data["inputs"][1]
                bounds[ids] = min(bounds.get(ids, table.shape[0]), table.shape[0])
    return bounds


def whole_model_inputs(mg, names: list[str], device) -> list[torch.Tensor]:
    """Sample graph inputs for a whole model: integer ids below the table they index."""
    from runners.convert.weights import torch_dtype

    bounds = index_bounds(mg)
    out = []
    for name in names:
        info = mg.tensors[name]
        dtype = torch_dtype(info.dtype)
        shape = tuple(info.shape)
        if dtype.is_floating_point:
            out.append(torch.randn(shape, device=device).to(dtype))
        elif dtype == torch.bool:
            out.append(torch.rand(shape, device=device) > 0.5)
        else:
            high = max(1, bounds.get(name, 16))
            out.append(torch.randint(0, high, shape, device=device, dtype=dtype))
    return out


def time_whole_model(
    op_timer: OpTimer, mg, path: str, cache: dict | None = None
) -> tuple[float, float]:
    """(forward_s, backward_s) of the whole converted model, as one stage of it runs.

    `cache` (a dict) keeps the converted module and inputs between calls."""
    from runners.onnx_to_torch import convert

    cache = {} if cache is None else cache
    if "module" not in cache:
        gm = convert(path, weights="random").to(op_timer.timer.device)
        cache["module"] = gm
        cache["args"] = whole_model_inputs(mg, list(gm.input_names), op_timer.timer.device)
    fwd, bwd = op_timer._time(cache["module"], cache["args"], [])
    return fwd, bwd or 0.0
