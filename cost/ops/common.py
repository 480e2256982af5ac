"""Helpers shared by the cost formulas: tensors by position, shapes, byte sums,
attribute readers, broadcasting, the gradient rule (`needs_grad`), the byte-only
fallback (`estimate_unknown`) and the shared tail of the product ops (`_product_cost`).

Names with a leading underscore are internal to the `cost.ops` package: the family
modules import them, nothing outside should.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from math import prod

from cost.opcost import OpCost, OpNode
from cost.tensor import TensorInfo

Shape = tuple[int, ...]


#: A cost formula: what `OP_COSTS` maps an operator type to.
Formula = Callable[[OpNode], OpCost]


# --------------------------------------------------------------------------------------
# Tensors, shapes, bytes, attributes
# --------------------------------------------------------------------------------------


def _input(node: OpNode, i: int) -> TensorInfo | None:
    return node.inputs[i] if 0 <= i < len(node.inputs) else None


def _output(node: OpNode, i: int = 0) -> TensorInfo | None:
    return node.outputs[i] if 0 <= i < len(node.outputs) else None


def _shape(t: TensorInfo | None) -> Shape | None:
    return t.shape if t is not None else None


def _numel(t: TensorInfo | None) -> int:
    return t.numel if t is not None else 0


def _nbytes(t: TensorInfo | None) -> int:
    return t.nbytes if t is not None else 0


def _known(t: TensorInfo | None) -> bool:
    return t is not None and t.shape is not None


def _dim(t: TensorInfo | None, axis: int) -> int | None:
    """Size of `axis` (negative counts from the end), None when unknown or out of range."""
    shape = _shape(t)
    if shape is None or not -len(shape) <= axis < len(shape):
        return None
    return shape[axis]


def _sum_bytes(tensors: Iterable[TensorInfo | None]) -> int:
    return sum(_nbytes(t) for t in tensors)


def _inputs_bytes(node: OpNode) -> int:
    return _sum_bytes(node.inputs)


def _outputs_bytes(node: OpNode) -> int:
    return _sum_bytes(node.outputs)


def _all_known(tensors: Iterable[TensorInfo | None]) -> bool:
    """True when every present tensor has a known shape."""
    return all(t is None or t.shape is not None for t in tensors)


def _str_attr(node: OpNode, name: str, default: str | None = None) -> str | None:
    """A string attribute (onnx.helper decodes them as bytes); `default` when absent or
    not a string."""
    value = node.attrs.get(name, default)
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return value if isinstance(value, str) else default


def _int_attr(node: OpNode, name: str, default: int) -> int:
    """An int attribute; `default` when absent or not a number."""
    value = node.attrs.get(name, default)
    return int(value) if isinstance(value, (int, float)) else default


def _float_attr(node: OpNode, name: str, default: float) -> float:
    """A float attribute; `default` when absent or not a number."""
    value = node.attrs.get(name, default)
    return float(value) if isinstance(value, (int, float)) else default


def _int_list(value) -> list[int] | None:
    """An int-list attribute, None when absent or not a list of numbers."""
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, (int, float)) for v in value):
        return None
    return [int(v) for v in value]


def _kernel_attr(node: OpNode) -> list[int] | None:
    """`kernel_shape`, each size at least 1; None when absent or malformed."""
    kernel = _int_list(node.attrs.get("kernel_shape"))
    return [max(k, 1) for k in kernel] if kernel is not None else None


def _ints(value, n: int, fill: int) -> list[int]:
    """An int-list attribute as `n` ints (missing, malformed or short: padded with `fill`)."""
    return ((_int_list(value) or []) + [fill] * n)[:n]


def _broadcast(shapes: Sequence[Shape]) -> Shape | None:
    """Numpy broadcast of `shapes`; None when they do not broadcast."""
    rank = max((len(s) for s in shapes), default=0)
    out: list[int] = []
    for axis in range(rank):
        size = 1
        for s in shapes:
            d = s[axis - rank + len(s)] if axis - rank + len(s) >= 0 else 1
            if d != 1:
                if size not in (1, d):
                    return None
                size = d
        out.append(size)
    return tuple(out)


# --------------------------------------------------------------------------------------
# Gradients, estimates, the product-op tail
# --------------------------------------------------------------------------------------


def needs_grad(node: OpNode, i: int) -> bool:
    """Whether backward computes a gradient for input `i`.

    Float inputs do, except parameters holding at most one element: those are taken as
    constants (the 0.5 of a decomposed Gelu, an epsilon), not trained scalars.
    """
    t = _input(node, i)
    if t is None or not t.is_float:
        return False
    return not (i in node.param_inputs and t.shape is not None and t.numel <= 1)


def _grad_inputs(node: OpNode) -> list[int]:
    return [i for i in range(len(node.inputs)) if needs_grad(node, i)]


def _activations(node: OpNode, positions: Iterable[int]) -> tuple[int, ...]:
    """`positions` that hold present, non-parameter inputs, sorted and de-duplicated."""
    return tuple(
        sorted({i for i in positions if _input(node, i) is not None and i not in node.param_inputs})
    )


def _output_numel(node: OpNode) -> tuple[int, bool]:
    """Element count of output 0 and whether it is estimated.

    Output shape first; else the broadcast of the inputs; else the largest known input.
    """
    out = _output(node)
    if _known(out):
        return out.numel, False
    shapes = [t.shape for t in node.inputs if t is not None and t.shape is not None]
    if shapes and len(shapes) == sum(t is not None for t in node.inputs):
        b = _broadcast(shapes)
        if b is not None:
            return prod(b), False
    return max((prod(s) for s in shapes), default=0), True


def _bytes_estimated(node: OpNode) -> bool:
    return not (_all_known(node.inputs) and _all_known(node.outputs))


def estimate_unknown(node: OpNode) -> OpCost:
    """Byte-only estimate for an operator without a formula: known inputs read plus known
    outputs written, no FLOPs, `kind="memory"`, `estimated=True`."""
    return OpCost(
        bytes_read=_inputs_bytes(node),
        bytes_written=_outputs_bytes(node),
        kind="memory",
        estimated=True,
    )


def _product_cost(
    node: OpNode,
    product: int,
    bias: int,
    operands: Sequence[int],
    estimated: bool,
    bias_input: int = 2,
) -> OpCost:
    """Shared tail of Conv/Gemm/MatMul/Einsum: forward = product + bias; backward = one
    product per operand that needs a gradient + the bias reduction; weight-gradient part
    = the products and bias of parameter operands. Saved: each operand whose partner
    needs a gradient (activations only)."""
    grads = [i for i in operands if needs_grad(node, i)]
    bias_grad = bias if needs_grad(node, bias_input) else 0
    backward = product * len(grads) + bias_grad
    weight = product * sum(1 for i in grads if i in node.param_inputs)
    if bias_input in node.param_inputs:
        weight += bias_grad
    saved = [j for i in grads for j in operands if j != i] if len(operands) > 1 else []
    return OpCost(
        flops=product + bias,
        bytes_read=_inputs_bytes(node),
        bytes_written=_outputs_bytes(node),
        backward_flops=backward,
        weight_grad_flops=weight,
        saved_inputs=_activations(node, saved),
        kind="compute",
        estimated=estimated or _bytes_estimated(node),
    )
