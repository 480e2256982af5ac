"""Operator families: the groups a calibration fits one time law to (no torch here).

An operator a profile never timed is priced from its *family's* fit instead of the
roofline's peak figures (issue 18: the roofline's peak describes fast kernels, the runner
runs torch's eager ones, and their efficiency depends on the kind of work far more than
on the device). A family gathers operators whose time follows one law in FLOPs and bytes:

    t = a + flops / F + bytes / B      (a >= 0 the fixed cost, F and B the rates)

fitted per family, forward and backward apart, on relative error
(`runners.calibrate.families`). The families split where kernels differ in kind:

* `conv-k1`, `conv-k3`, `conv-k5+` (dense convolutions by kernel size: 1x1 is a GEMM,
  3x3 and larger use other algorithms), `conv-depthwise` (groups == channels) and
  `conv-grouped` (other groups);
* `gemm` (MatMul, Gemm), `pool-max`, `pool-avg` (incl. global), `norm-batch`,
  `norm-layer` (LayerNormalization and friends), `softmax`, `reduce`, `concat`,
  `eltwise` (pointwise maths and activations), `movement` (Transpose, Slice, Gather,
  Pad, Resize...: copies).

`family_of` reads an operator's `cost.signature` (op type, shapes, attributes), so pricing
needs nothing the planner does not already store.
"""

from __future__ import annotations

import re

from cost.ops import KNOWN_OPS

FAMILIES = (
    "conv-k1", "conv-k3", "conv-k5+", "conv-depthwise", "conv-grouped", "gemm", "pool-max",
    "pool-avg", "norm-batch", "norm-layer", "softmax", "reduce", "concat", "eltwise",
    "movement",
)  # fmt: skip

_POOL_MAX = {"MaxPool", "GlobalMaxPool"}
_POOL_AVG = {"AveragePool", "GlobalAveragePool"}
_NORM_LAYER = {"LayerNormalization", "SimplifiedLayerNormalization", "RMSNormalization",
               "GroupNormalization", "InstanceNormalization"}  # fmt: skip
_MOVEMENT = {"Transpose", "Slice", "Gather", "GatherElements", "GatherND", "Pad", "Resize",
             "Upsample", "Tile", "Expand", "Split", "ScatterND", "ScatterElements",
             "DepthToSpace", "SpaceToDepth"}  # fmt: skip
_REDUCE = re.compile(r"^(Reduce\w+|ArgMax|ArgMin|CumSum|TopK)$")
_SHAPE = re.compile(r"\[([0-9,]*)\]")


def _shapes(field: str) -> list[list[int]]:
    return [[int(x) for x in m.split(",") if x] for m in _SHAPE.findall(field)]


def _attr(attrs: str, name: str) -> str | None:
    for item in attrs.split(";"):
        key, _, value = item.partition("=")
        if key == name:
            return value
    return None


def family_of(signature: str | None) -> str | None:
    """The family of the operator `signature` names (`cost.signature.op_signature`), or
    None for operators no family covers (free ones, unknown ones, subgraphs)."""
    if not signature:
        return None
    parts = signature.split("|")
    if len(parts) < 5 or parts[1] not in ("", "ai.onnx"):
        return None
    op, inputs, attrs = parts[0], parts[2], parts[4]
    if op in ("Conv", "ConvTranspose"):
        return _conv_family(inputs, attrs)
    if op in ("MatMul", "Gemm", "Einsum"):
        return "gemm"
    if op in _POOL_MAX:
        return "pool-max"
    if op in _POOL_AVG:
        return "pool-avg"
    if op == "BatchNormalization":
        return "norm-batch"
    if op in _NORM_LAYER:
        return "norm-layer"
    if op in ("Softmax", "LogSoftmax"):
        return "softmax"
    if _REDUCE.match(op):
        return "reduce"
    if op == "Concat":
        return "concat"
    if op in _MOVEMENT:
        return "movement"
    return "eltwise" if op in KNOWN_OPS else None


def _conv_family(inputs: str, attrs: str) -> str:
    shapes = _shapes(inputs)
    groups = int(_attr(attrs, "group") or 1)
    if groups > 1:
        channels = shapes[0][1] if shapes and len(shapes[0]) > 1 else 0
        return "conv-depthwise" if groups == channels else "conv-grouped"
    weight = shapes[1] if len(shapes) > 1 else []
    kernel = weight[2:] if len(weight) > 2 else []
    size = max(kernel, default=1)
    if size <= 1:
        return "conv-k1"
    return "conv-k3" if size <= 3 else "conv-k5+"
