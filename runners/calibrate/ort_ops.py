"""`calibrate --engine onnxruntime`: operators timed as onnxruntime runs them, for plans
served by `run --engine onnxruntime` (inference: forward only).

Every distinct operator (by signature) of each `--model` is run alone in an
`InferenceSession` of its one-node model (`runners.calibrate.operators.single_node_model`)
with the calibration's intra-op threads, sequential execution and all graph
optimisations; its time is the median of `repeats` runs less the call overhead (the
median run of a one-node Identity model, the same Python and session path). The whole
model is then timed the same way: what it takes beyond the sum of its nodes' isolated
times (onnxruntime fuses, reuses buffers, and every run pays the session's own overhead
once) is spread evenly over its nodes, positive or negative, as the in-model cost per
operator (`Profile.in_model`, source "whole", backward 0), which an operator of another
model that this calibration never timed also pays. A node's forward time is its isolated
time plus its model's share (never below 0); backward times are 0: onnxruntime here
serves inference, and a plan for training on such a profile is refused by nothing but
predicts no backward.

The device figures, link, optimizer fits and family laws come from the torch calibration
this one extends (`--extend`, or the one `calibrate` runs first): an operator neither
timed here nor in the base is priced by torch's family law plus the in-model cost, which
over-predicts onnxruntime (docs/calibration.md).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from cost.profile import InModelFit, OpTiming, Profile
from runners.calibrate.model_ops import ModelRequest, model_key
from runners.ort.providers import inference_session

ENGINE = "onnxruntime"


def random_feeds(
    session, bounds: dict[str, int], rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Random inputs of the session's shapes: integer ids below the table they index."""
    out = {}
    for i in session.get_inputs():
        shape = [d if isinstance(d, int) else 1 for d in i.shape]
        kind = i.type[len("tensor(") : -1]
        if kind in ("float", "float16", "double", "bfloat16"):
            dtype = {"float": np.float32, "float16": np.float16, "double": np.float64}.get(
                kind, np.float32
            )
            out[i.name] = rng.standard_normal(shape).astype(dtype)
        elif kind == "bool":
            out[i.name] = rng.random(shape) > 0.5
        else:
            dtype = np.dtype(kind if kind.startswith(("int", "uint")) else "int64")
            out[i.name] = rng.integers(0, max(1, bounds.get(i.name, 1)), shape).astype(dtype)
    return out


def time_session(session, feeds: dict, repeats: int, warmup: int = 3) -> float:
    """Median seconds of one `session.run` over `repeats` runs, after `warmup`."""
    for _ in range(warmup):
        session.run(None, feeds)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def call_overhead(threads: int, repeats: int) -> float:
    """Seconds a run of a one-node model costs beyond its operator (Identity of 1 float)."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "id", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = inference_session(model.SerializeToString(), threads)
    return time_session(session, {"x": np.zeros(1, np.float32)}, repeats)


def bound_model(path: str, mg) -> bytes:
    """The model with its graph inputs' shapes bound as the plan binds them."""
    import onnx

    model = onnx.load(path)
    for i in model.graph.input:
        info = mg.tensors.get(i.name)
        if info is None or info.shape is None:
            continue
        dims = i.type.tensor_type.shape.dim
        for d, v in zip(dims, info.shape, strict=False):
            d.ClearField("dim_param")
            d.dim_value = int(v)
    return model.SerializeToString()


def load_models(requests: Sequence[ModelRequest]) -> list:
    """(request, its `ModelGraph`) for each request: a bad model fails here, one line,
    before anything is timed."""
    from planner.graph.load import load_graph

    return [(req, load_graph(req.path, req.bindings)) for req in requests]


