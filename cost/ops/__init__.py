"""What one ONNX operator costs: FLOPs, bytes, backward FLOPs and saved tensors.

`op_cost(node)` looks the operator up in `OP_COSTS` and applies its formula; an operator
it does not know (or one from a non-default domain such as "com.microsoft") gets a
byte-only estimate with `estimated=True` (the caller warns). Pure functions, no torch.

Conventions (see `cost.opcost` for the contract):

* 1 multiply-add = 2 FLOPs, as `torch.utils.flop_counter` counts; bias additions are
  counted on top (one FLOP per output element), which torch does not.
* Bytes are every input read once (weights included) plus every output written once.
  Two deliberate exceptions read only what they copy: `Slice` and the `Gather` family
  read ``min(data, output)`` bytes of their data input, not the whole tensor.
* Backward FLOPs are charged only for inputs that need a gradient (see `needs_grad`):
  float tensors, except parameters holding at most one element (scalar constants such
  as the 0.5 of a decomposed Gelu). An op none of whose inputs needs a gradient (shape
  arithmetic on int64, comparisons feeding a mask) has no backward and saves nothing.
* `weight_grad_flops` is the part of `backward_flops` spent on gradients of inputs in
  `node.param_inputs`; `saved_inputs` lists the activation inputs (never parameters)
  that backward reads.
* When a shape the formula needs is unknown, the formula falls back on whatever is
  known (usually the output shape) and sets `estimated=True`; it never raises.

Per-element factors of the pointwise ops (`POINTWISE`): an elementary operation
(+ - * / min max compare select) is 1 FLOP and so is one transcendental intrinsic
(exp, log, sqrt, tanh, erf, sin, cos, pow), as FLOP counters usually count them; a
composite op is the sum of its steps, e.g. Sigmoid = 1/(1+exp(-x)) = 4, Gelu (erf form)
= x*0.5*(1+erf(x/sqrt2)) = 5, Softmax = max, sub, exp, sum, div = 5, LayerNormalization
= mean, sub, square, sum, scale by rstd, gamma, beta = 7, rounded up to 8 for the
per-row rsqrt and the one-pass variance correction. Element-wise and normalisation ops
are memory-bound, so these factors hardly move a time estimate; the bytes dominate.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from math import ceil, floor, log2, prod

from cost.opcost import OpCost, OpNode
from cost.tensor import TensorInfo

#: Domains whose operators `OP_COSTS` describes ("" and "ai.onnx" are the same domain).
DEFAULT_DOMAINS: frozenset[str] = frozenset({"", "ai.onnx"})

Shape = tuple[int, ...]

# --------------------------------------------------------------------------------------
# Helpers: shapes, bytes, gradients
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


# --------------------------------------------------------------------------------------
# Metadata-only and data-movement ops
# --------------------------------------------------------------------------------------


def free_cost(node: OpNode) -> OpCost:
    """Metadata only (Reshape, Flatten, Squeeze, Unsqueeze, Identity, Shape, Size,
    Constant, inference-mode Dropout): a view or a constant, no FLOPs, no bytes."""
    return OpCost(kind="free")


def copy_cost(node: OpNode) -> OpCost:
    """Pure data movement (Transpose, Concat, Split, Pad, Cast, DepthToSpace...):
    0 FLOPs, bytes = inputs read + outputs written; the gradient is the inverse copy
    (0 FLOPs) and needs no saved tensor."""
    return OpCost(
        bytes_read=_inputs_bytes(node),
        bytes_written=_outputs_bytes(node),
        kind="memory",
        estimated=_bytes_estimated(node),
    )


def broadcast_copy_cost(node: OpNode) -> OpCost:
    """Expand and Tile: read the input, write the (larger) output, 0 FLOPs; backward
    sums the output gradient back onto the input: one add per output element."""
    n, est = _output_numel(node)
    bwd = n if needs_grad(node, 0) else 0
    return OpCost(
        bytes_read=_inputs_bytes(node),
        bytes_written=_outputs_bytes(node),
        backward_flops=bwd,
        kind="memory",
        estimated=est or _bytes_estimated(node),
    )


def slice_cost(node: OpNode) -> OpCost:
    """Slice: copies only the selected elements: bytes read = min(data, output) plus the
    starts/ends/axes/steps inputs, bytes written = output; 0 FLOPs. Backward writes the
    gradient into zeros of the input's shape (memory only)."""
    data, out = _input(node, 0), _output(node)
    if _known(out):
        read = min(_nbytes(data), _nbytes(out)) if _known(data) else _nbytes(out)
    else:
        read = _nbytes(data)
    return OpCost(
        bytes_read=read + _sum_bytes(node.inputs[1:]),
        bytes_written=_outputs_bytes(node),
        kind="memory",
        estimated=_bytes_estimated(node),
    )


def gather_cost(node: OpNode) -> OpCost:
    """Gather, GatherElements, GatherND: no FLOPs; bytes read = the gathered elements
    (min(data, output)) + the indices, bytes written = output.

    Embedding lookup (a parameter table indexed by int ids): rows read = output bytes,
    and backward is a scatter-add of the output gradient into the table, one add per
    output element, all of it a weight gradient. Backward keeps the indices.
    """
    data, indices, out = _input(node, 0), _input(node, 1), _output(node)
    if _known(out):
        read = min(_nbytes(data), _nbytes(out)) if _known(data) else _nbytes(out)
    else:
        read = _nbytes(data)
    n, est = _output_numel(node)
    grad = needs_grad(node, 0)
    bwd = n if grad else 0
    return OpCost(
        bytes_read=read + _nbytes(indices),
        bytes_written=_outputs_bytes(node),
        backward_flops=bwd,
        weight_grad_flops=bwd if 0 in node.param_inputs else 0,
        saved_inputs=_activations(node, [1]) if grad else (),
        kind="memory",
        estimated=est or _bytes_estimated(node),
    )


