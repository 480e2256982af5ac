"""Helpers for tests: export real torch modules with `torch.onnx.export`."""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx


def randomize_(module, seed: int = 0):
    """Give every parameter and buffer distinct random values, in place.

    The TorchScript exporter merges initializers with identical values (freshly built
    LayerNorm/BatchNorm weights are all ones), which would look like tied weights;
    trained models never have that, so tests randomise before exporting.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            if tensor.is_floating_point():
                tensor.copy_(torch.rand(tensor.shape, generator=gen) * 0.5 + 0.5)
    return module


def export(
    module,
    args: tuple,
    path: Path,
    *,
    dynamo: bool = False,
    opset: int = 17,
    dynamic_batch: bool = True,
    input_names=None,
    output_names=None,
    optimize: bool = True,
) -> Path:
    """Export `module` in eval mode; the first dimension of each input is named `batch`."""
    import torch

    module = randomize_(module).eval()
    input_names = input_names or [f"in{i}" for i in range(len(args))]
    output_names = output_names or ["out"]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if dynamo:
            shapes = tuple({0: torch.export.Dim("batch")} for _ in args) if dynamic_batch else None
            torch.onnx.export(
                module,
                args,
                str(path),
                dynamo=True,
                opset_version=opset,
                input_names=input_names,
                output_names=output_names,
                dynamic_shapes=shapes,
                verbose=False,
                optimize=optimize,
            )
        else:
            axes = (
                {n: {0: "batch"} for n in [*input_names, *output_names]} if dynamic_batch else None
            )
            torch.onnx.export(
                module,
                args,
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=input_names,
                output_names=output_names,
                dynamic_axes=axes,
            )
    onnx.checker.check_model(str(path))
    return path
