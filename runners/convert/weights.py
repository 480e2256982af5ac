"""Initializer values: inline data, external data next to the model, or a seeded init.

Random initialisation rule (``weights="random"``, or an initializer whose external data
file is absent): every tensor gets its own generator,
``torch.Generator().manual_seed(zlib.crc32(f"{seed}:{name}"))``, so a given initializer
name gets the same values in every stage file and in every run:

* scale / running variance of a normalisation (by use: input 1 of BatchNormalization,
  LayerNormalization, GroupNormalization, InstanceNormalization; input 4 of
  BatchNormalization), and other 1-D tensors named ``*weight`` / ``*scale`` /
  ``*gamma`` / ``*running_var``: ones;
* bias / running mean of a normalisation (inputs 2 and 3), and other 1-D tensors named
  ``*bias`` / ``*beta`` / ``*running_mean``: zeros;
* everything else: normal(0, 0.02).

Non-float initializers whose data is absent (masks, index tables) become zeros.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from onnx.external_data_helper import load_external_data_for_tensor

ONNX_TO_TORCH: dict[int, torch.dtype] = {
    onnx.TensorProto.FLOAT: torch.float32,
    onnx.TensorProto.DOUBLE: torch.float64,
    onnx.TensorProto.FLOAT16: torch.float16,
    onnx.TensorProto.BFLOAT16: torch.bfloat16,
    onnx.TensorProto.INT8: torch.int8,
    onnx.TensorProto.INT16: torch.int16,
    onnx.TensorProto.INT32: torch.int32,
    onnx.TensorProto.INT64: torch.int64,
    onnx.TensorProto.UINT8: torch.uint8,
    onnx.TensorProto.UINT16: torch.uint16,
    onnx.TensorProto.UINT32: torch.uint32,
    onnx.TensorProto.UINT64: torch.uint64,
    onnx.TensorProto.BOOL: torch.bool,
    onnx.TensorProto.COMPLEX64: torch.complex64,
    onnx.TensorProto.COMPLEX128: torch.complex128,
}

#: roles an initializer can have, from the op input slot that reads it
ROLE_ONES = "ones"
ROLE_ZEROS = "zeros"

NORM_OPS = {
    "BatchNormalization",
    "LayerNormalization",
    "GroupNormalization",
    "InstanceNormalization",
}


def torch_dtype(elem_type: int) -> torch.dtype:
    try:
        return ONNX_TO_TORCH[elem_type]
    except KeyError:
        name = onnx.TensorProto.DataType.Name(elem_type)
        raise NotImplementedError(
            f"ONNX element type {name} is not supported by pipeplan's converter"
        ) from None


def is_external(t: onnx.TensorProto) -> bool:
    return t.data_location == onnx.TensorProto.EXTERNAL


def external_path(t: onnx.TensorProto, base_dir: Path | None) -> Path | None:
    """Path of the external data file of ``t`` if it exists, else None."""
    if base_dir is None:
        return None
    loc = next((e.value for e in t.external_data if e.key == "location"), None)
    if loc is None:
        return None
    path = base_dir / loc
    return path if path.is_file() else None


def array_to_torch(arr: np.ndarray) -> torch.Tensor:
    if arr.dtype.name == "bfloat16":
        return torch.from_numpy(np.ascontiguousarray(arr).view(np.int16).copy()).view(
            torch.bfloat16
        )
    if arr.dtype == object:
        raise NotImplementedError("string tensors are not supported by pipeplan's converter")
    return torch.from_numpy(np.array(arr, copy=True))


def load_tensor(t: onnx.TensorProto, base_dir: Path | None) -> torch.Tensor | None:
    """The tensor's data, or None when it lives in an external file that is absent."""
    if is_external(t):
        if external_path(t, base_dir) is None:
            return None
        copy = onnx.TensorProto()
        copy.CopyFrom(t)
        load_external_data_for_tensor(copy, str(base_dir))
        copy.data_location = onnx.TensorProto.DEFAULT
        del copy.external_data[:]
        t = copy
    return array_to_torch(numpy_helper.to_array(t))


def init_seed(seed: int, name: str) -> int:
    """Stable per-tensor seed: crc32 of ``"{seed}:{name}"`` (not Python's salted hash)."""
    return zlib.crc32(f"{seed}:{name}".encode())


def random_init(
    name: str, shape: tuple[int, ...], dtype: torch.dtype, seed: int, role: str | None
) -> torch.Tensor:
    """Deterministic initial value of initializer ``name`` (see the module docstring)."""
    if not dtype.is_floating_point:
        return torch.zeros(shape, dtype=dtype)
    lname = name.lower()
    if role is None and len(shape) == 1:
        if lname.endswith(("weight", "scale", "gamma", "running_var")):
            role = ROLE_ONES
        elif lname.endswith(("bias", "beta", "running_mean")):
            role = ROLE_ZEROS
    if role == ROLE_ONES:
        return torch.ones(shape, dtype=dtype)
    if role == ROLE_ZEROS:
        return torch.zeros(shape, dtype=dtype)
    gen = torch.Generator().manual_seed(init_seed(seed, name))
    return (torch.randn(shape, generator=gen, dtype=torch.float32) * 0.02).to(dtype)


def roles(graph: onnx.GraphProto) -> dict[str, str]:
    """Initializer name -> ``"ones"``/``"zeros"`` for normalisation parameters and stats."""
    out: dict[str, str] = {}
    for node in graph.node:
        if node.op_type not in NORM_OPS:
            continue
        ins = list(node.input)
        for i, name in enumerate(ins):
            if not name or i == 0:
                continue
            if i == 1 or (node.op_type == "BatchNormalization" and i == 4):
                out.setdefault(name, ROLE_ONES)
            elif i in (2, 3):
                out.setdefault(name, ROLE_ZEROS)
    return out