def scatter_cost(node: OpNode) -> OpCost:
    """ScatterND, ScatterElements: copy `data`, overwrite (or reduce into) it with
    `updates`: bytes = data + indices + updates read, output written; FLOPs = one per
    update element when `reduction` is set, else 0. Backward masks and gathers the
    output gradient (memory only) and keeps the indices."""
    updates = _input(node, 2)
    flops = _numel(updates) if _str_attr(node, "reduction", "none") not in ("none", None) else 0
    grad = needs_grad(node, 0) or needs_grad(node, 2)
    return OpCost(
        flops=flops,
        bytes_read=_inputs_bytes(node),
        bytes_written=_outputs_bytes(node),
        backward_flops=flops if grad else 0,
        saved_inputs=_activations(node, [1]) if grad else (),
        kind="memory",
        estimated=_bytes_estimated(node),
    )


def write_cost(node: OpNode) -> OpCost:
    """Generators (ConstantOfShape, Range, EyeLike, RandomNormalLike...): write the
    output, read the small shape/limit inputs; `Range` adds one FLOP per element."""
    n, est = _output_numel(node)
    flops = n if node.op_type == "Range" else 0
    return OpCost(
        flops=flops,
        bytes_read=_inputs_bytes(node),
        bytes_written=_outputs_bytes(node),
        kind="memory",
        estimated=est or _bytes_estimated(node),
    )


def dropout_cost(node: OpNode) -> OpCost:
    """Dropout: free in inference (no `training_mode` input: a view of the input).

    With a `training_mode` input (a training export) it draws a mask and scales: about
    2 FLOPs per element (compare to a random draw, scale), bytes = input read + output
    and mask written; backward multiplies by the mask: 2 per element. The mask is an
    output (saved by the graph layer if it counts it); no input is saved.
    """
    if _input(node, 2) is None:
        return free_cost(node)
    n, est = _output_numel(node)
    grad = needs_grad(node, 0)
    return OpCost(
        flops=2 * n,
        bytes_read=_inputs_bytes(node),
        bytes_written=_outputs_bytes(node),
        backward_flops=2 * n if grad else 0,
        kind="memory",
        estimated=est or _bytes_estimated(node),
    )


# --------------------------------------------------------------------------------------
# Pointwise (element-wise) ops
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pointwise:
    """Per-output-element factors of a pointwise op.

    `fwd`: forward FLOPs per element; `bwd`: backward FLOPs per element (0 for ops
    without a useful gradient: comparisons, logic, rounding); `saves`: positions of the
    inputs backward reads ("all" for every input, "partners" for each input whose
    partner needs a gradient, as in Mul: dA = g*B, dB = g*A); `output`: backward reads
    the output.
    For variadic ops (Sum, Mean, Min, Max) `fwd` and `bwd` are per extra input.
    """

    fwd: int
    bwd: int
    saves: tuple[int, ...] | str = ()
    output: bool = False


