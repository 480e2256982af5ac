"""Convert an ONNX model (a whole model or one stage file) into a trainable torch module.

Public entry::

    gm = convert("stage0.onnx", seed=0, weights="auto")
    outputs = gm(*inputs)          # tensors in ONNX graph-input order -> tuple of outputs

The result is a ``torch.fx.GraphModule`` (readable ``gm.code``) built op by op from the
ONNX graph (opsets 11-21; see ``runners/convert/ops.py`` for the operator table), with
these extra attributes:

* ``input_names`` / ``output_names``: ONNX graph inputs (initializers excluded) and
  outputs, in ``forward``'s argument / result order;
* ``param_names``: ONNX initializer name -> attribute path of its ``nn.Parameter``
  (``"params.<sanitized name>"``), for every trainable initializer;
* ``buffer_names``: ONNX initializer name -> buffer path (``"state.<name>"``) for the
  non-trainable initializers that the graph reads as tensors;
* ``opset``: the model's default-domain opset.

Which initializers become parameters: floating-point initializers of rank >= 1 read by
at least one op as data. Not parameters (buffers or folded constants instead): integer
and bool initializers, rank-0 floats (exporters' scalar constants such as ``sqrt(2)`` in
GELU), BatchNormalization running mean/variance, and floats read only as shapes, scales or
pads (Resize scales, Pad values...). Constant nodes and everything computed from
constants only are folded at conversion time (non-persistent buffers under ``consts``).

Weights (``weights="auto"``): inline data, or external data read next to the model file
(for a path argument). When the external data file is absent (a graph-only model), or with
``weights="random"``, parameters get a deterministic initialisation from
``torch.Generator().manual_seed(zlib.crc32(f"{seed}:{name}"))``: normal(0, 0.02), except
ones for normalisation scales and 1-D ``*weight``/``*scale``/``*gamma``, zeros for
normalisation biases and 1-D ``*bias``/``*beta`` (see ``runners/convert/weights.py``). The
same initializer name gets the same values in every stage file, so tied weights start
equal.
"""

from __future__ import annotations

import os

import onnx
import torch.fx

from runners.convert.core import Converter, OnnxGraphModule, load_model

__all__ = ["OnnxGraphModule", "convert"]


def convert(
    model: onnx.ModelProto | str | os.PathLike, *, seed: int = 0, weights: str = "auto"
) -> torch.fx.GraphModule:
    """Convert an ONNX model (proto or path) into a ``torch.fx.GraphModule``.

    ``weights``: ``"auto"`` (load what is present, seeded init for what is absent) or
    ``"random"`` (seeded init for every parameter; non-trainable initializers are still
    read). ``seed`` only matters for the seeded init.
    """
    proto, base_dir = load_model(model)
    return Converter(proto, base_dir, seed, weights).run()
