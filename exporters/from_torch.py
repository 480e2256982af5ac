"""ONNX from a torch module, written the way pipeplan plans and trains it best.

Two recipes (README, "Exporting a model for pipeplan"):

- `export_for_training`: `torch.onnx.export` with `dynamo=True, optimize=False` (the
  optimizer folds and merges initializers: weights with equal values become one, weight
  transposes are baked in) or, with `dynamo=False`, `do_constant_folding=False` (the
  TorchScript path folds `Transpose(W)` into new initializers that no longer match the
  module's parameters). pipeplan separates what either exporter merges anyway
  (`planner.graph.aliases`), so default exports plan too; these settings keep the graph
  closest to the module.
- `export_weightless`: the same dynamo export of a module built on the ``meta`` device
  (``with torch.device("meta"): model = Model(config)``): torch.export traces it with
  fake tensors, no weight is ever materialised, and every initializer is written as an
  external-data reference to a data file that is never written. pipeplan's planner needs
  only shapes and dtypes, so an 8B-parameter Llama is inspected and planned from a graph
  of a few hundred MB; `export` makes stage files that reference absent weights and the
  runner initialises them at random (manifest `weights: absent`).

This module imports torch: the planning commands never import it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cost.errors import PipeplanError
from cost.files import check_output_file


def export_for_training(
    module: Any,
    args: Sequence[Any],
    path: str | os.PathLike[str],
    *,
    dynamo: bool = True,
    opset: int | None = None,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    batch_range: tuple[int, int] | None = None,
) -> Path:
    """Export `module(*args)` to `path` without the exporters' constant folding and
    initializer merging (module doc); returns the path.

    `batch_range=(lo, hi)` makes dimension 0 of every input a symbolic ``batch``
    (bind it with `--batch`). `opset`: the exporter's default when None (17 for the
    TorchScript path). Written to a temporary file in the same folder, then renamed."""
    import torch

    target = Path(path)
    check_output_file(target, "path")
    module.eval()
    inputs = list(input_names) if input_names else [f"input_{i}" for i in range(len(args))]
    outputs = list(output_names) if output_names else None
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        if dynamo:
            dynamic = None
            if batch_range:
                batch = torch.export.Dim("batch", min=batch_range[0], max=batch_range[1])
                dynamic = tuple({0: batch} for _ in args)
            torch.onnx.export(
                module,
                tuple(args),
                tmp,
                dynamo=True,
                optimize=False,
                opset_version=opset,
                input_names=inputs,
                output_names=outputs,
                dynamic_shapes=dynamic,
            )
        else:
            torch.onnx.export(
                module,
                tuple(args),
                tmp,
                dynamo=False,
                do_constant_folding=False,
                opset_version=opset or 17,
                input_names=inputs,
                output_names=outputs,
                dynamic_axes={name: {0: "batch"} for name in inputs} if batch_range else None,
            )
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target


def export_weightless(
    module: Any,
    args: Sequence[Any],
    path: str | os.PathLike[str],
    *,
    opset: int = 18,
    input_names: Sequence[str] | None = None,
) -> Path:
    """Export a module whose parameters and buffers live on the ``meta`` device (or any
    module: its weights are not written) as a graph-only ONNX model.

    Every initializer becomes an external-data reference into ``<name>.data`` beside
    `path` (offsets as if the file were written, 64-byte aligned); the file itself is not
    written. `args` may be real tensors (small integer inputs such as token ids) or meta
    tensors. Returns the path; the model is written to a temporary file and renamed."""
    import onnx_ir as ir
    import torch

    target = Path(path)
    check_output_file(target, "path")
    module.eval()
    program = torch.onnx.export(
        module,
        tuple(args),
        dynamo=True,
        optimize=False,
        opset_version=opset,
        input_names=list(input_names) if input_names else None,
    )
    model = program.model
    data_name = f"{target.name}.data"
    offset = 0
    for name, value in model.graph.initializers.items():
        tensor = value.const_value
        if tensor is None:
            continue
        nbytes = _nbytes(tensor)
        value.const_value = ir.ExternalTensor(
            data_name,
            offset,
            nbytes,
            tensor.dtype,
            shape=ir.Shape(tensor.shape),
            name=name,
            base_dir=str(target.parent),
        )
        offset += (nbytes + 63) // 64 * 64
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        ir.save(model, tmp)
        os.replace(tmp, target)
    except (OSError, ValueError) as exc:
        raise PipeplanError(f"could not write {target}: {exc}") from exc
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target


def _nbytes(tensor: Any) -> int:
    """Bytes of a tensor from its dtype and shape (never its data: it may be fake)."""
    count = 1
    for dim in tensor.shape:
        count *= int(dim)
    itemsize = tensor.dtype.itemsize
    return int(count * itemsize)