#: The factor table of the pointwise ops (forward, backward FLOPs per element; saved).
POINTWISE: dict[str, Pointwise] = {
    # arithmetic: dA = g, dB = -g; Mul: dA = g*b, dB = g*a; Div: dA = g/b, dB = -g*y/b
    "Add": Pointwise(1, 1),
    "Sub": Pointwise(1, 1),
    "Mul": Pointwise(1, 2, "partners"),
    "Div": Pointwise(1, 3, "all"),
    "Pow": Pointwise(1, 4, "all"),  # dA = g*b*a^(b-1), dB = g*y*log(a)
    "Mod": Pointwise(1, 1),
    "Neg": Pointwise(1, 1),
    "Abs": Pointwise(1, 2, (0,)),  # g * sign(x)
    "Reciprocal": Pointwise(1, 2, (), True),  # -g * y^2
    "Sqrt": Pointwise(1, 2, (), True),  # g / (2y)
    "Exp": Pointwise(1, 1, (), True),  # g * y
    "Log": Pointwise(1, 1, (0,)),  # g / x
    "Sin": Pointwise(1, 2, (0,)),
    "Cos": Pointwise(1, 2, (0,)),
    "Tan": Pointwise(1, 3, (0,)),
    "Asin": Pointwise(1, 4, (0,)),
    "Acos": Pointwise(1, 4, (0,)),
    "Atan": Pointwise(1, 3, (0,)),
    "Sinh": Pointwise(1, 2, (0,)),
    "Cosh": Pointwise(1, 2, (0,)),
    "Asinh": Pointwise(1, 4, (0,)),
    "Acosh": Pointwise(1, 4, (0,)),
    "Atanh": Pointwise(1, 3, (0,)),
    "Erf": Pointwise(1, 5, (0,)),  # g * 2/sqrt(pi) * exp(-x^2)
    # activations
    "Relu": Pointwise(1, 1, (), True),  # g * (y > 0)
    "LeakyRelu": Pointwise(2, 2, (0,)),  # x > 0 ? x : alpha*x
    "PRelu": Pointwise(2, 4, "all"),  # dx = g*(x>0 ? 1 : s), ds = sum(g*x*(x<0))
    "ThresholdedRelu": Pointwise(1, 1, (0,)),
    "Elu": Pointwise(4, 3, (), True),  # compare, exp, sub, mul; backward from y
    "Selu": Pointwise(5, 4, (), True),
    "Celu": Pointwise(5, 4, (), True),
    "Sigmoid": Pointwise(4, 3, (), True),  # 1/(1+exp(-x)); g*y*(1-y)
    "Tanh": Pointwise(1, 3, (), True),  # g*(1-y^2)
    "HardSigmoid": Pointwise(4, 2, (0,)),  # clip(alpha*x + beta, 0, 1): mul add max min
    "HardSwish": Pointwise(5, 4, (0,)),  # x * hardsigmoid(x)
    "Softplus": Pointwise(3, 5, (0,)),  # log(1+exp(x)); g * sigmoid(x)
    "Softsign": Pointwise(3, 3, (0,)),  # x / (1+|x|)
    "Mish": Pointwise(5, 9, (0,)),  # x * tanh(softplus(x))
    "Gelu": Pointwise(5, 9, (0,)),  # erf form; approximate="tanh" is priced 9 / 12
    "Shrink": Pointwise(2, 1, (0,)),
    "Clip": Pointwise(2, 2, (0,)),  # max, min; g * (lo <= x <= hi)
    "Where": Pointwise(1, 2, (0,)),  # select; both branch gradients masked by cond
    # variadic: per extra input
    "Sum": Pointwise(1, 1),
    "Mean": Pointwise(1, 1),  # plus one divide per element, see variadic_cost
    "Max": Pointwise(1, 2, "all"),
    "Min": Pointwise(1, 2, "all"),
    # no gradient: comparisons, logic, rounding, tests
    "Equal": Pointwise(1, 0),
    "Less": Pointwise(1, 0),
    "LessOrEqual": Pointwise(1, 0),
    "Greater": Pointwise(1, 0),
    "GreaterOrEqual": Pointwise(1, 0),
    "Not": Pointwise(1, 0),
    "And": Pointwise(1, 0),
    "Or": Pointwise(1, 0),
    "Xor": Pointwise(1, 0),
    "IsNaN": Pointwise(1, 0),
    "IsInf": Pointwise(1, 0),
    "Sign": Pointwise(1, 0),
    "Floor": Pointwise(1, 0),
    "Ceil": Pointwise(1, 0),
    "Round": Pointwise(1, 0),
    "BitwiseAnd": Pointwise(1, 0),
    "BitwiseOr": Pointwise(1, 0),
    "BitwiseXor": Pointwise(1, 0),
    "BitwiseNot": Pointwise(1, 0),
    "BitShift": Pointwise(1, 0),
}

#: Gelu with approximate="tanh": 0.5x(1+tanh(sqrt(2/pi)(x+0.044715x^3))).
GELU_TANH = Pointwise(9, 12, (0,))

_VARIADIC = frozenset({"Sum", "Mean", "Max", "Min"})


def pointwise_cost(node: OpNode, factors: Pointwise | None = None) -> OpCost:
    """Element-wise op: FLOPs = output numel x `fwd`, backward = output numel x `bwd`
    (when some input needs a gradient); bytes = all inputs read + outputs written.

    Variadic ops (Sum, Mean, Max, Min with n inputs) do n-1 binary steps: the factors
    are multiplied by n-1 (Mean adds one divide per element forward and backward).
    """
    if factors is None:
        factors = POINTWISE[node.op_type]
        if node.op_type == "Gelu" and _str_attr(node, "approximate", "none") == "tanh":
            factors = GELU_TANH
    n, est = _output_numel(node)
    steps = 1
    if node.op_type in _VARIADIC:
        present = sum(t is not None for t in node.inputs)
        steps = max(present - 1, 1)
    fwd = factors.fwd * steps + (1 if node.op_type == "Mean" else 0)
    bwd = factors.bwd * steps + (1 if node.op_type == "Mean" else 0)
    grad = bool(_grad_inputs(node)) and factors.bwd > 0
    if factors.saves == "all":
        saves = range(len(node.inputs))
    elif factors.saves == "partners":
        grads = _grad_inputs(node)
        saves = [j for j in range(len(node.inputs)) if any(i != j for i in grads)]
    else:
        saves = factors.saves
    weight_grad = 0
    if grad and node.param_inputs:
        # a trainable element-wise parameter (PRelu slope, layer scale, bias add): its
        # gradient is about one product per element, reduced over broadcast axes
        trained = [i for i in node.param_inputs if needs_grad(node, i)]
        weight_grad = min(len(trained) * n, bwd * n)
    return OpCost(
        flops=fwd * n,
        bytes_read=_inputs_bytes(node),
        bytes_written=_outputs_bytes(node),
        backward_flops=bwd * n if grad else 0,
        weight_grad_flops=weight_grad,
        saved_inputs=_activations(node, saves) if grad else (),
        saves_output=factors.output and grad,
        kind="memory",
        estimated=est or _bytes_estimated(node),
    )


# --------------------------------------------------------------------------------------
# Softmax, normalisation
# --------------------------------------------------------------------------------------


