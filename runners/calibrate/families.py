"""Per-family time laws (`cost.families`): microbenchmark sweeps and their fits.

For every family, a sweep of single-operator ONNX models over the shapes real networks
use (convolutions by kernel size, channels and spatial size, strided and not; depthwise
and grouped; pooling; batch and layer normalisation; GEMMs from skinny to square;
softmax; reductions; concatenations; elementwise maths; copies) is converted and timed
exactly as a model's operators are (`runners.calibrate.operators.OpTimer`: torch eager,
forward and backward, call overheads subtracted). Each model is `x -> Mul(x, s) -> op`, the
scale `s` a parameter, so that the timed operator's input carries a gradient as inside a
network. The cost model's own FLOPs and bytes of each point (`cost.ops`) are the
regressors of

    t = fixed + flops / F + bytes / B

fitted forward and backward apart by non-negative least squares on relative error (every
subset of the three terms is solved and the best non-negative one kept: with three
unknowns that is the exact NNLS). Every third point is held out of a first fit to measure
`held_out_error` (the median relative error on shapes the fit never saw); the law kept is
then fitted on all points (`median_error`, `max_error`).
"""

from __future__ import annotations

import itertools
import statistics
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from cost.profile import FamilyFit, FamilyLaw

Point = tuple[float, float, float, float]  # flops, bytes, seconds (forward), ... see fit_family