def time_model_ops(
    requests: Sequence[ModelRequest],
    *,
    threads: int,
    repeats: int,
    progress: Callable[[str, int, int], None] | None = None,
    loaded: list | None = None,
) -> tuple[dict[str, OpTiming], InModelFit, float]:
    """(ops by signature, the in-model cost per operator, the call overhead in seconds);
    `loaded`: the requests' graphs when `load_models` has loaded them already."""
    loaded = load_models(requests) if loaded is None else loaded
    overhead = call_overhead(threads, repeats)
    rng = np.random.default_rng(0)
    ops: dict[str, OpTiming] = {}
    excess: dict[str, list[float]] = {}
    sums: dict[str, tuple[float, int, float]] = {}  # model -> (isolated sum, nodes, whole)
    total = sum(mg.graph.number_of_nodes() for _, mg in loaded)
    done = 0
    for req, mg in loaded:
        isolated, op_type, mine, whole = _time_model(req, mg, threads, repeats, overhead, rng)
        done += mg.graph.number_of_nodes()
        if progress:
            progress(f"onnxruntime {Path(req.path).name}", done, total)
        alone = sum(isolated[s] for s in mine)
        inside = max(whole - overhead, 0.0)
        per_node = (inside - alone) / max(len(mine), 1)
        # spread the difference: added evenly when the model takes longer than its
        # operators alone, in proportion when it takes less (fusion), so that no operator
        # goes below 0 and the operators' sum is the model's time either way
        scale = inside / alone if alone > 0 and per_node < 0 else 1.0
        key = model_key(req)
        sums[key] = (alone + overhead, len(mine), whole)
        excess[key] = [1e6 * per_node, 0.0]
        for sig in dict.fromkeys(mine):
            if sig not in ops:
                t = isolated[sig] * scale if scale != 1.0 else isolated[sig] + per_node
                ops[sig] = OpTiming(
                    op_type=op_type[sig],
                    forward_s=max(t, 0.0),
                    backward_s=0.0,
                    isolated_forward_s=isolated[sig],
                    isolated_backward_s=0.0,
                    model=Path(req.path).name,
                )
    held_out = {}
    for key, (alone, nodes, whole) in sums.items():
        others = [v[0] for k, v in excess.items() if k != key]
        if others:
            predicted = alone + 1e-6 * nodes * max(statistics.median(others), 0.0)
            held_out[key] = round(abs(predicted - whole) / whole, 4)
    fit = InModelFit(
        forward_node_us=max(statistics.median(v[0] for v in excess.values()), 0.0)
        if excess
        else 0.0,
        backward_node_us=0.0,
        source="whole",
        models=excess,
        held_out_error=held_out,
    )
    return ops, fit, overhead


def _time_model(req, mg, threads: int, repeats: int, overhead: float, rng):
    """(isolated seconds by signature, op types, the signature of every node, the whole
    model's seconds: the median of three timings, before, amid and after its operators,
    since a shared machine's speed drifts). One session lives at a time: an idle
    session's spinning thread pool would steal the next one's cores."""
    from runners.calibrate.operators import index_bounds, single_node_model

    bounds = index_bounds(mg)
    whole_model = bound_model(req.path, mg)

    def whole_once() -> float:
        session = inference_session(whole_model, threads)
        t = time_session(session, random_feeds(session, bounds, rng), repeats)
        del session
        return t

    nodes = [(n, d) for n, d in mg.graph.nodes(data=True) if not d["folded"]]
    wholes = [whole_once()]
    isolated: dict[str, float] = {}
    op_type: dict[str, str] = {}
    for i, (name, data) in enumerate(nodes):
        sig = data["signature"]
        if sig not in isolated:
            session = inference_session(single_node_model(mg, name).SerializeToString(), threads)
            t = time_session(session, random_feeds(session, bounds, rng), repeats)
            del session
            isolated[sig] = max(t - overhead, 0.0)
            op_type[sig] = data["op_type"]
        if i == len(nodes) // 2:
            wholes.append(whole_once())
    wholes.append(whole_once())
    return isolated, op_type, [d["signature"] for _, d in nodes], statistics.median(wholes)


def onnxruntime_profile(
    base: Profile,
    requests: Sequence[ModelRequest],
    *,
    repeats: int = 30,
    threads: int | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    loaded: list | None = None,
) -> Profile:
    """`base` (a torch calibration of this host) with onnxruntime's operator times and
    in-model cost instead of torch's (module docstring), timed with `threads` intra-op
    threads (default: the base's)."""
    import onnxruntime as ort

    threads = threads or base.threads
    ops, fit, overhead = time_model_ops(
        requests, threads=threads, repeats=repeats, progress=progress, loaded=loaded
    )
    return base.model_copy(
        update={
            "engine": ENGINE,
            "threads": threads,
            "ops": ops,
            "in_model": fit,
            "models": {k: {"engine": ENGINE} for k in fit.models},
            "overhead": {"forward_call_s": overhead, "backward_call_s": 0.0},
            "note": (base.note + "; " if base.note else "")
            + f"operators timed in onnxruntime {ort.__version__}",
        }
    )