def softmax_cost(node: OpNode) -> OpCost:
    """Softmax / LogSoftmax / Hardmax along an axis: 5 FLOPs per element forward (max,
    subtract, exp, sum, divide or subtract-log), 4 backward (Softmax: y*(g - sum(g*y));
    LogSoftmax: g - exp(y)*sum(g)); backward reads the output. Hardmax has no gradient."""
    n, est = _output_numel(node)
    grad = needs_grad(node, 0) and node.op_type != "Hardmax"
    return OpCost(
        flops=5 * n,
        bytes_read=_inputs_bytes(node),
        bytes_written=_outputs_bytes(node),
        backward_flops=4 * n if grad else 0,
        saves_output=grad,
        kind="memory",
        estimated=est or _bytes_estimated(node),
    )


#: Normalisation: forward FLOPs per element, backward FLOPs per element, and the part
#: of backward that makes the scale/bias gradients (dgamma = sum(g*xhat): 2,
#: dbeta = sum(g): 1).
NORM_FWD = 8
NORM_BWD = 16
NORM_WGRAD = 3
BATCHNORM_INFER_FWD = 4  # (x - mean) * rstd * gamma + beta with running statistics
BATCHNORM_STATS_FWD = 3  # batch mean and variance in training mode


def norm_cost(node: OpNode) -> OpCost:
    """LayerNormalization, GroupNormalization, InstanceNormalization,
    BatchNormalization, MeanVarianceNormalization, LpNormalization.

    Forward: `NORM_FWD` = 8 FLOPs per element (mean, subtract, square, sum, scale by
    rstd, gamma, beta, plus the amortised rsqrt); BatchNormalization with running
    statistics (training_mode=0, the usual export) is 4 per element, 7 in training mode.
    Backward: about 2x forward (`NORM_BWD` = 16 per element: recompute xhat, dgamma,
    dbeta, the two row sums and dx), of which `NORM_WGRAD` = 3 per element are the
    scale and bias gradients when those are parameters. Backward reads the input; the
    per-row mean and rstd statistics it also keeps are ignored (N x groups floats, less
    than 1/(hidden size) of the input).
    """
    n, est = _output_numel(node)
    fwd = NORM_FWD
    if node.op_type == "BatchNormalization":
        fwd = BATCHNORM_INFER_FWD
        if _int_attr(node, "training_mode", 0):
            fwd += BATCHNORM_STATS_FWD
    grad = bool(_grad_inputs(node))
    trained = any(i in node.param_inputs and needs_grad(node, i) for i in (1, 2))
    return OpCost(
        flops=fwd * n,
        bytes_read=_inputs_bytes(node),
        bytes_written=_outputs_bytes(node),
        backward_flops=NORM_BWD * n if grad else 0,
        weight_grad_flops=NORM_WGRAD * n if grad and trained else 0,
        saved_inputs=_activations(node, [0]) if grad else (),
        kind="memory",
        estimated=est or _bytes_estimated(node),
    )


def lrn_cost(node: OpNode) -> OpCost:
    """LRN: y = x / (bias + alpha/size * sum_window(x^2))^beta: per element one square,
    `size` adds over the window, then scale, add, pow, divide: size + 5 FLOPs; backward
    about 2x forward, reading input and output."""
    n, est = _output_numel(node)
    size = max(_int_attr(node, "size", 5), 1)
    fwd = (size + 5) * n
    grad = needs_grad(node, 0)
    return OpCost(
        flops=fwd,
        bytes_read=_inputs_bytes(node),
        bytes_written=_outputs_bytes(node),
        backward_flops=2 * fwd if grad else 0,
        saved_inputs=_activations(node, [0]) if grad else (),
        saves_output=grad,
        kind="memory",
        estimated=est or _bytes_estimated(node),
    )


# --------------------------------------------------------------------------------------
# Convolution, pooling (spatial windows)
# --------------------------------------------------------------------------------------


def window_output_shape(
    in_shape: Shape,
    out_channels: int,
    kernel: Sequence[int],
    attrs: dict,
    ceil_mode: bool = False,
) -> Shape:
    """Output shape of a Conv/Pool window over `in_shape` = (N, C, *spatial):
    out = floor_or_ceil((in + pad_begin + pad_end - dilation*(k-1) - 1) / stride) + 1;
    auto_pad SAME_*: ceil(in / stride); VALID: no padding."""
    spatial = in_shape[2:]
    d = len(spatial)
    strides = _ints(attrs.get("strides"), d, 1)
    dilations = [max(v, 1) for v in _ints(attrs.get("dilations"), d, 1)]
    pads = _ints(attrs.get("pads"), 2 * d, 0)
    auto_pad = attrs.get("auto_pad", "NOTSET")
    if isinstance(auto_pad, bytes):
        auto_pad = auto_pad.decode("utf-8", "replace")
    rounding = ceil if ceil_mode else floor
    out = []
    for j, size in enumerate(spatial):
        s = max(strides[j], 1)
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            out.append(ceil(size / s))
            continue
        pad = 0 if auto_pad == "VALID" else pads[j] + pads[j + d]
        span = dilations[j] * (kernel[j] - 1) + 1
        out.append(max(rounding((size + pad - span) / s) + 1, 0))
    return (in_shape[0], out_channels, *out)


