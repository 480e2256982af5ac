"""Float initializers that are constants the exporter folded, not weights to train.

Exporters bake what a model computes from no input (a causal mask from
`torch.tril(torch.ones(...))`, rotary embeddings' cos/sin tables, position ids) into
float initializers beside the parameters. Counted as parameters they cost memory and
optimizer state, and trained they drift (a mask's gradient is not zero). The evidence
used, strongest first:

1. **The exporter's word.** The dynamo exporter without its optimizer records torch.export's
   kind of every initializer (`InputSpec.kind`: PARAMETER, BUFFER, CONSTANT_TENSOR);
   the last two are never trained (`onnx_io.UNTRAINED_KINDS`, read in `load`).
2. **Provenance: the name.** Parameters keep torch's dotted names (`blocks.0.ln1.weight`)
   in both exporters; what the exporters create is named by them: TorchScript `onnx::Mul_12`
   or `/m/Constant_3_output_0`, onnxscript's folder `val_12` / `_val_12` or the torch.fx
   node that computed it (`cat_1`, `tril`), lifted tensors `c_lifted_tensor_0` /
   `_tensor_constant0` (`ANONYMOUS`, or no dot at all, or a dotted path whose last part
   is not `weight` or `bias`: `m.transformer.h.1.attn.where`). A folded *weight* (a
   `Transpose(W)` folded into `onnx::MatMul_9` or `val_9`) and a module's own odd-named
   parameter (timm's `cls_token`, `blocks.0.ls1.gamma`) are named so too, so the name
   alone decides nothing; it only rules out `*.weight` / `*.bias` (an embedding with a
   zero padding row would otherwise look like a table).
3. **The values**, for an anonymous initializer whose data is present: a **mask** holds
   only {0, 1}, or only 0 and values <= -1e4 (additive masks use -inf or the dtype's
   minimum); a **position table** has two or more dimensions and a first row (position 0)
   of all zeros or all ones (sin(0) = 0, cos(0) = 1, `arange` starts at 0). A trained or
   randomly initialised weight has neither; a tensor of one repeated value (a zero-init
   weight folded by the exporter) is neither either. Absent data (a graph-only model): no
   values, so anonymous initializers stay weights.

`folded_constants` returns {name: reason}; `load` treats them as it treats torch.export's
buffers and constants (memory, never gradients or optimizer state), and `export` writes
that kind into the stage files so that the runner never makes them `nn.Parameter`s.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from cost.tensor import FLOAT_DTYPES
from planner.graph.onnx_io import external_data_location

#: Names the exporters give to tensors they create (module docstring, point 2).
ANONYMOUS = re.compile(
    r"^(onnx::|/|val_\d|_val_\d|\d+$|c_lifted_tensor|_?lifted_tensor|_?tensor_constant|"
    r"const_fold|_?frozen_param|Constant_\d|constant_\d)"
)
#: Additive masks use -inf or a very negative number (the dtype's minimum, -1e4, -1e9).
MASK_NEGATIVE = -1e4
#: Values are read for tensors up to this many elements (a 4096 x 4096 mask is 16.8 M).
MAX_ELEMENTS = 1 << 25


#: The attribute names torch modules give their parameters, which folded values never get.
PARAMETER_LEAVES = frozenset({"weight", "bias"})


def is_anonymous(name: str) -> bool:
    """Whether an exporter, not a module's parameter, may have named this tensor: an
    exporter's pattern, no module path, or a last component that is not `weight` or
    `bias` (dynamo names a folded value after the torch.fx node that computed it, under
    its module's path: `m.transformer.h.1.attn.where`)."""
    leaf = name.rsplit(".", 1)[-1]
    return bool(ANONYMOUS.match(name)) or "." not in name or leaf not in PARAMETER_LEAVES


def folded_constants(initializers, folder: Path) -> dict[str, str]:
    """Anonymous float initializers whose values show a mask or a position table
    (module docstring), with the reason for each."""
    found: dict[str, str] = {}
    for t in initializers:
        if t.data_type not in FLOAT_DTYPES or len(t.dims) == 0 or not is_anonymous(t.name):
            continue
        values = _values(t, folder)
        if values is None:
            continue
        reason = constant_kind(values)
        if reason:
            found[t.name] = reason
    return found


def constant_kind(values: np.ndarray) -> str | None:
    """'mask' or 'position table' when the values show one, else None."""
    if values.size < 2:
        return None
    v = values.astype(np.float64, copy=False)
    if (v == v.flat[0]).all():
        return None  # one repeated value: a zero- or one-initialised weight looks so too
    if np.isin(v, (0.0, 1.0)).all():
        return "mask"  # {0, 1}: a multiplicative or boolean-as-float mask
    if (v == 0).any() and ((v == 0) | (v <= MASK_NEGATIVE)).all() and (v < 0).any():
        return "mask"  # additive: 0 where attended, -inf (or very negative) elsewhere
    if v.ndim >= 2 and v.shape[-2] >= 2:
        first = np.take(v, 0, axis=-2)
        if first.size >= 2 and ((first == 0).all() or (first == 1).all()):
            return "position table"  # sin / cos / arange at position 0
    return None


def _values(t: onnx.TensorProto, folder: Path) -> np.ndarray | None:
    """The tensor's values when they are inline, or in a present external file."""
    count = int(np.prod(list(t.dims))) if len(t.dims) else 1
    if count > MAX_ELEMENTS:
        return None
    location = external_data_location(t)
    if location is None:
        try:
            return numpy_helper.to_array(t)
        except (ValueError, TypeError):
            return None
    path = folder / location
    if not path.is_file():
        return None
    entries = {e.key: e.value for e in t.external_data}
    try:
        offset = int(entries.get("offset", "0"))
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.data_type)
        with path.open("rb") as handle:
            handle.seek(offset)
            data = handle.read(count * np.dtype(dtype).itemsize)
        return np.frombuffer(data, dtype=dtype).reshape(tuple(t.dims))
    except (ValueError, OSError, TypeError):
        return None
