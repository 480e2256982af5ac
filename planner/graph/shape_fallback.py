"""Shapes ONNX's inference left unknown, from operator rules over the folded constants.

ONNX shape inference gives up where a shape depends on values it does not propagate far
enough: the TorchScript exporter's and optimum's attention masks
(`Expand(mask, Where(Equal(shape, -1), ones, shape))`, `Slice` and `Where` chains over
`Shape` outputs, `GatherElements` of a folded buffer). `planner.graph.load` folds every
value computable from shapes and constants (`planner.graph.fold`) and calls
`fallback_shapes` between folding rounds: each rule here reads its inputs' shapes and
the constant values of its shape-like inputs and gives the output's shape as the ONNX
operator specification defines it (https://onnx.ai/onnx/operators/), or None.
Elementwise families, MatMul/Gemm, Transpose, Reshape, Flatten, Concat; Expand (the
broadcast of the input with the shape operand), Gather, GatherElements, Slice,
Unsqueeze/Squeeze, ConstantOfShape, Shape, Range, Tile, Split.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx

from cost.tensor import TensorInfo

_SAME_SHAPE = frozenset(
    [
        "Relu",
        "LeakyRelu",
        "Gelu",
        "Sigmoid",
        "HardSigmoid",
        "HardSwish",
        "Clip",
        "Tanh",
        "Erf",
        "Sqrt",
        "Exp",
        "Log",
        "Neg",
        "Abs",
        "Reciprocal",
        "Softmax",
        "LogSoftmax",
        "Dropout",
        "Identity",
        "Cast",
        "CastLike",
        "BatchNormalization",
        "LayerNormalization",
        "GroupNormalization",
        "InstanceNormalization",
        "Elu",
        "Selu",
        "Softplus",
        "Mish",
        "Sin",
        "Cos",
        "Floor",
        "Ceil",
        "Round",
        "Not",
        "Sign",
        "IsNaN",
        "Trilu",
        "CumSum",
        "PRelu",
    ]
)
_BROADCAST = frozenset(
    [
        "Add",
        "Sub",
        "Mul",
        "Div",
        "Pow",
        "Where",
        "Equal",
        "Less",
        "Greater",
        "LessOrEqual",
        "GreaterOrEqual",
        "And",
        "Or",
        "Max",
        "Min",
        "Sum",
        "Mean",
        "Mod",
    ]
)


def _broadcast(shapes: Sequence[tuple[int, ...]]) -> tuple[int, ...]:
    return tuple(np.broadcast_shapes(*shapes))


def fallback_shapes(
    nodes: Sequence[onnx.NodeProto],
    known: dict[str, TensorInfo],
    constants: Mapping[str, np.ndarray],
) -> int:
    """Infer shapes ONNX left unknown, in node order; return how many were filled."""
    filled = 0
    for node in nodes:
        outs = [o for o in node.output if o]
        if not outs or all(o in known for o in outs):
            continue
        ins = [known.get(i) if i else None for i in node.input]
        shape = _fallback_one(node, ins, constants)
        if shape is None:
            continue
        dtype = _output_dtype(node, ins)
        if outs[0] not in known:
            known[outs[0]] = TensorInfo(outs[0], shape, dtype)
            filled += 1
    return filled


#: Operators whose output is boolean whatever their inputs are.
_BOOL_RESULT = frozenset(
    {"Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "Not",
     "IsNaN", "IsInf"}
)  # fmt: skip


def _output_dtype(node: onnx.NodeProto, ins: list[TensorInfo | None]) -> int:
    """The element type of a node's first output, as the ONNX operator specs define it."""
    op = node.op_type
    if op in _BOOL_RESULT:
        return onnx.TensorProto.BOOL
    if op == "Cast":
        return next((a.i for a in node.attribute if a.name == "to"), onnx.TensorProto.FLOAT)
    if op in ("Shape", "Size"):
        return onnx.TensorProto.INT64
    if op == "ConstantOfShape":
        value = next((a.t for a in node.attribute if a.name == "value"), None)
        return value.data_type if value is not None else onnx.TensorProto.FLOAT
    if op in ("Where", "CastLike") and len(ins) > 1 and ins[1] is not None:
        return ins[1].dtype  # Where(cond, x, y): x's type; CastLike(x, like): like's
    return next((t.dtype for t in ins if t is not None), onnx.TensorProto.FLOAT)


Shape = tuple[int, ...]


def _known(t: TensorInfo | None) -> bool:
    return t is not None and t.shape is not None


def _const(node: onnx.NodeProto, constants, position: int) -> list[int] | None:
    """Input `position` as a list of ints when it is a known constant, else None."""
    if len(node.input) <= position or not node.input[position]:
        return None
    value = constants.get(node.input[position])
    if value is None:
        return None
    return [int(v) for v in np.asarray(value).reshape(-1)]


def _matmul(node, ins, attrs, constants) -> Shape | None:
    if len(ins) != 2 or not all(_known(t) for t in ins):
        return None
    a, b = ins[0].shape, ins[1].shape
    a2 = a if len(a) > 1 else (1, *a)
    b2 = b if len(b) > 1 else (*b, 1)
    out = (*_broadcast([a2[:-2], b2[:-2]]), a2[-2], b2[-1])
    if len(a) == 1:
        out = out[:-2] + out[-1:]
    if len(b) == 1:
        out = out[:-1]
    return out


