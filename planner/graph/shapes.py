"""Static shapes for every tensor: bind symbolic dimensions, infer, fall back.

1. `bind_input_shapes` fixes every graph input's shape from the user's bindings
   (`--dim NAME=VALUE`, `--batch N`, `--input-shape NAME=AxBxC`) and refuses, naming the
   dimension and the input, anything left symbolic or unknown.
2. `infer_shapes` runs ONNX shape inference with data propagation (so Shape -> Gather ->
   Concat -> Reshape chains resolve), then `shape_fallback.fallback_shapes` fills what it
   left unknown, by operator rules over the folded constants.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import onnx

from cost.errors import PipeplanError
from cost.tensor import TensorInfo


@dataclass(frozen=True)
class ShapeBindings:
    """How the user fixes a graph's free dimensions.

    * `dims`: symbolic dimension name -> value, applied wherever the name appears.
    * `batch`: the first dimension of every graph input (the micro-batch size).
    * `input_shapes`: graph input name -> full shape, for unnamed or `-1` dimensions.
    """

    dims: Mapping[str, int] = field(default_factory=dict)
    batch: int | None = None
    input_shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)

    def as_dict(self) -> dict:
        """As plans and reports record them: `{dims, batch, input_shapes}`."""
        return {
            "dims": dict(self.dims),
            "batch": self.batch,
            "input_shapes": {k: list(v) for k, v in self.input_shapes.items()},
        }

    @classmethod
    def from_dict(cls, data: dict | None) -> ShapeBindings:
        """The inverse of `as_dict` (missing keys: unbound)."""
        data = data or {}
        return cls(
            dims=dict(data.get("dims") or {}),
            batch=data.get("batch"),
            input_shapes={k: tuple(v) for k, v in (data.get("input_shapes") or {}).items()},
        )


def parse_dim_binding(text: str) -> tuple[str, int]:
    """'batch=8' -> ('batch', 8)."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise PipeplanError(f"bad --dim '{text}': expected NAME=VALUE, e.g. batch=8")
    return name.strip(), _positive_int(value, f"--dim {text}")


def parse_input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """'x=1x3x48x320' -> ('x', (1, 3, 48, 320)); ',' also separates dimensions."""
    name, sep, dims = text.rpartition("=")
    if not sep or not name.strip() or not dims.strip():
        raise PipeplanError(f"bad --input-shape '{text}': expected NAME=AxBxC, e.g. x=1x3x224x224")
    parts = dims.replace(",", "x").split("x")
    return name.strip(), tuple(_positive_int(d, f"--input-shape {text}") for d in parts)


def _positive_int(value: str, where: str) -> int:
    try:
        number = int(value.strip())
    except ValueError:
        raise PipeplanError(f"bad {where}: '{value}' is not an integer") from None
    if number <= 0:
        raise PipeplanError(f"bad {where}: dimensions must be positive (got {number})")
    return number