def _model(op_nodes, x_shape, params: dict[str, np.ndarray], out_shape=None) -> onnx.ModelProto:
    """x -> Mul(x, scale) -> `op_nodes` (reading "xs"), output "y"; the scale (a
    parameter of the last axis' size, values near 1) makes "xs" carry a gradient."""
    scale = 1.0 + 0.01 * np.random.default_rng(1).standard_normal(x_shape[-1])
    inits = [numpy_helper.from_array(scale.astype(np.float32), "scale")]
    inits += [numpy_helper.from_array(v.astype(np.float32), k) for k, v in params.items()]
    nodes = [helper.make_node("Mul", ["x", "scale"], ["xs"]), *op_nodes]
    graph = helper.make_graph(
        nodes,
        "sweep",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _rng_weight(*shape: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32) * 0.05


def _conv(n, ci, co, hw, k, stride=1, groups=1) -> onnx.ModelProto:
    node = helper.make_node(
        "Conv", ["xs", "w", "b"], ["y"], kernel_shape=[k, k], pads=[k // 2] * 4,
        strides=[stride, stride], group=groups,
    )  # fmt: skip
    return _model(
        [node], (n, ci, hw, hw), {"w": _rng_weight(co, ci // groups, k, k), "b": np.zeros(co)}
    )


def _sweep(family: str, quick: bool) -> Iterator[onnx.ModelProto]:
    """The sweep's single-operator models for `family` (fewer with `quick`)."""
    n = 8 if quick else 16
    hws = (7, 14, 28) if quick else (7, 14, 28, 56)
    chans = (16, 64) if quick else (16, 64, 256)
    if family in ("conv-k1", "conv-k3", "conv-k5+"):
        k = {"conv-k1": 1, "conv-k3": 3, "conv-k5+": 5}[family]
        for ci, co, hw in itertools.product(chans, chans, hws):
            if k == 5 and ci * co * hw * hw > 64 * 256 * 28 * 28:
                continue  # minutes on a CPU: the law is fitted on the rest
            yield _conv(n, ci, co, hw, k, stride=2 if (ci + hw) % 3 == 0 else 1)
    elif family == "conv-depthwise":
        for c, hw, k in itertools.product((32, 128, 512), hws, (3, 5)):
            yield _conv(n, c, c, hw, k, groups=c)
    elif family == "conv-grouped":
        for c, hw in itertools.product((64, 256), hws):
            yield _conv(n, c, c, hw, 3, groups=c // 8 if c >= 64 else 2)
    elif family == "gemm":
        for m, kk, nn in itertools.product((32, 256, 1024), (64, 256, 1024), (64, 256, 1024)):
            if quick and m * kk * nn > 256 * 256 * 1024:
                continue
            node = helper.make_node("MatMul", ["xs", "w"], ["y"])
            yield _model([node], (m, kk), {"w": _rng_weight(kk, nn)})
    elif family in ("pool-max", "pool-avg"):
        op = "MaxPool" if family == "pool-max" else "AveragePool"
        for c, hw, (k, s) in itertools.product(chans, (*hws, 112), ((3, 2), (2, 2), (3, 1))):
            node = helper.make_node(op, ["xs"], ["y"], kernel_shape=[k, k], strides=[s, s],
                                    pads=[k // 2] * 4 if k == 3 else [0] * 4)  # fmt: skip
            yield _model([node], (n, c, hw, hw), {})
        if family == "pool-avg":
            for c, hw in itertools.product(chans, hws):
                yield _model(
                    [helper.make_node("GlobalAveragePool", ["xs"], ["y"])], (n, c, hw, hw), {}
                )
    elif family == "norm-batch":
        for c, hw in itertools.product(chans, (*hws, 112)):
            node = helper.make_node("BatchNormalization", ["xs", "g", "b", "m", "v"], ["y"])
            params = {"g": np.ones(c), "b": np.zeros(c), "m": np.zeros(c), "v": np.ones(c)}
            yield _model([node], (n, c, hw, hw), params)
    elif family == "norm-layer":
        for s, d in itertools.product((32, 128, 512), (64, 256, 1024)):
            node = helper.make_node("LayerNormalization", ["xs", "g", "b"], ["y"], axis=-1)
            yield _model([node], (n, s, d), {"g": np.ones(d), "b": np.zeros(d)})
    elif family == "softmax":
        for h, s in itertools.product((4, 12), (32, 128, 256)):
            yield _model([helper.make_node("Softmax", ["xs"], ["y"], axis=-1)], (n, h, s, s), {})
    elif family == "reduce":
        for c, hw in itertools.product(chans, hws):
            node = helper.make_node("ReduceMean", ["xs"], ["y"], axes=[2, 3], keepdims=1)
            yield _model([node], (n, c, hw, hw), {})
    elif family == "concat":
        for c, hw, parts in itertools.product(chans, hws, (2, 4)):
            names = [f"xs{i}" for i in range(parts)]
            pre = [helper.make_node("Identity", ["xs"], [x]) for x in names[1:]]
            node = helper.make_node("Concat", ["xs", *names[1:]], ["y"], axis=1)
            yield _model([*pre, node], (n, c, hw, hw), {})
    elif family == "eltwise":
        for numel, op in itertools.product(
            (1 << 12, 1 << 15, 1 << 18, 1 << 21), ("Relu", "Add", "Sigmoid")
        ):
            inputs = ["xs", "xs"] if op == "Add" else ["xs"]
            yield _model([helper.make_node(op, inputs, ["y"])], (numel // 64, 64), {})
    elif family == "movement":
        for c, hw in itertools.product(chans, hws):
            node = helper.make_node("Transpose", ["xs"], ["y"], perm=[0, 2, 3, 1])
            yield _model([node], (n, c, hw, hw), {})


SWEPT = ("conv-k1", "conv-k3", "conv-k5+", "conv-depthwise", "conv-grouped", "gemm",
         "pool-max", "pool-avg", "norm-batch", "norm-layer", "softmax", "reduce", "concat",
         "eltwise", "movement")  # fmt: skip


#: sweep points above this many forward FLOPs are skipped (seconds each on a CPU)
MAX_POINT_FLOPS = 4e9


def measure_family(
    family: str, time_node: Callable, quick: bool = False
) -> list[tuple[float, float, float, float, float]]:
    """(flops, bytes, forward_s, backward_flops, backward_s) of every sweep point: the
    cost model's figures of the operator and its measured times (`time_node(mg, node)`);
    points above `MAX_POINT_FLOPS` (a tenth of it with `quick`) are left out."""
    from planner.graph.load import load_graph

    points = []
    with tempfile.TemporaryDirectory() as scratch:
        for i, model in enumerate(_sweep(family, quick)):
            path = Path(scratch) / f"{family}_{i}.onnx"
            onnx.save(model, str(path))
            mg = load_graph(path)
            node = mg.op_nodes[-1]
            if len(mg.op_nodes) > 2:  # concat: its Identity copies come first, time the op
                node = next(n for n in mg.op_nodes if mg.graph.nodes[n]["op_type"] == "Concat")
            cost = mg.cost(node)
            if cost.flops > MAX_POINT_FLOPS / (10 if quick else 1):
                continue
            fwd, bwd = time_node(mg, node)
            points.append((cost.flops, cost.bytes_moved, fwd, cost.backward_flops, bwd))
    return points


def fit_law(flops: np.ndarray, nbytes: np.ndarray, t: np.ndarray) -> FamilyLaw:
    """Non-negative least squares of `t = c0 + c1 flops + c2 bytes` on relative error
    (points timed at 0, below the timer's resolution, are left out)."""
    keep = t > 0
    flops, nbytes, t = flops[keep], nbytes[keep], t[keep]
    if len(t) == 0:
        return FamilyLaw()
    columns = [np.ones_like(t), flops, nbytes]
    best: tuple[float, np.ndarray] | None = None
    weight = 1.0 / np.maximum(t, 1e-9)
    for size in (1, 2, 3):
        for subset in itertools.combinations(range(3), size):
            a = np.stack([columns[j] * weight for j in subset], axis=1)
            if not np.any(a):
                continue
            coef, *_ = np.linalg.lstsq(a, np.ones_like(t), rcond=None)
            if np.any(coef < 0):
                continue
            full = np.zeros(3)
            full[list(subset)] = coef
            residual = float(np.sum((a @ coef - 1.0) ** 2))
            if best is None or residual < best[0] - 1e-12:
                best = (residual, full)
    c = best[1] if best is not None else np.zeros(3)
    return FamilyLaw(
        fixed_us=float(c[0] * 1e6),
        gflops=float(1.0 / c[1] / 1e9) if c[1] > 0 else 0.0,
        gbps=float(1.0 / c[2] / 1e9) if c[2] > 0 else 0.0,
    )


def _errors(law: FamilyLaw, flops, nbytes, t) -> list[float]:
    return [
        abs(law.seconds(f, b) - x) / x for f, b, x in zip(flops, nbytes, t, strict=True) if x > 0
    ]


def fit_family(points: list[tuple[float, float, float, float, float]]) -> FamilyFit:
    """The family's forward and backward laws (module docstring), with their errors."""
    arr = np.asarray(points, dtype=float)
    flops, nbytes, fwd, bflops, bwd = arr.T
    has_backward = bool(np.any(bwd > 0))
    held = np.arange(len(arr)) % 3 == 2
    errors_out: list[float] = []
    if held.any() and (~held).sum() >= 3:
        f_law = fit_law(flops[~held], nbytes[~held], fwd[~held])
        errors_out += _errors(f_law, flops[held], nbytes[held], fwd[held])
        if has_backward:
            b_law = fit_law(bflops[~held], nbytes[~held], bwd[~held])
            errors_out += _errors(b_law, bflops[held], nbytes[held], bwd[held])
    forward = fit_law(flops, nbytes, fwd)
    backward = fit_law(bflops, nbytes, bwd) if has_backward else FamilyLaw()
    errors = _errors(forward, flops, nbytes, fwd)
    if has_backward:
        errors += _errors(backward, bflops, nbytes, bwd)
    return FamilyFit(
        forward=forward,
        backward=backward,
        points=len(arr),
        median_error=statistics.median(errors) if errors else 0.0,
        max_error=max(errors, default=0.0),
        held_out_error=statistics.median(errors_out) if errors_out else 0.0,
    )