def conv_cost(node: OpNode) -> OpCost:
    """Conv: FLOPs = 2 * N * Cout * prod(out spatial) * (Cin/group) * prod(kernel)
    = 2 * numel(Y) * prod(W.shape[1:]), + numel(Y) for the bias.

    Backward: one product of the same size for dX (needs W) and one for dW (needs X),
    + numel(Y) for the bias gradient; the dW and dB parts are `weight_grad_flops` when
    W and B are parameters.
    """
    x, w, b, y = _input(node, 0), _input(node, 1), _input(node, 2), _output(node)
    est = False
    kernel = _kernel_attr(node)
    w_shape = _shape(w)
    if w_shape is not None and len(w_shape) >= 2:
        macs_per_out = prod(w_shape[1:])
        kernel = list(w_shape[2:])
        cout = w_shape[0]
    else:
        group = _int_attr(node, "group", 1)
        cin = _dim(x, 1)
        if cin is None or kernel is None:
            est = True
        macs_per_out = (cin or 1) // max(group, 1) * prod(kernel or [1])
        cout = _dim(y, 1) or _dim(b, 0) or 1
    if _known(y):
        out_numel = y.numel
    elif _known(x) and len(x.shape) >= 2 and kernel is not None and len(kernel) >= len(x.shape[2:]):
        out_numel = prod(window_output_shape(x.shape, cout, kernel, node.attrs))
    else:
        out_numel, est = 0, True
    product = 2 * out_numel * macs_per_out
    bias = out_numel if b is not None else 0
    return _product_cost(node, product, bias, [0, 1], est)


def conv_transpose_cost(node: OpNode) -> OpCost:
    """ConvTranspose: every input element is multiplied into a (Cout/group) x kernel
    patch: FLOPs = 2 * numel(X) * (Cout/group) * prod(kernel) = 2 * numel(X) *
    prod(W.shape[1:]) (W is [Cin, Cout/group, *kernel]), + numel(Y) for the bias.
    Backward as Conv: dX and dW are each one product of the same size.

    Without X's shape, each output element is taken to receive
    (Cin/group) * prod(kernel) / prod(strides) products (estimated).
    """
    x, w, b, y = _input(node, 0), _input(node, 1), _input(node, 2), _output(node)
    w_shape = _shape(w)
    est = False
    if _known(x) and w_shape is not None and len(w_shape) >= 2:
        product = 2 * x.numel * prod(w_shape[1:])
    elif _known(y) and w_shape is not None and len(w_shape) >= 2:
        group = max(_int_attr(node, "group", 1), 1)
        strides = _ints(node.attrs.get("strides"), len(w_shape) - 2, 1)
        per_out = w_shape[0] // group * prod(w_shape[2:]) // max(prod(strides), 1)
        product, est = 2 * y.numel * per_out, True
    else:
        product, est = 0, True
    bias = 0
    if b is not None:
        bias = _numel(y) if _known(y) else _numel(x) // max(_dim(x, 1) or 1, 1) * _numel(b)
        est = est or not _known(y)
    return _product_cost(node, product, bias, [0, 1], est)


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


def pool_cost(node: OpNode) -> OpCost:
    """MaxPool, AveragePool, LpPool: FLOPs = numel(Y) * prod(kernel) (k-1 compares or
    adds and a divide per output). Backward routes each output gradient back to its
    window: MaxPool one add per output (numel(Y)), AveragePool numel(Y) * prod(kernel).

    MaxPool saves its input (PyTorch keeps the input and the argmax indices; the indices,
    int64 of the output's size, are not counted here); AveragePool saves nothing.
    """
    x, y = _input(node, 0), _output(node)
    kernel = _kernel_attr(node)
    est = kernel is None
    window = prod(kernel) if kernel else 1
    if _known(y):
        out_numel = y.numel
    elif _known(x) and kernel and len(x.shape) >= 2 and len(kernel) >= len(x.shape[2:]):
        ceil_mode = bool(_int_attr(node, "ceil_mode", 0))
        out_numel = prod(window_output_shape(x.shape, x.shape[1], kernel, node.attrs, ceil_mode))
    else:
        out_numel, est = _numel(x) // max(window, 1), True
    is_max = node.op_type == "MaxPool"
    grad = needs_grad(node, 0)
    bwd = out_numel if is_max else out_numel * window
    return OpCost(
        flops=out_numel * window,
        bytes_read=_inputs_bytes(node),
        bytes_written=_outputs_bytes(node),
        backward_flops=bwd if grad else 0,
        saved_inputs=_activations(node, [0]) if grad and node.op_type != "AveragePool" else (),
        kind="memory",
        estimated=est or _bytes_estimated(node),
    )


def global_pool_cost(node: OpNode) -> OpCost:
    """GlobalAveragePool, GlobalMaxPool, GlobalLpPool: one FLOP per input element
    (sum or compare); backward spreads the gradient back: one per input element.
    GlobalMaxPool (and LpPool) save the input; GlobalAveragePool nothing."""
    x = _input(node, 0)
    n = _numel(x)
    est = not _known(x)
    if est:
        n = _numel(_output(node))
    grad = needs_grad(node, 0)
    return OpCost(
        flops=n,
        bytes_read=_inputs_bytes(node),
        bytes_written=_outputs_bytes(node),
        backward_flops=n if grad else 0,
        saved_inputs=_activations(node, [0])
        if grad and node.op_type != "GlobalAveragePool"
        else (),
        kind="memory",
        estimated=est or _bytes_estimated(node),
    )