def real_graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs that are fed at run time (old exporters list initializers as inputs)."""
    initializers = {t.name for t in model.graph.initializer}
    return [vi for vi in model.graph.input if vi.name not in initializers]


def bind_input_shapes(model: onnx.ModelProto, bindings: ShapeBindings) -> dict[str, int]:
    """Fix every graph input's shape in place; return the symbol -> value map used.

    Symbols bound on inputs are also substituted in outputs and value_info, so that shape
    inference sees one consistent graph.
    """
    inputs = real_graph_inputs(model)
    names = {vi.name for vi in inputs}
    for name in bindings.input_shapes:
        if name not in names:
            raise PipeplanError(
                f"--input-shape names '{name}', which is not a graph input "
                f"(inputs: {', '.join(sorted(names)) or 'none'})"
            )
    _check_dims_and_batch(model, inputs, bindings)
    symbols: dict[str, int] = dict(bindings.dims)
    # First pass: learn symbol values from whole-input shapes and --batch.
    for vi in inputs:
        dims = vi.type.tensor_type.shape.dim
        given = bindings.input_shapes.get(vi.name)
        if given is not None:
            if vi.type.tensor_type.HasField("shape") and len(dims) != len(given):
                raise PipeplanError(
                    f"--input-shape {vi.name}: rank {len(given)} given, "
                    f"but the input has rank {len(dims)}"
                )
            for d, value in zip(dims, given, strict=False):
                if d.HasField("dim_value") and d.dim_value > 0 and d.dim_value != value:
                    raise PipeplanError(
                        f"--input-shape {vi.name}: dimension {value} conflicts with the "
                        f"model's fixed {d.dim_value}"
                    )
                if d.HasField("dim_param") and d.dim_param:
                    symbols.setdefault(d.dim_param, value)
        elif bindings.batch is not None and len(dims) > 0:
            first = dims[0]
            if first.HasField("dim_param") and first.dim_param:
                symbols.setdefault(first.dim_param, bindings.batch)
    # Second pass: write concrete shapes.
    for vi in inputs:
        if not vi.type.HasField("tensor_type"):
            raise PipeplanError(
                f"graph input '{vi.name}' is not a tensor (sequence/map inputs are not supported)"
            )
        tensor_type = vi.type.tensor_type
        given = bindings.input_shapes.get(vi.name)
        if given is not None:
            tensor_type.ClearField("shape")
            for value in given:
                tensor_type.shape.dim.add().dim_value = value
            continue
        if not tensor_type.HasField("shape"):
            raise PipeplanError(
                f"graph input '{vi.name}' has no shape: pass --input-shape {vi.name}=AxBxC"
            )
        for axis, d in enumerate(tensor_type.shape.dim):
            if d.HasField("dim_value") and d.dim_value > 0:
                continue
            if d.HasField("dim_param") and d.dim_param in symbols:
                d.dim_value = symbols[d.dim_param]
                continue
            if axis == 0 and bindings.batch is not None:
                d.dim_value = bindings.batch
                continue
            if d.HasField("dim_param") and d.dim_param and d.dim_param not in ("?", "-1"):
                raise PipeplanError(
                    f"unbound symbolic dimension '{d.dim_param}' (axis {axis} of input "
                    f"'{vi.name}'): pass --dim {d.dim_param}=N"
                    + (" or --batch N" if axis == 0 else "")
                )
            raise PipeplanError(
                f"unknown dimension at axis {axis} of input '{vi.name}': pass "
                f"--input-shape {vi.name}=AxBxC" + (" or --batch N" if axis == 0 else "")
            )
    for vi in list(model.graph.output) + list(model.graph.value_info):
        tensor_type = vi.type.tensor_type
        for d in tensor_type.shape.dim:
            if d.HasField("dim_param") and d.dim_param in symbols:
                d.dim_value = symbols[d.dim_param]
    return symbols


def _check_dims_and_batch(model: onnx.ModelProto, inputs, bindings: ShapeBindings) -> None:
    """Refuse bindings that would silently do nothing: a `--dim` no tensor of the graph
    names, and a `--batch` that differs from a model's fixed batch."""
    named = {
        d.dim_param
        for vi in (*inputs, *model.graph.output, *model.graph.value_info)
        for d in vi.type.tensor_type.shape.dim
        if d.HasField("dim_param") and d.dim_param
    }
    for name in bindings.dims:
        if name not in named:
            raise PipeplanError(
                f"--dim {name}: no dimension of the model is named '{name}' (named: "
                f"{', '.join(sorted(named)) or 'none; the model has only fixed dimensions'})"
            )
    if bindings.batch is None:
        return
    firsts = [
        (vi.name, vi.type.tensor_type.shape.dim[0])
        for vi in inputs
        if vi.name not in bindings.input_shapes and len(vi.type.tensor_type.shape.dim) > 0
    ]
    free = [n for n, d in firsts if not (d.HasField("dim_value") and d.dim_value > 0)]
    fixed = [(n, d.dim_value) for n, d in firsts if d.HasField("dim_value") and d.dim_value > 0]
    if not free and any(v != bindings.batch for _, v in fixed):
        name, value = next((n, v) for n, v in fixed if v != bindings.batch)
        raise PipeplanError(
            f"--batch {bindings.batch}: the model's batch is fixed at {value} (input "
            f"'{name}'); export it with a dynamic batch dimension, or leave out --batch"
        )


def infer_shapes(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """ONNX shape inference with data propagation; warnings instead of failures."""
    warnings: list[str] = []
    try:
        inferred = onnx.shape_inference.infer_shapes(
            model, check_type=False, strict_mode=False, data_prop=True
        )
    except Exception as exc:  # inference errors on exotic graphs must not stop planning
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        warnings.append(f"ONNX shape inference failed ({first}); using pipeplan's fallback only")
        inferred = model
    return inferred, warnings


def tensor_info_from_value_info(vi: onnx.ValueInfoProto) -> TensorInfo | None:
    """A `TensorInfo` when the value has a fully static shape, else None."""
    if not vi.type.HasField("tensor_type"):
        return None
    tensor_type = vi.type.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    dims: list[int] = []
    for d in tensor_type.shape.dim:
        if not d.HasField("dim_value") or d.dim_value < 0:
            return None
        dims.append(d.dim_value)
    return TensorInfo(vi.name, tuple(dims), tensor_type.elem_type)
