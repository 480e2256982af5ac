"""Shape arithmetic folds away: which nodes are static, and their values (numpy).

A node whose inputs are all static (non-parameter constants, and the outputs of Shape and
Size, which are known once shapes are bound) is *folded*: it costs nothing and belongs to
no layer (`folded_nodes`). Once input shapes are bound, Shape -> Gather -> Unsqueeze -> Concat chains (what the
TorchScript exporter writes for `x.view(x.size(0), -1)`) are constants. ONNX data
propagation resolves most of them; this fills the rest for the common operators, so a
Reshape fed by such a chain gets a static output shape. Anything not covered stays unknown.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import onnx
from onnx import numpy_helper

from cost.tensor import TensorInfo


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _axes(node, args, position: int):
    axes = _attr(node, "axes")
    if axes is None and len(args) > position and args[position] is not None:
        axes = [int(v) for v in np.asarray(args[position]).reshape(-1)]
    return axes


def _unsqueeze(node, args):
    out = args[0]
    axes = _axes(node, args, 1)
    rank = out.ndim + len(axes)
    for axis in sorted(a % rank for a in axes):
        out = np.expand_dims(out, axis)
    return out


def _squeeze(node, args):
    axes = _axes(node, args, 1)
    return np.squeeze(args[0], axis=tuple(axes) if axes else None)


def _slice(node, args):
    data = args[0]
    if len(args) > 1:
        starts, ends = (np.asarray(a).reshape(-1) for a in args[1:3])
        axes = (
            np.asarray(args[3]).reshape(-1)
            if len(args) > 3 and args[3] is not None
            else range(len(starts))
        )
        steps = (
            np.asarray(args[4]).reshape(-1)
            if len(args) > 4 and args[4] is not None
            else [1] * len(starts)
        )
    else:
        starts, ends = _attr(node, "starts"), _attr(node, "ends")
        axes = _attr(node, "axes") or range(len(starts))
        steps = [1] * len(starts)
    index = [slice(None)] * data.ndim
    for s, e, a, st in zip(starts, ends, axes, steps, strict=False):
        index[int(a)] = slice(int(s), int(e), int(st))
    return data[tuple(index)]


def _reshape(node, args):
    shape = [int(v) for v in np.asarray(args[1]).reshape(-1)]
    shape = [args[0].shape[i] if v == 0 else v for i, v in enumerate(shape)]
    return args[0].reshape(shape)


def _constant_of_shape(node, args):
    value = _attr(node, "value")
    fill = numpy_helper.to_array(value).reshape(-1)[0] if value is not None else np.float32(0)
    return np.full(
        [int(v) for v in np.asarray(args[0]).reshape(-1)], fill, dtype=np.asarray(fill).dtype
    )


def _cast(node, args):
    to = _attr(node, "to")
    return args[0].astype(onnx.helper.tensor_dtype_to_np_dtype(to))


def _gather(node, args):
    return np.take(args[0], np.asarray(args[1]).astype(np.int64), axis=_attr(node, "axis", 0))


def _concat(node, args):
    return np.concatenate([np.atleast_1d(a) for a in args], axis=_attr(node, "axis", 0))


EVALUATORS: dict[str, Callable] = {
    "Gather": _gather,
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Concat": _concat,
    "Slice": _slice,
    "Cast": _cast,
    "Reshape": _reshape,
    "ConstantOfShape": _constant_of_shape,
    "Identity": lambda n, a: a[0],
    "Add": lambda n, a: np.add(a[0], a[1]),
    "Sub": lambda n, a: np.subtract(a[0], a[1]),
    "Mul": lambda n, a: np.multiply(a[0], a[1]),
    "Div": lambda n, a: (
        (a[0] // a[1]) if np.issubdtype(np.asarray(a[0]).dtype, np.integer) else a[0] / a[1]
    ),
    "Equal": lambda n, a: np.equal(a[0], a[1]),
    "Where": lambda n, a: np.where(a[0], a[1], a[2]),
    "Range": lambda n, a: np.arange(a[0], a[1], a[2]),
    "Expand": lambda n, a: (
        a[0] * np.ones([int(v) for v in np.asarray(a[1]).reshape(-1)], dtype=np.asarray(a[0]).dtype)
    ),
    "Max": lambda n, a: np.maximum(a[0], a[1]),
    "Min": lambda n, a: np.minimum(a[0], a[1]),
}
MAX_FOLDED_ELEMENTS = 1 << 16

#: Operators whose output is known as soon as shapes are bound.
SHAPE_SOURCES = frozenset({"Shape", "Size"})
#: Operators with subgraphs: never folded, priced as opaque nodes.
SUBGRAPH_OPS = frozenset({"If", "Loop", "Scan", "SequenceMap"})
#: Random generators: static inputs, but a new value every run.
RANDOM_OPS = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike"})


def folded_nodes(nodes, names, params: set[str], constant_like: set[str]) -> set[str]:
    """Nodes computing shape arithmetic: every input static, none a parameter."""
    static = {t for t in constant_like if t not in params}
    folded: set[str] = set()
    for node, name in zip(nodes, names, strict=True):
        if node.op_type in SUBGRAPH_OPS:
            continue
        inputs = [i for i in node.input if i]
        if node.op_type in SHAPE_SOURCES or all(i in static for i in inputs):
            if node.op_type in RANDOM_OPS:
                continue
            folded.add(name)
            static.update(o for o in node.output if o)
    return folded


def evaluate_folded(
    nodes,
    names,
    folded: set[str],
    tensors: Mapping[str, TensorInfo],
    constants: dict[str, np.ndarray],
) -> None:
    """Add the values of folded nodes' outputs to `constants` where they can be computed."""
    for node, name in zip(nodes, names, strict=True):
        if name not in folded or not node.output or node.output[0] in constants:
            continue
        try:
            if node.op_type == "Shape":
                info = tensors.get(node.input[0])
                if info is None or info.shape is None:
                    continue
                shape = np.array(info.shape, dtype=np.int64)
                start, end = _attr(node, "start", 0), _attr(node, "end", None)
                value = shape[start:end]
            elif node.op_type == "Size":
                info = tensors.get(node.input[0])
                if info is None or info.shape is None:
                    continue
                value = np.array(info.numel, dtype=np.int64)
            elif node.op_type in EVALUATORS:
                args = [constants.get(i) if i else None for i in node.input]
                if any(a is None for a, i in zip(args, node.input, strict=True) if i):
                    continue
                value = np.asarray(EVALUATORS[node.op_type](node, args))
            else:
                continue
        except (ValueError, IndexError, TypeError, KeyError, OverflowError):
            continue
        if value.size <= MAX_FOLDED_ELEMENTS:
            constants[node.output[0]] = value
