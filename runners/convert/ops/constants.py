"""Constants: Constant, ConstantOfShape and Range.

Constant accepts every value attribute form (value, value_float(s), value_int(s), and
sparse_value, densified; string values are not supported); ConstantOfShape fills with
``value`` (default a float32 zero). They fold to tensors at conversion time unless an
input is only known at run time.
"""

from __future__ import annotations

import math

import torch
from onnx import numpy_helper

from runners.convert import functional as R
from runners.convert.core import NodeCtx
from runners.convert.ops.registry import op
from runners.convert.weights import array_to_torch


def _constant_value(c: NodeCtx) -> torch.Tensor:
    a = c.attrs
    if "value" in a:
        return array_to_torch(numpy_helper.to_array(a["value"]))
    if "value_float" in a:
        return torch.tensor(a["value_float"], dtype=torch.float32)
    if "value_floats" in a:
        return torch.tensor(list(a["value_floats"]), dtype=torch.float32)
    if "value_int" in a:
        return torch.tensor(a["value_int"], dtype=torch.int64)
    if "value_ints" in a:
        return torch.tensor(list(a["value_ints"]), dtype=torch.int64)
    if "sparse_value" in a:
        sp = a["sparse_value"]
        values = array_to_torch(numpy_helper.to_array(sp.values))
        idx = array_to_torch(numpy_helper.to_array(sp.indices))
        dense = torch.zeros(math.prod(sp.dims), dtype=values.dtype)
        if idx.dim() == 2:  # [NNZ, rank] coordinates
            strides = torch.tensor([math.prod(sp.dims[i + 1 :]) for i in range(len(sp.dims))])
            idx = (idx * strides).sum(-1)
        dense[idx.reshape(-1)] = values
        return dense.reshape(list(sp.dims))
    raise c.unsupported("a string value")


@op("Constant")
def _constant(c: NodeCtx):
    return _constant_value(c)


@op("ConstantOfShape")
def _constant_of_shape(c: NodeCtx):
    value = c.attrs.get("value")
    v = (
        array_to_torch(numpy_helper.to_array(value))
        if value is not None
        else torch.zeros(1, dtype=torch.float32)
    )
    shape = c.ints_or_node(0)
    if isinstance(shape, list):
        return torch.full(shape, v.reshape(-1)[0].item(), dtype=v.dtype)
    return c.call(R.constant_of_shape, shape, v)


@op("Range")
def _range(c: NodeCtx):
    return c.call(R.range_, c.val(0), c.val(1), c.val(2))
