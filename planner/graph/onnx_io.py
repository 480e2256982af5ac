"""Reading ONNX files safely: no weight data, no escaping external-data paths.

Planning never needs weight values, only their shapes, so models are loaded with
`onnx.load(path, load_external_data=False)`: a 1.6-billion-parameter model whose weight
file is missing or huge still loads in a fraction of a second. External-data locations are
checked so that none points outside the model's folder (an ONNX file is untrusted input,
and the exporter later copies weights next to the stage files).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from cost.errors import PipeplanError
from cost.tensor import TensorInfo


def load_model_proto(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Load an ONNX model's graph (never its external weight data).

    Raises `PipeplanError` with one line for a missing file, a directory, a file that is
    not ONNX or is truncated, and for external-data paths that leave the model's folder.
    """
    p = Path(path)
    if not p.exists():
        raise PipeplanError(f"model file not found: {p}")
    if p.is_dir():
        raise PipeplanError(f"model path is a directory, not an ONNX file: {p}")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError) as exc:
        raise PipeplanError(f"not a readable ONNX model: {p} ({_first_line(exc)})") from None
    except Exception as exc:  # protobuf raises a zoo of types on garbage input
        raise PipeplanError(f"not a readable ONNX model: {p} ({_first_line(exc)})") from None
    if not model.HasField("graph") or (len(model.graph.node) == 0 and not model.graph.output):
        raise PipeplanError(f"not an ONNX model (no graph, or empty): {p}")
    if model.ir_version == 0:
        raise PipeplanError(f"not an ONNX model (no IR version; truncated or another format?): {p}")
    check_external_data_paths(model, p.parent)
    return model


def external_data_location(tensor: onnx.TensorProto) -> str | None:
    """The `location` of a tensor stored as external data, or None when it is inline."""
    if tensor.data_location != onnx.TensorProto.EXTERNAL:
        return None
    for entry in tensor.external_data:
        if entry.key == "location":
            return entry.value
    return ""


def _external_tensors(model: onnx.ModelProto):
    yield from model.graph.initializer
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    yield attr.t


def check_external_data_paths(model: onnx.ModelProto, model_dir: Path) -> None:
    """Refuse external-data locations that are absolute or resolve outside `model_dir`."""
    root = model_dir.resolve()
    for tensor in _external_tensors(model):
        location = external_data_location(tensor)
        if location is None:
            continue
        if not location:
            raise PipeplanError(f"tensor '{tensor.name}' is external but names no location")
        if os.path.isabs(location) or location.startswith(("/", "\\")):
            raise PipeplanError(
                f"external data of tensor '{tensor.name}' has an absolute path "
                f"'{location}': refused (must stay inside the model's folder)"
            )
        target = (root / location).resolve()
        if target != root and root not in target.parents:
            raise PipeplanError(
                f"external data of tensor '{tensor.name}' points outside the model's "
                f"folder ('{location}'): refused"
            )
        _check_external_numbers(tensor)


def _check_external_numbers(tensor: onnx.TensorProto) -> None:
    """`offset` and `length` of external data are non-negative integers (the ONNX spec
    stores them as strings: '1024000.0' is not one), and `length` fits the tensor."""
    entries = {e.key: e.value for e in tensor.external_data}
    for key in ("offset", "length"):
        if key in entries and not entries[key].isdigit():
            raise PipeplanError(
                f"external data of tensor '{tensor.name}' has {key} '{entries[key]}': "
                "not a non-negative integer"
            )
    if "length" in entries and tensor.data_type in _ITEMSIZE:
        needed = int(np.prod(list(tensor.dims))) * _ITEMSIZE[tensor.data_type]
        if int(entries["length"]) < needed:
            raise PipeplanError(
                f"external data of tensor '{tensor.name}' has length {entries['length']}, "
                f"but its shape {list(tensor.dims)} needs {needed} bytes"
            )


#: bytes per element of the fixed-size ONNX element types
_ITEMSIZE = {
    onnx.TensorProto.FLOAT: 4, onnx.TensorProto.DOUBLE: 8, onnx.TensorProto.FLOAT16: 2,
    onnx.TensorProto.BFLOAT16: 2, onnx.TensorProto.INT64: 8, onnx.TensorProto.INT32: 4,
    onnx.TensorProto.INT16: 2, onnx.TensorProto.INT8: 1, onnx.TensorProto.UINT8: 1,
    onnx.TensorProto.BOOL: 1,
}  # fmt: skip


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def decode_attributes(node: onnx.NodeProto) -> dict:
    """A node's attributes as Python values: strings decoded, tensors as `TensorInfo`
    (their shape, never their data), subgraphs as the marker `'<subgraph>'`."""
    attrs = {}
    for attr in node.attribute:
        if attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
            attrs[attr.name] = "<subgraph>"
        elif attr.type == onnx.AttributeProto.TENSOR:
            attrs[attr.name] = TensorInfo(attr.name, tuple(attr.t.dims), attr.t.data_type)
        else:
            value = onnx.helper.get_attribute_value(attr)
            attrs[attr.name] = value.decode() if isinstance(value, bytes) else value
    return attrs


def constant_value(node: onnx.NodeProto):
    """The tensor a Constant node holds (a TensorProto), or a numpy value for the
    `value_float(s)` (float32, as the spec says) and `value_int(s)` (int64) forms; None
    for other forms."""
    for attr in node.attribute:
        if attr.name == "value":
            return attr.t
        if attr.name in ("value_float", "value_floats"):
            return np.asarray(onnx.helper.get_attribute_value(attr), dtype=np.float32)
        if attr.name in ("value_int", "value_ints"):
            return np.asarray(onnx.helper.get_attribute_value(attr), dtype=np.int64)
    return None


def np_to_onnx_dtype(array: np.ndarray) -> int:
    """The ONNX element type of a numpy array (float32 when it has none)."""
    try:
        return onnx.helper.np_dtype_to_tensor_dtype(array.dtype)
    except (KeyError, TypeError, ValueError):
        return onnx.TensorProto.FLOAT


def unique_node_names(nodes) -> list[str]:
    """Node names as the planner uses them: the ONNX name, or `<op>_<index>`, made unique."""
    seen: dict[str, int] = {}
    names = []
    for i, node in enumerate(nodes):
        base = node.name or f"{node.op_type}_{i}"
        name = base
        if name in seen:
            seen[base] += 1
            name = f"{base}__{seen[base]}"
        seen.setdefault(name, 0)
        names.append(name)
    return names


#: What torch.export said each graph input was (dynamo exporter): PARAMETER, BUFFER,
#: CONSTANT_TENSOR, USER_INPUT...; written on graph inputs and on initializers' value_info.
TORCH_INPUT_KIND = "pkg.torch.export.graph_signature.InputSpec.kind"
#: Kinds that are never trained (no gradient, no optimizer state).
UNTRAINED_KINDS = frozenset({"BUFFER", "CONSTANT_TENSOR"})


def torch_input_kinds(graph: onnx.GraphProto) -> dict[str, str]:
    """Tensor name -> torch.export's kind of it, where the exporter recorded one."""
    kinds = {}
    for vi in (*graph.input, *graph.value_info):
        for prop in vi.metadata_props:
            if prop.key == TORCH_INPUT_KIND:
                kinds[vi.name] = prop.value
    return kinds


def untrained_tensors(graph: onnx.GraphProto) -> frozenset[str]:
    """Tensors torch.export recorded as buffers or constants: never trained (the planner
    and the runner both ask this one question)."""
    return frozenset(t for t, kind in torch_input_kinds(graph).items() if kind in UNTRAINED_KINDS)