# --------------------------------------------------------------------------------------
# Matrix products
# --------------------------------------------------------------------------------------


def gemm_cost(node: OpNode) -> OpCost:
    """Gemm: Y = alpha * A' B' + beta * C with A' = A^T if transA (M x K), B' = B^T if
    transB (K x N): FLOPs = 2 * M * N * K, + M*N for adding C, + M*N for each of
    alpha != 1 and beta != 1 (with C).

    Backward: dA = dY B'^T and dB = A'^T dY are 2MNK each, dC a reduction of M*N.
    """
    a, b, c, y = _input(node, 0), _input(node, 1), _input(node, 2), _output(node)
    trans_a = bool(_int_attr(node, "transA", 0))
    trans_b = bool(_int_attr(node, "transB", 0))
    a_shape, b_shape = _shape(a), _shape(b)
    m = k = n = None
    if a_shape is not None and len(a_shape) == 2:
        m, k = (a_shape[1], a_shape[0]) if trans_a else a_shape
    if b_shape is not None and len(b_shape) == 2:
        kb, n = (b_shape[1], b_shape[0]) if trans_b else b_shape
        k = k if k is not None else kb
    if _known(y) and len(y.shape) == 2:
        m, n = y.shape
    est = None in (m, k, n)
    m, k, n = m or 0, k or 0, n or 0
    product = 2 * m * n * k
    extra = 0
    if _float_attr(node, "alpha", 1.0) != 1.0:
        extra += m * n
    bias = 0
    if c is not None:
        bias = m * n
        if _float_attr(node, "beta", 1.0) != 1.0:
            extra += m * n
    cost = _product_cost(node, product, bias, [0, 1], est)
    if extra:
        cost = replace(cost, flops=cost.flops + extra)
    return cost


def matmul_dims(a: Shape, b: Shape) -> tuple[Shape, int, int, int] | None:
    """Numpy matmul of `a` and `b`: (batch shape, M, K, N); 1-D operands are promoted
    (a: 1 x K, b: K x 1). None when K differs or the batch dims do not broadcast."""
    if not a or not b:
        return None
    a2 = (1, *a) if len(a) == 1 else a
    b2 = (*b, 1) if len(b) == 1 else b
    if a2[-1] != b2[-2]:
        return None
    batch = _broadcast([a2[:-2], b2[:-2]])
    if batch is None:
        return None
    return batch, a2[-2], a2[-1], b2[-1]


def matmul_cost(node: OpNode) -> OpCost:
    """MatMul (numpy semantics: batched, broadcasting, 1-D operands promoted):
    FLOPs = 2 * prod(batch) * M * K * N = 2 * numel(Y) * K.

    Backward: dA = dY B^T and dB = A^T dY, one product each (a broadcast operand's
    gradient is also summed over the batch: ignored); the dB part is the weight
    gradient when B is a parameter (and dA when A is).
    """
    a, b, y = _input(node, 0), _input(node, 1), _output(node)
    dims = matmul_dims(a.shape, b.shape) if _known(a) and _known(b) else None
    est = False
    if dims is not None:
        batch, m, k, n = dims
        product = 2 * prod(batch) * m * k * n
    else:
        k = _dim(a, -1)
        if k is None:
            k = _dim(b, 0) if len(_shape(b) or ()) == 1 else _dim(b, -2)
        est = k is None or not _known(y) or (_known(a) and _known(b))
        product = 2 * _numel(y) * (k or 0)
    return _product_cost(node, product, 0, [0, 1], est)


def parse_einsum(equation: str, shapes: Sequence[Shape | None]):
    """Split an einsum `equation` into operand index lists and the output index list,
    expanding "..." into per-axis names ("@0" = the last broadcast axis), and size every
    index from `shapes` (broadcast: the largest size wins). Unknown sizes are absent
    from the size map. Returns (operands, output, sizes) or None when malformed."""
    eq = equation.replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(shapes):
        return None
    operands: list[list[str]] = []
    sizes: dict[str, int] = {}
    ell_rank = 0
    for term, shape in zip(terms, shapes, strict=True):
        letters = term.replace("...", "")
        if "." in letters:
            return None
        if "..." in term:
            if shape is None:
                return None
            e = len(shape) - len(letters)
            if e < 0:
                return None
            ell_rank = max(ell_rank, e)
            head, _, tail = term.partition("...")
            idx = [*head, *(f"@{e - 1 - j}" for j in range(e)), *tail]
        else:
            idx = list(term)
        if shape is not None:
            if len(shape) != len(idx):
                return None
            for name, size in zip(idx, shape, strict=True):
                sizes[name] = max(sizes.get(name, 1), size)
        operands.append(idx)
    ellipsis = [f"@{j}" for j in range(ell_rank - 1, -1, -1)]
    if arrow:
        head, dots, tail = rhs.partition("...")
        output = [*head, *(ellipsis if dots else []), *tail]
    else:
        counts: dict[str, int] = {}
        for idx in operands:
            for name in idx:
                if not name.startswith("@"):
                    counts[name] = counts.get(name, 0) + 1
        output = ellipsis + sorted(name for name, c in counts.items() if c == 1)
    return operands, output, sizes


