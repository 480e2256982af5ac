"""The signature of an operator: what it computes on which shapes, as one stable string.

Equal signatures mean equal work, wherever the operator sits and whatever its tensors are
called, so a calibration profile (`cost.profile`) measures each signature once and the
roofline (`cost.roofline`) looks measured times up by it.
"""

from __future__ import annotations

import numpy as np
import onnx

from cost.tensor import TensorInfo

#: Constant inputs up to this many elements have their values in the signature.
SIGNATURE_VALUE_ELEMENTS = 16


def op_signature(
    op_type: str,
    domain: str,
    inputs: tuple[TensorInfo | None, ...],
    outputs: tuple[TensorInfo, ...],
    attrs: dict,
    roles: tuple[str, ...],
    constants: dict[str, np.ndarray] | None = None,
) -> str:
    """A stable string naming what an operator computes: equal signatures, equal work.

    `op|domain|inputs|outputs|attributes`, e.g.
    `Gemm||float[8,64]g,float[128,64]w,float[128]w|float[8,128]|alpha=1.0;transB=1`.
    Each input is `dtype[shape]` and a role: `w` a parameter (or a view of one), `g` an
    activation that carries a gradient in training, `n` data without one (graph inputs,
    integers), `k` a constant (its values follow as `=[...]` up to
    `SIGNATURE_VALUE_ELEMENTS` elements); a missing optional input is `-`. Attributes are
    sorted by name. Tensor names and node names are left out, so identical operators in
    different places (or models) share a signature.
    """
    constants = constants or {}
    ins = []
    for info, role in zip(inputs, roles, strict=True):
        if info is None or role == "-":
            ins.append("-")
            continue
        text = _tensor_text(info) + role
        value = constants.get(info.name) if role == "k" else None
        if value is not None and np.size(value) <= SIGNATURE_VALUE_ELEMENTS:
            text += "=" + _value_text(np.asarray(value).reshape(-1).tolist())
        ins.append(text)
    outs = ",".join(_tensor_text(o) for o in outputs)
    attr_text = ";".join(f"{k}={_value_text(attrs[k])}" for k in sorted(attrs))
    return f"{op_type}|{domain}|{','.join(ins)}|{outs}|{attr_text}"


def _tensor_text(info: TensorInfo) -> str:
    try:
        dtype = onnx.TensorProto.DataType.Name(info.dtype).lower()
    except ValueError:
        dtype = f"dtype{info.dtype}"
    shape = "?" if info.shape is None else ",".join(str(d) for d in info.shape)
    return f"{dtype}[{shape}]"


def _value_text(value) -> str:
    if isinstance(value, TensorInfo):
        return _tensor_text(value)
    if isinstance(value, list | tuple):
        return "[" + ",".join(_value_text(v) for v in value) + "]"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return str(value)