def _gemm(node, ins, attrs, constants) -> Shape | None:
    if len(ins) < 2 or not all(_known(t) for t in ins[:2]):
        return None
    a, b = ins[0].shape, ins[1].shape
    return (a[1] if attrs.get("transA", 0) else a[0], b[0] if attrs.get("transB", 0) else b[1])


def _transpose(node, ins, attrs, constants) -> Shape | None:
    shape = ins[0].shape
    perm = attrs.get("perm") or list(reversed(range(len(shape))))
    return tuple(shape[p] for p in perm)


def _reshape(node, ins, attrs, constants) -> Shape | None:
    target = _const(node, constants, 1)
    if target is None:
        return None
    first = ins[0]
    out = [
        first.shape[i] if v == 0 and not attrs.get("allowzero", 0) else v
        for i, v in enumerate(target)
    ]
    if -1 in out:
        known_part = int(np.prod([v for v in out if v != -1]))
        out[out.index(-1)] = first.numel // max(known_part, 1)
    return tuple(out)


def _flatten(node, ins, attrs, constants) -> Shape | None:
    shape = ins[0].shape
    axis = attrs.get("axis", 1) % (len(shape) or 1)
    return (int(np.prod(shape[:axis])), int(np.prod(shape[axis:])))


def _concat(node, ins, attrs, constants) -> Shape | None:
    if not ins or not all(_known(t) for t in ins):
        return None
    axis = attrs.get("axis", 0) % len(ins[0].shape)
    out = list(ins[0].shape)
    out[axis] = sum(t.shape[axis] for t in ins)
    return tuple(out)


def _expand(node, ins, attrs, constants) -> Shape | None:
    target = _const(node, constants, 1)
    if target is None:
        return None
    return _broadcast([ins[0].shape, tuple(target)])


def _gather(node, ins, attrs, constants) -> Shape | None:
    if len(ins) < 2 or not _known(ins[1]):
        return None
    data, indices = ins[0].shape, ins[1].shape
    axis = attrs.get("axis", 0) % len(data)
    return (*data[:axis], *indices, *data[axis + 1 :])


def _gather_elements(node, ins, attrs, constants) -> Shape | None:
    return ins[1].shape if len(ins) > 1 and _known(ins[1]) else None


def _slice(node, ins, attrs, constants) -> Shape | None:
    shape = list(ins[0].shape)
    starts, ends = _const(node, constants, 1), _const(node, constants, 2)
    if starts is None or ends is None:
        return None
    axes = _const(node, constants, 3) or list(range(len(starts)))
    steps = _const(node, constants, 4) or [1] * len(starts)
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        axis %= len(shape)
        shape[axis] = len(range(*slice(start, end, step).indices(shape[axis])))
    return tuple(shape)


def _unsqueeze(node, ins, attrs, constants) -> Shape | None:
    axes = attrs.get("axes") or _const(node, constants, 1)
    if axes is None:
        return None
    out = list(ins[0].shape)
    rank = len(out) + len(axes)
    for axis in sorted(a % rank for a in axes):
        out.insert(axis, 1)
    return tuple(out)


def _squeeze(node, ins, attrs, constants) -> Shape | None:
    shape = ins[0].shape
    axes = attrs.get("axes") or _const(node, constants, 1)
    if axes is None:
        return tuple(d for d in shape if d != 1)
    drop = {a % len(shape) for a in axes}
    return tuple(d for i, d in enumerate(shape) if i not in drop)


def _constant_of_shape(node, ins, attrs, constants) -> Shape | None:
    target = _const(node, constants, 0)
    return tuple(target) if target is not None else None


def _shape(node, ins, attrs, constants) -> Shape | None:
    rank = len(ins[0].shape)
    start = attrs.get("start", 0)
    end = attrs.get("end", rank)
    return (len(range(*slice(start, end).indices(rank))),)


def _range(node, ins, attrs, constants) -> Shape | None:
    values = [_const(node, constants, i) for i in range(3)]
    if any(v is None or len(v) != 1 for v in values):
        return None
    (start,), (limit,), (delta,) = values
    return (max(int(np.ceil((limit - start) / delta)), 0),) if delta else None


def _tile(node, ins, attrs, constants) -> Shape | None:
    repeats = _const(node, constants, 1)
    if repeats is None:
        return None
    return tuple(d * r for d, r in zip(ins[0].shape, repeats, strict=True))


#: op -> (rule, whether the rule needs the first input's shape)
_RULES = {
    "MatMul": (_matmul, False),
    "Gemm": (_gemm, False),
    "Transpose": (_transpose, True),
    "Reshape": (_reshape, True),
    "Flatten": (_flatten, True),
    "Concat": (_concat, False),
    "Expand": (_expand, True),
    "Gather": (_gather, True),
    "GatherElements": (_gather_elements, False),
    "Slice": (_slice, True),
    "Unsqueeze": (_unsqueeze, True),
    "Squeeze": (_squeeze, True),
    "ConstantOfShape": (_constant_of_shape, False),
    "Shape": (_shape, True),
    "Range": (_range, False),
    "Tile": (_tile, True),
}


def _fallback_one(node, ins, constants) -> Shape | None:
    op = node.op_type
    first = ins[0] if ins else None
    try:
        if op in _SAME_SHAPE and _known(first):
            return first.shape
        if op in _BROADCAST and ins and all(_known(t) for t in ins):
            return _broadcast([t.shape for t in ins])
        if op not in _RULES:
            return None
        rule, needs_first = _RULES[op]
        if needs_first and not _known(first):
            return None
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        return rule(node, ins, attrs, constants)
    except (ValueError, IndexError, ZeroDivisionError, TypeError):
        return None