def einsum_flops(operands: Sequence[Sequence[str]], output: Sequence[str], sizes) -> int:
    """Einsum FLOPs, contracting operands left to right: each pairwise step costs
    2 * prod(sizes of all its distinct indices) when it sums an index away (a multiply
    and an add per point), 1 * prod when it does not (outer or Hadamard product); a
    lone operand with summed indices ("ij->i", "ii->") costs one add per element.
    For two operands this is the rule 2 * prod(all distinct index sizes), e.g.
    "bhqd,bhkd->bhqk" = 2*B*H*Q*D*K."""

    def size(names) -> int:
        return prod(sizes.get(name, 1) for name in names)

    current = set(operands[0])
    flops = 0
    for j in range(1, len(operands)):
        later = set(output).union(*operands[j + 1 :])
        joint = current | set(operands[j])
        keep = joint & later
        flops += (2 if joint - keep else 1) * size(joint)
        current = keep
    if current - set(output):
        flops += size(current)
    return flops


def einsum_cost(node: OpNode) -> OpCost:
    """Einsum: see `einsum_flops`. Backward: the gradient of each operand is an einsum
    of the same index space, so one forward's worth per operand needing a gradient
    (2x for the usual two-operand contraction). `kind="compute"` when it contracts an
    index, else memory (transpose, Hadamard, outer product)."""
    equation = _str_attr(node, "equation")
    shapes = [_shape(t) for t in node.inputs]
    parsed = parse_einsum(equation, shapes) if isinstance(equation, str) else None
    if parsed is None or not node.inputs:
        return estimate_unknown(node)
    operands, output, sizes = parsed
    out_shape = _shape(_output(node))
    if out_shape is not None and len(out_shape) == len(output):
        for name, size in zip(output, out_shape, strict=True):
            sizes.setdefault(name, size)
    est = any(name not in sizes for idx in operands for name in idx)
    est = est or any(name not in sizes for name in output)
    product = einsum_flops(operands, output, sizes)
    contracts = bool(set().union(*operands) - set(output))
    cost = _product_cost(node, product, 0, list(range(len(node.inputs))), est, bias_input=-1)
    if len(node.inputs) == 1:
        # one operand: the gradient is a broadcast/transposition of dY, no saved input
        cost = replace(cost, backward_flops=product if needs_grad(node, 0) else 0)
    if not contracts or len(node.inputs) == 1:
        cost = replace(cost, kind="memory")
    return cost


# --------------------------------------------------------------------------------------
# Reductions, scans, sorting, resampling
# --------------------------------------------------------------------------------------

#: Reductions: (FLOPs per input element, FLOPs per output element, backward per input
#: element, backward reads the input and output).
REDUCE: dict[str, tuple[int, int, int, bool]] = {
    "ReduceSum": (1, 0, 1, False),  # dx = broadcast(g)
    "ReduceMean": (1, 1, 1, False),  # + one divide per output
    "ReduceMax": (1, 0, 2, True),  # dx = g * (x == y)
    "ReduceMin": (1, 0, 2, True),
    "ReduceProd": (1, 0, 2, True),  # dx = g * y / x
    "ReduceL1": (2, 0, 2, True),  # |x| and add; dx = g * sign(x)
    "ReduceL2": (2, 1, 2, True),  # square and add, sqrt per output; dx = g * x / y
    "ReduceSumSquare": (2, 0, 2, True),
    "ReduceLogSum": (1, 1, 2, True),
    "ReduceLogSumExp": (2, 1, 3, True),
}


def reduce_cost(node: OpNode) -> OpCost:
    """Reduce*: FLOPs = numel(X) x per-input factor + numel(Y) x per-output factor
    (`REDUCE`); backward broadcasts the gradient back over the input (1-3 FLOPs per
    input element); Max/Min/Prod/L1/L2/LogSum* read the input and output."""
    per_in, per_out, per_bwd, saves = REDUCE[node.op_type]
    x, y = _input(node, 0), _output(node)
    est = not _known(x)
    n_in = _numel(x) if not est else _numel(y)
    n_out = _numel(y) if _known(y) else 1
    grad = needs_grad(node, 0)
    return OpCost(
        flops=per_in * n_in + per_out * n_out,
        bytes_read=_inputs_bytes(node),
        bytes_written=_outputs_bytes(node),
        backward_flops=per_bwd * n_in if grad else 0,
        saved_inputs=_activations(node, [0]) if grad and saves else (),
        saves_output=grad and saves,
        kind="memory",
        estimated=est or _bytes_estimated(node),
    )


def arg_reduce_cost(node: OpNode) -> OpCost:
    """ArgMax, ArgMin: one compare per input element; int64 output, no gradient."""
    x = _input(node, 0)
    return OpCost(
        flops=_numel(x),
        bytes_read=_inputs_bytes(node),
        bytes_written=_outputs_bytes(node),
        kind="memory",
        estimated=_bytes_estimated(node),
    )


def cumsum_cost(node: OpNode) -> OpCost:
    """CumSum: one add per element; backward is a reversed cumulative sum (one add per
    element), nothing saved."""
    n, est = _output_numel(node)
    return OpCost(
        flops=n,
        bytes_read=_inputs_bytes(node),
        bytes_written=_outputs_bytes(node),
        backward_flops=n if needs_grad(node, 0) else 0,
        kind="memory",
        estimated=est or _bytes_estimated(node),
    )


