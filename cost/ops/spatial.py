"""Spatial-window ops: Conv, ConvTranspose, the pools and Resize.

* Conv: FLOPs = 2 * numel(Y) * prod(W.shape[1:]) (+ numel(Y) for the bias);
  ConvTranspose: 2 * numel(X) * prod(W.shape[1:]). Both are compute-bound products,
  priced with `_product_cost` (backward: one product each for dX and dW).
* MaxPool, AveragePool, LpPool: numel(Y) * prod(kernel); the Global*Pool ops one FLOP
  per input element.
* Resize / Upsample: 2 * taps * numel(Y), taps = 2^r (linear) or 4^r (cubic) over the
  r resized axes, 0 for nearest.

Output sizes follow the ONNX rule, floor_or_ceil((in + pads - dilation*(k-1) - 1) /
stride) + 1 (`window_output_shape`).
"""

from __future__ import annotations

from collections.abc import Sequence
from math import ceil, floor, prod

from cost.opcost import OpCost, OpNode
from cost.ops.common import (
    Formula,
    Shape,
    _activations,
    _bytes_estimated,
    _dim,
    _input,
    _inputs_bytes,
    _int_attr,
    _ints,
    _kernel_attr,
    _known,
    _numel,
    _output,
    _output_numel,
    _outputs_bytes,
    _product_cost,
    _shape,
    _str_attr,
    needs_grad,
)


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


#: This module's part of `cost.ops.OP_COSTS`.
COSTS: dict[str, Formula] = {
    "Conv": conv_cost,
    "ConvTranspose": conv_transpose_cost,
    "MaxPool": pool_cost,
    "AveragePool": pool_cost,
    "LpPool": pool_cost,
    "GlobalAveragePool": global_pool_cost,
    "GlobalMaxPool": global_pool_cost,
    "GlobalLpPool": global_pool_cost,
    "Resize": resize_cost,
    "Upsample": resize_cost,
}
