"""Linear algebra: MatMul, Gemm and Einsum.

MatMul follows numpy.matmul (batched, broadcast). Gemm is ``alpha * A' @ B' + beta * C``
with ``A' = A^T`` when transA and ``B' = B^T`` when transB, C optional and broadcast to
the result (unidirectional broadcasting); ``F.linear`` when it is ``A @ B^T + c`` with a
1-D c. Einsum takes the equation attribute as torch.einsum does (spaces dropped).
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F

from runners.convert.core import NodeCtx
from runners.convert.ops.registry import op


@op("MatMul")
def _matmul(c: NodeCtx):
    return c.call(torch.matmul, c.val(0), c.val(1))


@op("Gemm")
def _gemm(c: NodeCtx):
    a, b, cc = c.val(0), c.val(1), c.val(2)
    alpha, beta = c.attr("alpha", 1.0), c.attr("beta", 1.0)
    ta, tb = c.attr("transA", 0), c.attr("transB", 0)
    c_rank = c.rank(2) if cc is not None else None
    if tb and not ta and alpha == 1.0 and beta == 1.0 and (cc is None or c_rank == 1):
        return c.call(F.linear, a, b, cc)
    if ta:
        a = c.call(torch.t, a)
    if tb:
        b = c.call(torch.t, b)
    if cc is None:
        y = c.call(torch.mm, a, b)
        return y if alpha == 1.0 else c.call(operator.mul, y, alpha)
    kwargs = {}
    if alpha != 1.0:
        kwargs["alpha"] = alpha
    if beta != 1.0:
        kwargs["beta"] = beta
    return c.call(torch.addmm, cc, a, b, **kwargs)


@op("Einsum")
def _einsum(c: NodeCtx):
    eq = c.attr("equation").replace(" ", "")
    return c.call(torch.einsum, eq, *c.vals())
