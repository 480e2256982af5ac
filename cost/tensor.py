"""Tensor metadata shared by the graph loader and the cost model.

A `TensorInfo` is what the planner knows about a tensor without ever reading its data:
its name, static shape (after symbolic dimensions are bound) and element type.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

import onnx

#: Bytes per element for every ONNX element type the planner may meet.
ONNX_DTYPE_BYTES: dict[int, int] = {
    onnx.TensorProto.FLOAT: 4,
    onnx.TensorProto.UINT8: 1,
    onnx.TensorProto.INT8: 1,
    onnx.TensorProto.UINT16: 2,
    onnx.TensorProto.INT16: 2,
    onnx.TensorProto.INT32: 4,
    onnx.TensorProto.INT64: 8,
    onnx.TensorProto.STRING: 8,
    onnx.TensorProto.BOOL: 1,
    onnx.TensorProto.FLOAT16: 2,
    onnx.TensorProto.DOUBLE: 8,
    onnx.TensorProto.UINT32: 4,
    onnx.TensorProto.UINT64: 8,
    onnx.TensorProto.COMPLEX64: 8,
    onnx.TensorProto.COMPLEX128: 16,
    onnx.TensorProto.BFLOAT16: 2,
}
for _name in ("FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ"):
    if hasattr(onnx.TensorProto, _name):
        ONNX_DTYPE_BYTES[getattr(onnx.TensorProto, _name)] = 1

FLOAT_DTYPES: frozenset[int] = frozenset(
    {
        onnx.TensorProto.FLOAT,
        onnx.TensorProto.FLOAT16,
        onnx.TensorProto.BFLOAT16,
        onnx.TensorProto.DOUBLE,
    }
)


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """Static description of one tensor.

    `shape` is None when even the rank is unknown; a dimension is never symbolic here
    (the loader binds or rejects symbols before costing). `dtype` is the ONNX
    `TensorProto.DataType` enum value.
    """

    name: str
    shape: tuple[int, ...] | None
    dtype: int = onnx.TensorProto.FLOAT

    @property
    def known(self) -> bool:
        return self.shape is not None

    @property
    def numel(self) -> int:
        """Number of elements (0 when the shape is unknown)."""
        return prod(self.shape) if self.shape is not None else 0

    @property
    def itemsize(self) -> int:
        return ONNX_DTYPE_BYTES.get(self.dtype, 4)

    @property
    def nbytes(self) -> int:
        return self.numel * self.itemsize

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_DTYPES

    @property
    def dtype_name(self) -> str:
        """Readable element type: float32, bfloat16, int64, ..."""
        return dtype_name(self.dtype)


def dtype_name(dtype: int) -> str:
    """`onnx.TensorProto.FLOAT` -> "float32" (numpy spelling where one exists)."""
    name = onnx.TensorProto.DataType.Name(dtype).lower()
    return {"float": "float32", "double": "float64", "float16": "float16"}.get(name, name)