def topk_cost(node: OpNode) -> OpCost:
    """TopK: a bytes-level estimate; FLOPs = numel(X) * ceil(log2(k)) compares (a heap
    of k per row), k read from the output shape along `axis`. Backward scatters the
    gradient of the k values back: one per output element; the indices output is kept
    (not an input)."""
    x, values = _input(node, 0), _output(node)
    axis = _int_attr(node, "axis", -1)
    k = _dim(values, axis) if _known(values) else None
    est = k is None or not _known(x)
    compares = _numel(x) * max(1, ceil(log2(k))) if k else _numel(x)
    grad = needs_grad(node, 0)
    return OpCost(
        flops=compares,
        bytes_read=_inputs_bytes(node),
        bytes_written=_outputs_bytes(node),
        backward_flops=_numel(values) if grad else 0,
        kind="memory",
        estimated=est or _bytes_estimated(node),
    )


def resize_cost(node: OpNode) -> OpCost:
    """Resize / Upsample: mode "nearest" is a gather (0 FLOPs); "linear" interpolates
    2^r taps and "cubic" 4^r taps per output element (r = resized axes), a multiply and
    an add each: FLOPs = 2 * taps * numel(Y). Backward scatters the same taps back
    (same FLOPs; nothing saved but shapes)."""
    x, y = _input(node, 0), _output(node)
    mode = _str_attr(node, "mode", "nearest")
    n, est = _output_numel(node)
    if _known(x) and _known(y) and len(x.shape) == len(y.shape):
        r = sum(1 for a, b in zip(x.shape, y.shape, strict=True) if a != b)
    else:
        r, est = 2, True
    taps = {"linear": 2**r, "bilinear": 2**r, "cubic": 4**r}.get(mode, 0)
    flops = 2 * taps * n
    grad = needs_grad(node, 0)
    return OpCost(
        flops=flops,
        bytes_read=_inputs_bytes(node),
        bytes_written=_outputs_bytes(node),
        backward_flops=(flops or n) if grad else 0,
        kind="memory",
        estimated=est or _bytes_estimated(node),
    )


def trilu_cost(node: OpNode) -> OpCost:
    """Trilu: a masked copy (one select per element: 1 FLOP); backward masks the
    gradient the same way."""
    n, est = _output_numel(node)
    return OpCost(
        flops=n,
        bytes_read=_inputs_bytes(node),
        bytes_written=_outputs_bytes(node),
        backward_flops=n if needs_grad(node, 0) else 0,
        kind="memory",
        estimated=est or _bytes_estimated(node),
    )


# --------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------

_FREE = (
    "Reshape",
    "Flatten",
    "Squeeze",
    "Unsqueeze",
    "Identity",
    "Shape",
    "Size",
    "Constant",
)
_COPY = (
    "Transpose",
    "Concat",
    "Split",
    "Pad",
    "Cast",
    "CastLike",
    "DepthToSpace",
    "SpaceToDepth",
    "ReverseSequence",
    "NonZero",
    "OneHot",
)
_WRITE = ("ConstantOfShape", "Range", "EyeLike", "RandomNormalLike", "RandomUniformLike")

OP_COSTS: dict[str, Callable[[OpNode], OpCost]] = {
    **dict.fromkeys(_FREE, free_cost),
    **dict.fromkeys(_COPY, copy_cost),
    **dict.fromkeys(_WRITE, write_cost),
    "Expand": broadcast_copy_cost,
    "Tile": broadcast_copy_cost,
    "Slice": slice_cost,
    "Gather": gather_cost,
    "GatherElements": gather_cost,
    "GatherND": gather_cost,
    "ScatterND": scatter_cost,
    "ScatterElements": scatter_cost,
    "Dropout": dropout_cost,
    **{op: pointwise_cost for op in POINTWISE},
    "Softmax": softmax_cost,
    "LogSoftmax": softmax_cost,
    "Hardmax": softmax_cost,
    **dict.fromkeys(
        (
            "BatchNormalization",
            "LayerNormalization",
            "GroupNormalization",
            "InstanceNormalization",
            "MeanVarianceNormalization",
            "LpNormalization",
        ),
        norm_cost,
    ),
    "LRN": lrn_cost,
    "Conv": conv_cost,
    "ConvTranspose": conv_transpose_cost,
    "MaxPool": pool_cost,
    "AveragePool": pool_cost,
    "LpPool": pool_cost,
    "GlobalAveragePool": global_pool_cost,
    "GlobalMaxPool": global_pool_cost,
    "GlobalLpPool": global_pool_cost,
    "Gemm": gemm_cost,
    "MatMul": matmul_cost,
    "Einsum": einsum_cost,
    **{op: reduce_cost for op in REDUCE},
    "ArgMax": arg_reduce_cost,
    "ArgMin": arg_reduce_cost,
    "CumSum": cumsum_cost,
    "TopK": topk_cost,
    "Resize": resize_cost,
    "Upsample": resize_cost,
    "Trilu": trilu_cost,
}

KNOWN_OPS: frozenset[str] = frozenset(OP_COSTS)


def op_cost(node: OpNode) -> OpCost:
    """Cost of `node`: its formula from `OP_COSTS`, or `estimate_unknown` for an op type
    without one or from a non-default domain. Never raises on odd shapes or attributes:
    a formula that fails falls back on the estimate."""
    formula = OP_COSTS.get(node.op_type) if node.domain in DEFAULT_DOMAINS else None
    if formula is None:
        return estimate_unknown(node)
    try:
        return formula(node)
    except (ArithmeticError, LookupError, TypeError, ValueError):
        return estimate_unknown(node)
