"""runners.onnx_to_torch: ONNX -> torch.fx conversion against onnxruntime.

* op by op: single-node models built with ``onnx.helper`` at the opsets where the op's
  form changed (attribute vs input axes, Softmax axis semantics, Split num_outputs...);
* whole models: the four samples, and a small torch module exported by TorchScript
  (opsets 11/13/17) and dynamo (18/21);
* gradients: every GPT parameter gets a finite grad; MLP grads equal the torch module's;
* seeded init for graph-only models.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from runners.onnx_to_torch import convert

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "samples" / "models"
RNG = np.random.default_rng(0)


def _session(model) -> ort.InferenceSession:
    src = str(model) if isinstance(model, Path | str) else model.SerializeToString()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])


def _run_torch(gm, feeds: dict[str, np.ndarray]) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        return gm(*(torch.from_numpy(np.array(v)) for v in feeds.values()))


def _compare(got, ref, atol: float = 1e-5) -> None:
    assert len(got) == len(ref)
    for g, r in zip(got, ref, strict=True):
        g = g.detach().numpy()
        assert g.shape == r.shape, (g.shape, r.shape)
        if np.issubdtype(r.dtype, np.floating):
            assert g.dtype == r.dtype
            np.testing.assert_allclose(g, r, atol=atol, rtol=1e-5)
        else:
            assert g.dtype == r.dtype, (g.dtype, r.dtype)
            np.testing.assert_array_equal(g, r)


# ----------------------------------------------------------------------------- op by op


@dataclass
class Case:
    op: str
    opset: int
    inputs: list  # np.ndarray (graph input), Const(array) (initializer), or None (absent)
    attrs: dict = field(default_factory=dict)
    n_out: int = 1
    atol: float = 1e-5
    id: str = ""


@dataclass
class Const:
    value: np.ndarray


def f32(*shape, lo=None):
    x = RNG.standard_normal(shape).astype(np.float32)
    return np.abs(x) + lo if lo is not None else x


def i64(*values):
    return Const(np.array(values, dtype=np.int64))


def scalar_i64(v):
    return Const(np.array(v, dtype=np.int64))


def _single_node_model(case: Case) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    names, graph_inputs, inits, feeds = [], [], [], {}
    for i, v in enumerate(case.inputs):
        if v is None:
            names.append("")
            continue
        name = f"in{i}"
        names.append(name)
        if isinstance(v, Const):
            inits.append(numpy_helper.from_array(v.value, name))
        else:
            arr = np.asarray(v)
            elem = helper.np_dtype_to_tensor_dtype(arr.dtype)
            graph_inputs.append(helper.make_tensor_value_info(name, elem, arr.shape))
            feeds[name] = arr
    outs = [f"out{j}" for j in range(case.n_out)]
    node = helper.make_node(case.op, names, outs, **case.attrs)
    graph = helper.make_graph(
        [node], "g", graph_inputs, [helper.make_empty_tensor_value_info(o) for o in outs], inits
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", case.opset)])
    model.ir_version = 10 if case.opset >= 21 else 8
    return model, feeds


def _cases() -> list[Case]:
    x34 = f32(3, 4)
    img = f32(2, 4, 7, 7)
    bools = RNG.random((3, 4)) > 0.5
    ints = RNG.integers(-9, 10, (3, 4)).astype(np.int64)
    cases: list[Case] = []
    add = cases.append
    # unary
    for op in [
        "Relu",
        "Sigmoid",
        "Tanh",
        "Erf",
        "Exp",
        "Neg",
        "Abs",
        "Floor",
        "Ceil",
        "Sign",
        "Sin",
        "Cos",
        "Softplus",
        "Softsign",
    ]:
        add(Case(op, 13, [x34]))
    add(Case("Round", 13, [np.array([0.5, 1.5, 2.5, -0.5, -1.5, 0.3], dtype=np.float32)]))
    for op in ["Sqrt", "Log", "Reciprocal"]:
        add(Case(op, 13, [f32(3, 4, lo=0.1)]))
    add(Case("IsNaN", 13, [np.array([1.0, np.nan, 3.0], dtype=np.float32)]))
    add(Case("IsInf", 13, [np.array([1.0, np.inf, -np.inf], dtype=np.float32)]))
    add(Case("Not", 13, [bools]))
    add(Case("Mish", 18, [x34]))
    add(Case("HardSwish", 14, [x34 * 4]))
    add(Case("Identity", 13, [x34]))
    # binary, broadcasting, scalar constants, integer division
    for op in ["Add", "Sub", "Mul", "Div"]:
        add(Case(op, 14, [x34, f32(4)], id=f"{op}-bcast"))
    add(Case("Mul", 14, [x34, Const(np.array(0.5, dtype=np.float32))], id="Mul-scalar-const"))
    add(Case("Sub", 14, [Const(np.array(1.0, dtype=np.float32)), x34], id="Sub-scalar-first"))
    add(Case("Div", 14, [ints, i64(2, -3, 4, 5)], id="Div-int-trunc"))
    add(Case("Div", 14, [ints.astype(np.int32), np.array([3], dtype=np.int32)], id="Div-int32"))
    add(Case("Pow", 15, [f32(3, 4, lo=0.5), f32(4)], id="Pow"))
    add(Case("Pow", 15, [x34, Const(np.array(2.0, dtype=np.float32))], id="Pow-square"))
    add(Case("Mod", 13, [ints, i64(3, -4, 5, 7)], id="Mod-int"))
    add(Case("Mod", 13, [x34, f32(4, lo=0.5)], {"fmod": 1}, id="Mod-fmod"))
    for op in ["Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual"]:
        add(Case(op, 16, [ints, RNG.integers(-9, 10, (4,)).astype(np.int64)]))
    add(Case("Less", 13, [x34, Const(np.array(0.0, dtype=np.float32))], id="Less-scalar"))
    for op in ["And", "Or", "Xor"]:
        add(Case(op, 7, [bools, RNG.random((3, 4)) > 0.5]))
    add(Case("Where", 16, [bools, x34, f32(4)]))
    add(Case("Where", 16, [bools, Const(np.array(-np.inf, dtype=np.float32)), x34], id="Where-inf"))
    for op in ["Max", "Min", "Sum", "Mean"]:
        add(Case(op, 13, [x34, f32(4), f32(3, 1)]))
    add(Case("Max", 13, [x34], id="Max-single"))
    # activations with attributes
    add(Case("LeakyRelu", 16, [x34], {"alpha": 0.2}))
    add(Case("Elu", 6, [x34], {"alpha": 0.5}))
    add(Case("Celu", 12, [x34], {"alpha": 2.0}))
    add(Case("Selu", 6, [x34]))
    add(Case("Selu", 6, [x34], {"alpha": 2.0, "gamma": 3.0}, id="Selu-custom"))
    add(Case("ThresholdedRelu", 10, [x34], {"alpha": 0.3}))
    add(Case("HardSigmoid", 6, [x34 * 3], {"alpha": 0.3, "beta": 0.4}))
    add(Case("Gelu", 20, [x34], id="Gelu-none"))
    add(Case("Gelu", 20, [x34], {"approximate": "tanh"}, id="Gelu-tanh"))
    add(Case("PRelu", 16, [img[:, :3], Const(f32(3, 1, 1))]))
    add(Case("Clip", 6, [x34], {"min": -0.5, "max": 0.5}, id="Clip-6-attrs"))
    add(Case("Clip", 13, [x34, Const(np.array(-0.5, dtype=np.float32))], id="Clip-13-min"))
    add(
        Case(
            "Clip",
            13,
            [x34, None, Const(np.array(0.1, dtype=np.float32))],
            id="Clip-13-max",
        )
    )
    add(Case("Clip", 13, [ints, scalar_i64(-2), scalar_i64(3)], id="Clip-int"))
    # softmax family: axis semantics changed at 13
    x345 = f32(2, 3, 5)
    for op in ["Softmax", "LogSoftmax"]:
        add(Case(op, 11, [x345], id=f"{op}-11-default"))
        add(Case(op, 11, [x345], {"axis": 2}, id=f"{op}-11-last"))
        add(Case(op, 11, [x345], {"axis": 0}, id=f"{op}-11-axis0"))
        add(Case(op, 13, [x345], {"axis": 1}, id=f"{op}-13-axis1"))
        add(Case(op, 13, [x345], id=f"{op}-13-default"))
    add(Case("Hardmax", 13, [x345], {"axis": 1}))
    # linear algebra
    add(Case("MatMul", 13, [f32(2, 3, 4), f32(4, 5)]))
    add(Case("MatMul", 13, [f32(2, 1, 3, 4), f32(3, 4, 2)], id="MatMul-bcast"))
    add(Case("Gemm", 13, [f32(3, 4), Const(f32(5, 4)), Const(f32(5))], {"transB": 1}))
    add(
        Case(
            "Gemm",
            13,
            [f32(4, 3), f32(4, 5), Const(f32(3, 5))],
            {"transA": 1, "alpha": 0.5, "beta": 2.0},
            id="Gemm-transA-alpha-beta",
        )
    )
    add(Case("Gemm", 13, [f32(3, 4), f32(4, 5)], {"alpha": 3.0}, id="Gemm-noC"))
    add(Case("Gemm", 11, [f32(3, 4), f32(5, 4), f32(1)], {"transB": 1}, id="Gemm-C1"))
    add(Case("Einsum", 12, [f32(2, 3, 4), f32(2, 4, 5)], {"equation": "bij,bjk->bik"}))
    add(Case("Einsum", 12, [f32(3, 4)], {"equation": "ij->ji"}, id="Einsum-transpose"))
    # conv
    w = Const(f32(6, 4, 3, 3))
    b = Const(f32(6))
    add(Case("Conv", 11, [img, w, b], {"pads": [1, 1, 1, 1], "strides": [2, 2]}, id="Conv-s2"))
    add(Case("Conv", 11, [img, w], {"dilations": [2, 2]}, id="Conv-dil"))
    add(Case("Conv", 11, [img, Const(f32(6, 2, 3, 3))], {"group": 2}, id="Conv-groups"))
    add(Case("Conv", 11, [img, w, b], {"pads": [0, 1, 1, 0]}, id="Conv-asym"))
    for mode in ["SAME_UPPER", "SAME_LOWER", "VALID"]:
        add(Case("Conv", 11, [img, w], {"auto_pad": mode, "strides": [2, 2]}, id=f"Conv-{mode}"))
    add(
        Case(
            "Conv",
            13,
            [f32(2, 4, 9), Const(f32(8, 4, 3)), Const(f32(8))],
            {"pads": [2, 2], "strides": [2]},
            id="Conv1d",
        )
    )
    wt = Const(f32(4, 3, 3, 3))
    add(
        Case(
            "ConvTranspose",
            11,
            [img, wt, Const(f32(3))],
            {"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]},
        )
    )
    add(
        Case(
            "ConvTranspose",
            11,
            [img, wt],
            {"strides": [2, 2], "output_shape": [15, 15]},
            id="ConvT-output_shape",
        )
    )
    add(
        Case(
            "ConvTranspose",
            11,
            [img, Const(f32(4, 2, 3, 3))],
            {"group": 2, "pads": [0, 1, 1, 0]},
            id="ConvT-groups-asym",
        )
    )
    add(
        Case(
            "ConvTranspose",
            11,
            [img, wt],
            {"auto_pad": "SAME_UPPER", "strides": [2, 2]},
            id="ConvT-same",
        )
    )
    add(
        Case(
            "ConvTranspose", 13, [f32(2, 4, 5), Const(f32(4, 3, 3))], {"strides": [3]}, id="ConvT1d"
        )
    )
    # normalisation
    c4 = [Const(f32(4)), Const(f32(4)), Const(f32(4)), Const(f32(4, lo=0.5))]
    add(Case("BatchNormalization", 15, [img, *c4], {"epsilon": 1e-3}))
    add(Case("BatchNormalization", 9, [img, *c4], id="BN-9"))
    add(
        Case(
            "LayerNormalization",
            17,
            [x345, Const(f32(5)), Const(f32(5))],
            {"epsilon": 1e-3},
            id="LN-last",
        )
    )
    add(Case("LayerNormalization", 17, [x345, Const(f32(3, 5))], {"axis": 1}, id="LN-axis1"))
    add(Case("LayerNormalization", 17, [x345, Const(f32(5))], {"axis": 1}, id="LN-bcast-scale"))
    add(Case("GroupNormalization", 18, [img, Const(f32(2)), Const(f32(2))], {"num_groups": 2}))
    add(
        Case(
            "GroupNormalization",
            21,
            [img, Const(f32(4)), Const(f32(4))],
            {"num_groups": 2},
            id="GN-21",
        )
    )
    add(Case("InstanceNormalization", 6, [img, Const(f32(4)), Const(f32(4))]))
    add(Case("LpNormalization", 1, [x345], {"axis": 1, "p": 1}))
    add(Case("MeanVarianceNormalization", 13, [img]))
    add(Case("LpPool", 18, [img], {"kernel_shape": [2, 2], "strides": [2, 2], "p": 2}))
    add(Case("GlobalLpPool", 2, [img], {"p": 3}))
    add(Case("ReduceLogSum", 13, [f32(3, 4, lo=0.1)], {"axes": [1]}))
    for op in ["Tan", "Atan", "Sinh", "Cosh", "Asinh"]:
        add(Case(op, 9, [x34]))
    # pooling
    add(Case("MaxPool", 12, [img], {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1] * 4}))
    add(
        Case(
            "MaxPool",
            12,
            [img],
            {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1},
            id="MaxPool-ceil",
        )
    )
    add(
        Case(
            "MaxPool", 12, [img], {"kernel_shape": [3, 3], "pads": [0, 1, 2, 1]}, id="MaxPool-asym"
        )
    )
    add(Case("MaxPool", 12, [img], {"kernel_shape": [2, 2], "dilations": [2, 2]}, id="MaxPool-dil"))
    add(
        Case(
            "MaxPool",
            12,
            [img],
            {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"},
            id="MaxPool-same",
        )
    )
    add(Case("MaxPool", 12, [f32(2, 3, 9)], {"kernel_shape": [3], "strides": [2]}, id="MaxPool1d"))
    for cip in (0, 1):
        add(
            Case(
                "AveragePool",
                11,
                [img],
                {
                    "kernel_shape": [3, 3],
                    "strides": [2, 2],
                    "pads": [1] * 4,
                    "count_include_pad": cip,
                },
                id=f"AvgPool-cip{cip}",
            )
        )
        add(
            Case(
                "AveragePool",
                11,
                [img],
                {"kernel_shape": [3, 3], "pads": [0, 1, 2, 1], "count_include_pad": cip},
                id=f"AvgPool-asym-cip{cip}",
            )
        )
    add(
        Case(
            "AveragePool",
            11,
            [img],
            {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1},
            id="AvgPool-ceil",
        )
    )
    add(Case("GlobalAveragePool", 11, [img]))
    ceil = {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1}
    odd = f32(1, 2, 5, 5)
    add(Case("AveragePool", 19, [odd], {**ceil, "pads": [1] * 4}, id="AvgPool-ceil-pads"))
    add(
        Case(
            "AveragePool",
            19,
            [odd],
            {**ceil, "pads": [1, 0, 0, 1], "count_include_pad": 1},
            id="AvgPool-ceil-asym",
        )
    )
    add(Case("MaxPool", 12, [odd], {**ceil, "pads": [1] * 4}, id="MaxPool-ceil-pads"))
    add(Case("MaxPool", 12, [odd], {**ceil, "pads": [1, 0, 0, 1]}, id="MaxPool-ceil-asym"))
    add(Case("GlobalMaxPool", 11, [img]))
    # reductions: axes attribute vs input
    for op, attr_until in [
        ("ReduceMean", 18),
        ("ReduceMax", 18),
        ("ReduceMin", 18),
        ("ReduceSum", 13),
    ]:
        add(Case(op, attr_until - 1, [x345], {"axes": [1], "keepdims": 0}, id=f"{op}-attr"))
        add(Case(op, attr_until, [x345, i64(-1, 0)], id=f"{op}-input"))
        add(Case(op, attr_until, [x345], {"keepdims": 0}, id=f"{op}-all"))
    add(Case("ReduceSum", 13, [x345, i64()], {"noop_with_empty_axes": 1}, id="ReduceSum-noop"))
    add(Case("ReduceSum", 13, [ints.astype(np.int32), i64(1)], id="ReduceSum-int32"))
    for op in ["ReduceProd", "ReduceL1", "ReduceL2", "ReduceSumSquare", "ReduceLogSumExp"]:
        add(Case(op, 13, [x345], {"axes": [2]}))
    add(Case("ArgMax", 13, [x345], {"axis": 1, "keepdims": 0}))
    add(Case("ArgMin", 13, [x345], {"axis": -1}))
    add(
        Case(
            "ArgMax",
            13,
            [np.array([[1, 3, 3, 2]], dtype=np.float32)],
            {"axis": 1, "select_last_index": 1},
            id="ArgMax-last",
        )
    )
    # indexing
    table = f32(10, 4)
    add(Case("Gather", 13, [table, RNG.integers(-10, 10, (2, 3)).astype(np.int64)], id="Gather-rt"))
    add(
        Case(
            "Gather",
            13,
            [Const(table), RNG.integers(0, 10, (2, 3)).astype(np.int64)],
            id="Gather-embedding",
        )
    )
    add(Case("Gather", 13, [x345, scalar_i64(-1)], {"axis": 1}, id="Gather-scalar"))
    add(Case("Gather", 13, [x345, i64(4, -2)], {"axis": 2}, id="Gather-const-neg"))
    add(
        Case("GatherElements", 13, [x34, RNG.integers(-4, 4, (3, 2)).astype(np.int64)], {"axis": 1})
    )
    add(Case("GatherND", 13, [x345, np.array([[0, 1], [1, 2]], dtype=np.int64)]))
    add(Case("ScatterND", 13, [x345, np.array([[0, 1], [1, 2]], dtype=np.int64), f32(2, 5)]))
    add(
        Case(
            "ScatterND",
            16,
            [x345, np.array([[0, 1], [0, 1]], dtype=np.int64), f32(2, 5)],
            {"reduction": "add"},
            id="ScatterND-add",
        )
    )
    add(
        Case(
            "ScatterElements",
            16,
            [x34, np.array([[0, 3], [1, 2], [2, 0]], dtype=np.int64), f32(3, 2)],
            {"axis": 1},
        )
    )
    add(
        Case(
            "OneHot",
            11,
            [
                np.array([0, 2, -1], dtype=np.int64),
                scalar_i64(4),
                Const(np.array([0.0, 1.0], dtype=np.float32)),
            ],
        )
    )
    add(Case("NonZero", 13, [bools]))
    add(Case("TopK", 11, [x345, i64(2)], {"axis": 1}, n_out=2))
    add(Case("TopK", 11, [x345, i64(3)], {"largest": 0}, n_out=2, id="TopK-smallest"))
    # shapes
    add(Case("Concat", 13, [x34, Const(f32(3, 2)), f32(3, 1)], {"axis": 1}))
    add(Case("Split", 11, [f32(2, 6)], {"axis": 1, "split": [2, 4]}, n_out=2, id="Split-11-attr"))
    add(Case("Split", 13, [f32(2, 6), i64(1, 5)], {"axis": 1}, n_out=2, id="Split-13-input"))
    add(Case("Split", 13, [f32(6, 2)], n_out=3, id="Split-13-equal"))
    add(Case("Split", 18, [f32(2, 10)], {"axis": 1, "num_outputs": 3}, n_out=3, id="Split-18-num"))
    x4d = f32(3, 5, 6, 4)
    add(Case("Slice", 13, [x4d, i64(1, -4), i64(3, 100), i64(0, 2), i64(1, 2)], id="Slice-13"))
    add(Case("Slice", 13, [x4d, i64(-1), i64(-100), i64(1), i64(-2)], id="Slice-negstep"))
    add(Case("Slice", 13, [x4d, i64(0), i64(2**63 - 1), i64(-1)], id="Slice-intmax"))
    add(Case("Slice", 9, [x4d], {"starts": [1], "ends": [4], "axes": [2]}, id="Slice-9-attrs"))
    add(Case("Transpose", 13, [x4d], {"perm": [0, 2, 3, 1]}))
    add(Case("Transpose", 13, [x4d], id="Transpose-default"))
    add(Case("Reshape", 14, [x4d, i64(0, -1, 4)], id="Reshape-0"))
    add(Case("Reshape", 14, [x4d, i64(3, 0, 24)], {"allowzero": 0}, id="Reshape-0-mid"))
    add(Case("Reshape", 14, [x4d, i64(-1)], {"allowzero": 1}, id="Reshape-allowzero"))
    for axis in (0, 1, 2, -1):
        add(Case("Flatten", 13, [x4d], {"axis": axis}, id=f"Flatten-{axis}"))
    x1 = f32(3, 1, 4, 1)
    add(Case("Squeeze", 11, [x1], {"axes": [1]}, id="Squeeze-11"))
    add(Case("Squeeze", 13, [x1, i64(1, -1)], id="Squeeze-13"))
    add(Case("Squeeze", 13, [x1], id="Squeeze-all"))
    add(Case("Unsqueeze", 11, [x34], {"axes": [0, 3]}, id="Unsqueeze-11"))
    add(Case("Unsqueeze", 13, [x34, i64(-1, 1)], id="Unsqueeze-13"))
    add(Case("Expand", 13, [f32(3, 1), i64(2, 3, 4)]))
    add(Case("Expand", 13, [f32(3, 4), i64(2, 1, 1)], id="Expand-ones"))
    add(Case("Tile", 13, [x34, i64(2, 3)]))
    add(Case("Cast", 13, [x34 * 5], {"to": TensorProto.INT32}, id="Cast-trunc"))
    add(Case("Cast", 13, [ints], {"to": TensorProto.FLOAT}, id="Cast-float"))
    add(Case("Cast", 13, [x34], {"to": TensorProto.BOOL}, id="Cast-bool"))
    add(Case("CastLike", 15, [ints, x34]))
    add(
        Case("Dropout", 12, [x34, Const(np.array(0.3, dtype=np.float32))], n_out=2, id="Dropout-12")
    )
    add(Case("Dropout", 10, [x34], {"ratio": 0.2}, id="Dropout-10"))
    add(Case("Shape", 15, [x4d], {"start": 1, "end": -1}))
    add(Case("Size", 13, [x4d]))
    add(Case("Trilu", 14, [x4d, scalar_i64(1)]))
    add(Case("Trilu", 14, [x4d], {"upper": 0}, id="Trilu-lower"))
    add(Case("CumSum", 14, [x345, scalar_i64(1)]))
    add(
        Case(
            "CumSum",
            14,
            [x345, scalar_i64(-1)],
            {"exclusive": 1, "reverse": 1},
            id="CumSum-excl-rev",
        )
    )
    # constants
    add(Case("Constant", 13, [], {"value": numpy_helper.from_array(f32(2, 3))}))
    add(Case("Constant", 13, [], {"value_floats": [1.0, 2.5]}, id="Constant-floats"))
    add(Case("Constant", 13, [], {"value_int": 7}, id="Constant-int"))
    add(
        Case(
            "ConstantOfShape",
            13,
            [i64(2, 3)],
            {"value": numpy_helper.from_array(np.array([5], dtype=np.int64))},
        )
    )
    add(
        Case(
            "Range",
            13,
            [
                Const(np.array(1.0, np.float32)),
                Const(np.array(4.0, np.float32)),
                Const(np.array(0.5, np.float32)),
            ],
        )
    )
    add(Case("Range", 13, [scalar_i64(10), scalar_i64(0), scalar_i64(-3)], id="Range-int"))
    # pad
    pads = i64(0, 1, 2, 0, 0, 2, 1, 3)
    add(Case("Pad", 13, [img, pads, Const(np.array(1.5, np.float32))], id="Pad-constant"))
    add(Case("Pad", 13, [img, pads], {"mode": "reflect"}, id="Pad-reflect"))
    add(Case("Pad", 13, [img, pads], {"mode": "edge"}, id="Pad-edge"))
    add(Case("Pad", 13, [img, i64(0, 0, -1, 2, 0, 0, 1, -2)], id="Pad-negative"))
    add(Case("Pad", 18, [img, i64(1, 2, 3, 0), None, i64(-1, 1)], id="Pad-18-axes"))
    add(Case("Pad", 19, [img, pads], {"mode": "wrap"}, id="Pad-wrap"))
    add(Case("Pad", 10, [img], {"pads": [0, 0, 1, 1, 0, 0, 1, 1], "value": 2.0}, id="Pad-10-attrs"))
    # resize
    small = f32(1, 2, 4, 5)
    s2 = Const(np.array([1, 1, 2, 2], np.float32))
    add(Case("Resize", 13, [small, None, s2], {"mode": "nearest"}, id="Resize-nearest"))
    add(
        Case(
            "Resize",
            13,
            [small, None, s2],
            {
                "mode": "nearest",
                "coordinate_transformation_mode": "asymmetric",
                "nearest_mode": "floor",
            },
            id="Resize-nearest-asym",
        )
    )
    add(Case("Resize", 13, [small, None, s2], {"mode": "linear"}, id="Resize-linear"))
    add(
        Case(
            "Resize",
            13,
            [small, None, None, i64(1, 2, 7, 3)],
            {"mode": "linear", "coordinate_transformation_mode": "align_corners"},
            id="Resize-linear-align-sizes",
        )
    )
    add(
        Case(
            "Resize",
            13,
            [small, None, Const(np.array([1, 1, 0.5, 1.5], np.float32))],
            {"mode": "linear", "coordinate_transformation_mode": "pytorch_half_pixel"},
            id="Resize-linear-pt",
        )
    )
    add(
        Case(
            "Resize",
            13,
            [small, None, None, i64(1, 2, 9, 7)],
            {
                "mode": "nearest",
                "coordinate_transformation_mode": "half_pixel",
                "nearest_mode": "round_prefer_ceil",
            },
            id="Resize-nearest-sizes",
        )
    )
    add(
        Case(
            "Resize",
            11,
            [small, Const(np.zeros(0, np.float32)), s2],
            {"mode": "linear", "coordinate_transformation_mode": "asymmetric"},
            id="Resize-11-linear-asym",
        )
    )
    add(
        Case(
            "Resize",
            18,
            [small, None, Const(np.array([2, 3], np.float32))],
            {"mode": "nearest", "axes": [2, 3]},
            id="Resize-18-axes",
        )
    )
    add(Case("Resize", 10, [small, s2], {"mode": "nearest"}, id="Resize-10"))
    add(Case("Upsample", 9, [small, s2], {"mode": "nearest"}, id="Upsample-9"))
    return cases


CASES = _cases()


@pytest.mark.parametrize("case", CASES, ids=[c.id or f"{c.op}-{c.opset}" for c in CASES])
def test_op_matches_onnxruntime(case: Case):
    model, feeds = _single_node_model(case)
    ref = _session(model).run(None, feeds)
    gm = convert(model)
    assert gm.input_names == list(feeds)
    _compare(_run_torch(gm, feeds), ref, case.atol)


def _sample_feeds(path: Path, batch: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {}
    for i in sess.get_inputs():
        shape = [batch if not isinstance(d, int) else d for d in i.shape]
        if "int" in i.type:
            feeds[i.name] = rng.integers(0, 100, shape).astype(np.int64)
        else:
            feeds[i.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


@pytest.mark.parametrize("name", ["mlp", "gpt", "resnet", "inception"])
def test_samples_match_onnxruntime(name):
    path = MODELS / f"{name}.onnx"
    feeds = _sample_feeds(path)
    gm = convert(path)
    assert gm.input_names == list(feeds)
    with torch.no_grad():
        got = gm(*(torch.from_numpy(v) for v in feeds.values()))
    assert isinstance(got, tuple)
    for g, r in zip(got, _session(path).run(None, feeds), strict=True):
        np.testing.assert_allclose(g.numpy(), r, atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- run-time shapes


def test_dynamic_shape_arithmetic():
    """Shape -> Gather -> Unsqueeze -> Concat -> Reshape on a dynamic batch, and
    ConstantOfShape / Range / Expand driven by run-time shapes."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["b"], axis=0),
        helper.make_node("Unsqueeze", ["b", "ax0"], ["b1"]),
        helper.make_node("Concat", ["b1", "minus1"], ["shape2"], axis=0),
        helper.make_node("Reshape", ["x", "shape2"], ["flat"]),
        helper.make_node(
            "ConstantOfShape",
            ["shape2_pos"],
            ["ones"],
            value=numpy_helper.from_array(np.array([1.0], np.float32)),
        ),
        helper.make_node("Concat", ["b1", "twelve"], ["shape2_pos"], axis=0),
        helper.make_node("Add", ["flat", "ones"], ["y"]),
        helper.make_node("Cast", ["b"], ["bf"], to=TensorProto.FLOAT),
        helper.make_node("Range", ["zerof", "bf", "onef"], ["r"]),
        helper.make_node("Unsqueeze", ["r", "ax1"], ["r2"]),
        helper.make_node("Shape", ["flat"], ["fs"]),
        helper.make_node("Expand", ["r2", "fs"], ["re"]),
        helper.make_node("Mul", ["y", "re"], ["out"]),
    ]
    # topological order: the ConstantOfShape input comes from a later node
    nodes = [nodes[i] for i in (0, 1, 2, 3, 4, 6, 5, 7, 8, 9, 10, 11, 12, 13)]
    inits = [
        numpy_helper.from_array(np.array(0, np.int64), "zero"),
        numpy_helper.from_array(np.array([0], np.int64), "ax0"),
        numpy_helper.from_array(np.array([1], np.int64), "ax1"),
        numpy_helper.from_array(np.array([-1], np.int64), "minus1"),
        numpy_helper.from_array(np.array([12], np.int64), "twelve"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zerof"),
        numpy_helper.from_array(np.array(1.0, np.float32), "onef"),
    ]
    graph = helper.make_graph(
        nodes,
        "dyn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    gm = convert(model)
    for batch in (2, 5):
        feeds = {"x": f32(batch, 3, 4)}
        _compare(_run_torch(gm, feeds), _session(model).run(None, feeds))


def test_unsupported_op_message():
    node = helper.make_node("StringNormalizer", ["x"], ["y"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.STRING, [2])],
        [helper.make_tensor_value_info("y", TensorProto.STRING, [2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(
        NotImplementedError,
        match=r"ONNX op StringNormalizer \(opset 17\) is not supported by pipeplan's converter",
    ):
        convert(model)


# ----------------------------------------------------------------------------- torch exports


class _Net(nn.Module):
    """conv + bn + relu + pool + linear, then layernorm + gelu + matmul + softmax."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 4 * 4, 32)
        self.ln = nn.LayerNorm(32)
        self.proj = nn.Linear(32, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.size(0)
        y = torch.relu(self.bn(self.conv(x)))
        y = nn.functional.max_pool2d(y, 2)
        y = self.fc(y.reshape(b, -1))
        h = nn.functional.gelu(self.ln(y)).view(b, 4, 8)
        att = torch.softmax(h @ h.transpose(1, 2) / 8**0.5, dim=-1)
        return (att @ h).reshape(b, -1) + self.proj(y)


@pytest.mark.parametrize(
    "dynamo,opset", [(False, 11), (False, 13), (False, 17), (True, 18), (True, 21)]
)
def test_torch_exports_match_onnxruntime(tmp_path, dynamo, opset):
    from tests.exporting import export

    torch.manual_seed(0)
    net = _Net()
    x = torch.randn(2, 3, 8, 8)
    path = export(net, (x,), tmp_path / "net.onnx", dynamo=dynamo, opset=opset)
    gm = convert(path)
    feeds = {gm.input_names[0]: f32(3, 3, 8, 8)}
    _compare(_run_torch(gm, feeds), _session(path).run(None, feeds), atol=1e-4)
    # and the torch module itself
    with torch.no_grad():
        expect = net(torch.from_numpy(feeds[gm.input_names[0]]))
    torch.testing.assert_close(_run_torch(gm, feeds)[0], expect, atol=1e-4, rtol=1e-4)


class _Misc(nn.Module):
    """Strided conv, GroupNorm, PReLU, bilinear upsampling, reflect pad, strided slicing,
    ConvTranspose, hardswish/silu, cumsum, avg-pool without pads counted, topk, embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.convt = nn.ConvTranspose2d(4, 3, 4, stride=2, padding=1)
        self.gn = nn.GroupNorm(2, 4)
        self.prelu = nn.PReLU()
        self.emb = nn.Embedding(10, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        F = nn.functional
        y = self.prelu(self.gn(self.conv(x)))
        y = F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=False)
        y = F.pad(y, (1, 2, 0, 1), mode="reflect")
        z = self.convt(y[:, :, 1:-1:2, ::2])
        z = F.hardswish(z) + F.silu(z) + torch.cumsum(z, dim=3)
        z = F.avg_pool2d(z, 3, stride=2, padding=1, count_include_pad=False)
        t = z.mean(dim=(2, 3))
        ids = (t.abs() * 3).long().clamp(0, 9)
        top = torch.topk(t, 2, dim=1).values.sum(1, keepdim=True)
        return top + self.emb(ids).sum((1, 2)).unsqueeze(1) + F.elu(t)


@pytest.mark.parametrize("opset", [13, 17])
def test_torch_export_misc_ops(tmp_path, opset):
    from tests.exporting import export

    torch.manual_seed(0)
    net = _Misc()
    x = torch.randn(2, 3, 16, 16)
    path = export(net, (x,), tmp_path / "misc.onnx", opset=opset)
    gm = convert(path)
    feeds = {gm.input_names[0]: f32(2, 3, 16, 16)}
    ref = _session(path).run(None, feeds)
    assert np.abs(ref[0]).max() > 0.1
    _compare(_run_torch(gm, feeds), ref, atol=1e-4)
    gm(torch.from_numpy(feeds[gm.input_names[0]]))[0].sum().backward()
    for name, path_ in gm.param_names.items():
        assert gm.get_parameter(path_).grad is not None, name


# ----------------------------------------------------------------------------- gradients


def test_gpt_every_parameter_gets_a_finite_grad():
    gm = convert(MODELS / "gpt.onnx")
    idx = torch.randint(0, 128, (2, 32), generator=torch.Generator().manual_seed(0))
    (logits,) = gm(idx)
    logits.sum().backward()
    params = dict(gm.named_parameters())
    assert len(params) == len(gm.param_names) > 0
    for onnx_name, path in gm.param_names.items():
        p = gm.get_parameter(path)
        assert p.requires_grad
        assert p.grad is not None, onnx_name
        assert torch.isfinite(p.grad).all(), onnx_name
    # tied embedding / head weight: one parameter, gradient from both uses
    assert "lm_head.weight" in gm.param_names


def test_mlp_gradients_equal_the_torch_module():
    from samples.zoo import build

    module, (x,) = build("mlp", seed=0)
    gm = convert(MODELS / "mlp.onnx")
    torch_params = dict(module.named_parameters())
    assert set(gm.param_names) == set(torch_params)
    for name, path in gm.param_names.items():  # the sample was exported from this module
        torch.testing.assert_close(gm.get_parameter(path).detach(), torch_params[name].detach())
    module(x).square().sum().backward()
    gm(x)[0].square().sum().backward()
    for name, path in gm.param_names.items():
        ours, ref = gm.get_parameter(path).grad, torch_params[name].grad
        rel = (ours - ref).norm() / ref.norm().clamp_min(1e-12)
        assert rel <= 1e-4, (name, float(rel))


def test_resnet_parameters_and_statistics():
    """BatchNorm scale/bias train; running statistics are buffers, not parameters."""
    gm = convert(MODELS / "resnet.onnx")
    assert "bn1.weight" in gm.param_names and "bn1.running_mean" not in gm.param_names
    assert gm.buffer_names["bn1.running_mean"].startswith("state.")
    gm(torch.randn(2, 3, 32, 32))[0].sum().backward()
    for path in gm.param_names.values():
        grad = gm.get_parameter(path).grad
        assert grad is not None and torch.isfinite(grad).all()


# ----------------------------------------------------------------------------- seeded init


def _graph_only_gpt(tmp_path: Path) -> Path:
    model = onnx.load(str(MODELS / "gpt.onnx"))
    path = tmp_path / "gpt.onnx"
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="gpt.onnx.data",
        size_threshold=1024,
    )
    (tmp_path / "gpt.onnx.data").unlink()
    return path


def _params(gm) -> dict[str, torch.Tensor]:
    return {n: gm.get_parameter(p).detach().clone() for n, p in gm.param_names.items()}


def test_graph_only_model_gets_seeded_random_weights(tmp_path):
    path = _graph_only_gpt(tmp_path)
    with pytest.warns(UserWarning, match="seeded random"):
        a = convert(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        b = convert(path)
        c = convert(path, seed=1)
    pa, pb, pc = _params(a), _params(b), _params(c)
    assert set(pa) == set(convert(MODELS / "gpt.onnx").param_names)
    for name in pa:
        assert torch.equal(pa[name], pb[name]), name
    w = "blocks.0.attn.c_attn.weight"
    assert not torch.equal(pa[w], pc[w])
    assert abs(float(pa[w].std()) - 0.02) < 0.002
    assert torch.equal(pa["blocks.0.ln_1.weight"], torch.ones(64))
    assert torch.equal(pa["blocks.0.ln_1.bias"], torch.zeros(64))
    # weights="random" on the full model gives the same values: they depend on names only
    full = _params(convert(MODELS / "gpt.onnx", weights="random"))
    for name in pa:
        assert torch.equal(pa[name], full[name]), name
    (logits,) = a(torch.randint(0, 128, (2, 32)))
    assert torch.isfinite(logits).all()


def test_external_data_is_loaded_next_to_the_model(tmp_path):
    model = onnx.load(str(MODELS / "mlp.onnx"))
    path = tmp_path / "mlp.onnx"
    onnx.save_model(
        model, str(path), save_as_external_data=True, location="w.bin", size_threshold=0
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours = _params(convert(path))
    ref = _params(convert(MODELS / "mlp.onnx"))
    for name in ref:
        assert torch.equal(ours[name], ref[name])
    with pytest.raises(ValueError, match="weights"):
        convert(path, weights="zeros")


def test_stage_files_convert_and_tied_weights_start_equal(tmp_path):
    """GPT cut in 3 stages: every stage file converts to what onnxruntime computes, and
    the embedding tied to the head gets the same seeded values in the first and last
    stage files."""
    from exporters.bundle import export
    from planner.api import plan
    from planner.config import PlanConfig
    from planner.graph.shapes import ShapeBindings

    model = str(MODELS / "gpt.onnx")
    p = plan(
        model,
        ROOT / "samples/clusters/a100x4.yaml",
        PlanConfig(stages=3, time_limit_s=30),
        ShapeBindings(batch=2),
    )
    manifest = export(model, p, tmp_path / "bundle")
    seen: dict[str, list[torch.Tensor]] = {}
    for st in manifest.stages:
        path = tmp_path / "bundle" / st.file
        gm = convert(path)
        feeds = {}
        for i in _session(path).get_inputs():
            if "int" in i.type:
                feeds[i.name] = RNG.integers(0, 128, i.shape).astype(np.int64)
            else:
                feeds[i.name] = RNG.standard_normal(i.shape).astype(np.float32)
        _compare(_run_torch(gm, feeds), _session(path).run(None, feeds), atol=1e-4)
        for name, value in _params(convert(path, weights="random", seed=3)).items():
            seen.setdefault(name, []).append(value)
    tied = {n: v for n, v in seen.items() if len(v) > 1}
    assert "lm_head.weight" in tied
    for name, values in tied.items():
        assert all(torch.equal(values[0], v) for v in values[1:]), name


def test_initializers_listed_as_graph_inputs_are_not_inputs():
    w = numpy_helper.from_array(f32(4, 3), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "old",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4]),
            helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 3]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)])
    model.ir_version = 3
    gm = convert(model)
    assert gm.input_names == ["x"] and gm.output_names == ["y"]
    assert set(gm.param_names) == {"w"}
    feeds = {"x": f32(2, 4)}
    _compare(_run_torch(gm, feeds), _session(model).run(None, feeds))
    clone = copy.deepcopy(gm)
    assert clone.param_names == gm.param_names and clone.input_names == ["x"]
    _compare(_run_torch(clone, feeds), _session(model).run(None, feeds))


def test_local_functions_are_inlined():
    fn = helper.make_function(
        "custom",
        "AddRelu",
        ["a", "b"],
        ["c"],
        [helper.make_node("Add", ["a", "b"], ["s"]), helper.make_node("Relu", ["s"], ["c"])],
        [helper.make_opsetid("", 18)],
    )
    graph = helper.make_graph(
        [helper.make_node("AddRelu", ["x", "w"], ["y"], domain="custom")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 4])],
        [numpy_helper.from_array(f32(4), "w")],
    )
    model = helper.make_model(
        graph,
        functions=[fn],
        opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("custom", 1)],
    )
    model.ir_version = 8
    gm = convert(model)
    assert set(gm.param_names) == {"w"}
    feeds = {"x": f32(3, 4)}
    _compare(_run_torch(gm, feeds), _session(model).run(None, feeds))
