"""Inputs and targets for a run: seeded synthetic data, or the user's `.npz`.

Synthetic integer inputs (token ids) stay below the size of the table they index (read
from the stage models' Gather nodes); float inputs are standard normal. Targets: class
indices over the last output dimension when the output looks like logits (floating
point, last dimension >= 2), else standard-normal regression targets. Synthetic data is
one fixed global batch, the same every step (so a falling loss shows the pipeline learns);
every tensor is a function of (seed, micro-batch), so every rank and the single-process
reference draw the same data. Micro-batches are numbered over the global batch: with r
data-parallel replicas of m micro-batches, replica k runs micro-batches k m .. k m + m - 1. With `--data file.npz`, rows are taken in order, step after
step, wrapping around.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import onnx
import torch

from exporters.manifest import Manifest, TensorSpec

TORCH_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
    "int64": torch.int64,
    "int32": torch.int32,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}


def torch_dtype(name: str) -> torch.dtype:
    if name not in TORCH_DTYPES:
        raise ValueError(f"unsupported tensor type {name}")
    return TORCH_DTYPES[name]


def _generator(seed: int, *parts) -> torch.Generator:
    key = zlib.crc32(repr((seed, *parts)).encode())
    return torch.Generator().manual_seed(key)


def index_bounds(bundle: Path, manifest: Manifest) -> dict[str, int]:
    """For integer graph inputs used as Gather indices: the size of the indexed axis."""
    bounds: dict[str, int] = {}
    int_inputs = {t.name for t in manifest.graph_inputs if t.dtype.startswith(("int", "uint"))}
    for st in manifest.stages:
        if not int_inputs.intersection(t.name for t in st.inputs):
            continue
        model = onnx.load(str(bundle / st.file), load_external_data=False)
        dims = {t.name: list(t.dims) for t in model.graph.initializer}
        for node in model.graph.node:
            if node.op_type == "Gather" and len(node.input) > 1 and node.input[1] in int_inputs:
                axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
                if node.input[0] in dims:
                    size = dims[node.input[0]][axis]
                    bounds[node.input[1]] = min(bounds.get(node.input[1], size), size)
    return bounds


class DataSource:
    """Micro-batches of graph inputs and targets for (step, micro-batch)."""

    def __init__(self, manifest: Manifest, bundle: Path, seed: int = 0, npz: str | None = None):
        self.manifest = manifest
        self.seed = seed
        self.bounds = index_bounds(bundle, manifest)
        self.arrays = dict(np.load(npz)) if npz else None
        self.mb = manifest.microbatch_size
        #: micro-batches per step over all replicas (replica k runs k m .. k m + m - 1)
        self.per_step = manifest.microbatches * manifest.data_parallel

    def inputs(self, step: int, microbatch: int) -> dict[str, torch.Tensor]:
        out = {}
        for t in self.manifest.graph_inputs:
            out[t.name] = self._tensor(t, step, microbatch, t.name)
        return out

    def targets(self, output: TensorSpec, step: int, microbatch: int) -> torch.Tensor:
        if self.arrays is not None and "targets" in self.arrays:
            return self._slice(self.arrays["targets"], step, microbatch)
        shape = output.shape or []
        if is_classification(output):
            g = _generator(self.seed, "target", output.name, microbatch)
            return torch.randint(0, shape[-1], tuple(shape[:-1]), generator=g)
        g = _generator(self.seed, "target", output.name, microbatch)
        return torch.randn(tuple(shape), generator=g, dtype=torch_dtype(output.dtype))

    def _slice(self, array: np.ndarray, step: int, microbatch: int) -> torch.Tensor:
        index = (step * self.per_step + microbatch) * self.mb
        n = array.shape[0]
        rows = [(index + i) % n for i in range(self.mb)]
        return torch.from_numpy(np.ascontiguousarray(array[rows]))

    def _tensor(self, spec: TensorSpec, step: int, microbatch: int, name: str) -> torch.Tensor:
        if self.arrays is not None and name in self.arrays:
            return self._slice(self.arrays[name], step, microbatch).to(torch_dtype(spec.dtype))
        g = _generator(self.seed, "input", name, microbatch)
        shape = tuple(spec.shape or [])
        dtype = torch_dtype(spec.dtype)
        if dtype.is_floating_point:
            return torch.randn(shape, generator=g, dtype=torch.float32).to(dtype)
        if dtype == torch.bool:
            return torch.randint(0, 2, shape, generator=g).bool()
        high = self.bounds.get(name, 16)
        return torch.randint(0, max(high, 1), shape, generator=g, dtype=dtype)


def is_classification(output: TensorSpec) -> bool:
    return (
        output.dtype.startswith(("float", "bfloat"))
        and bool(output.shape)
        and len(output.shape) >= 2
        and output.shape[-1] >= 2
    )


def loss_of(output: torch.Tensor, target: torch.Tensor, classification: bool) -> torch.Tensor:
    """Cross-entropy over the last dimension for logits, mean squared error otherwise."""
    if classification:
        return torch.nn.functional.cross_entropy(
            output.reshape(-1, output.shape[-1]).float(), target.reshape(-1)
        )
    return torch.nn.functional.mse_loss(output.float(), target.float())
