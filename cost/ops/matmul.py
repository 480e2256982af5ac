"""Matrix products: Gemm, MatMul and Einsum, the compute-bound ops (`kind="compute"`).

* Gemm: 2 * M * N * K, + M*N for adding C, + M*N for each of alpha != 1 and beta != 1.
* MatMul (numpy batching and broadcasting): 2 * prod(batch) * M * K * N
  = 2 * numel(Y) * K (`matmul_dims`).
* Einsum: contracting left to right, 2 * prod(sizes of all distinct indices) per
  pairwise step that sums an index away, 1 * prod when it does not
  (`parse_einsum`, `einsum_flops`).

Backward (`_product_cost`): one product per operand that needs a gradient (about 2x
forward), of which the parameters' share is the weight gradient.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from math import prod

from cost.opcost import OpCost, OpNode
from cost.ops.common import (
    Formula,
    Shape,
    _broadcast,
    _dim,
    _float_attr,
    _input,
    _int_attr,
    _known,
    _numel,
    _output,
    _product_cost,
    _shape,
    _str_attr,
    estimate_unknown,
    needs_grad,
)


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


#: This module's part of `cost.ops.OP_COSTS`.
COSTS: dict[str, Formula] = {
    "Gemm": gemm_cost,
    "MatMul": matmul_cost,
    "Einsum": einsum_cost,
}
