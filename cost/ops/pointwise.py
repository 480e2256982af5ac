"""Pointwise (element-wise) ops and the Softmax family, priced per output element.

Per-element factors of the pointwise ops (`POINTWISE`): an elementary operation
(+ - * / min max compare select) is 1 FLOP and so is one transcendental intrinsic
(exp, log, sqrt, tanh, erf, sin, cos, pow), as FLOP counters usually count them; a
composite op is the sum of its steps, e.g. Sigmoid = 1/(1+exp(-x)) = 4, Gelu (erf form)
= x*0.5*(1+erf(x/sqrt2)) = 5, Softmax = max, sub, exp, sum, div = 5. Element-wise ops
are memory-bound, so these factors hardly move a time estimate; the bytes dominate.
"""

from __future__ import annotations

from dataclasses import dataclass

from cost.opcost import OpCost, OpNode
from cost.ops.common import (
    Formula,
    _activations,
    _bytes_estimated,
    _grad_inputs,
    _inputs_bytes,
    _output_numel,
    _outputs_bytes,
    _str_attr,
    needs_grad,
)


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


#: This module's part of `cost.ops.OP_COSTS`.
COSTS: dict[str, Formula] = {
    **{op: pointwise_cost for op in POINTWISE},
    "Softmax": softmax_cost,
    "LogSoftmax": softmax_cost,
    "Hardmax": softmax_cost,
}
