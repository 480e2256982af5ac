"""Convert an ONNX model (a whole model or one stage file) into a trainable torch module.

Public entry::

    gm = convert("stage0.onnx", seed=0, weights="auto")
    outputs = gm(*inputs)          # tensors in ONNX graph-input order -> tuple of outputs

The result is a ``torch.fx.GraphModule`` (readable ``gm.code``) built op by op from the
ONNX graph (opsets 11-21; see ``runners/convert/ops/`` for the operator handlers), with
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

Operators (``runners.convert.ops.HANDLERS``), attribute and input forms of opsets 11-21:
elementwise math/logic (Add Sub Mul Div Pow Mod, comparisons, And/Or/Xor/Not, Where,
Max/Min/Sum/Mean, Abs Neg Exp Log Sqrt Reciprocal Floor Ceil Round Sign IsNaN IsInf, trig),
activations (Relu LeakyRelu PRelu Elu Celu Selu Gelu Sigmoid HardSigmoid HardSwish Mish
Softplus Softsign ThresholdedRelu Clip Erf Tanh), Softmax/LogSoftmax/Hardmax (2-D
semantics before opset 13), MatMul Gemm Einsum, Conv/ConvTranspose (1-3-D, groups,
dilations, asymmetric and auto pads, output_shape), Max/Average/Lp/Global pools,
Batch/Layer/Group/Instance/Lp/MeanVariance normalisation, Reduce*, ArgMax/ArgMin, TopK,
CumSum, Gather/GatherElements/GatherND/ScatterND/ScatterElements/OneHot/NonZero, Shape,
Size, Reshape, Flatten, Squeeze, Unsqueeze, Transpose, Expand, Tile, Concat, Split,
Slice (negative steps), Cast/CastLike, Dropout, Identity, Constant, ConstantOfShape, Range,
Trilu, Pad (constant/reflect/edge/wrap, axes), Resize/Upsample (nearest and linear, all
coordinate modes but cubic). Anything else raises ``NotImplementedError("ONNX op X
(opset N) is not supported by pipeplan's converter")``.

Known gaps: control flow (If/Loop/Scan), sequences, strings, quantized and non-default
domain ops; MaxPool's Indices output; AveragePool dilations; Resize cubic/antialias;
GatherND batch_dims; a run-time Dropout training_mode. Gather from a 2-D parameter on
axis 0 is ``F.embedding`` (negative ids are not wrapped there). Shapes that are only known
at run time (a dynamic batch read by Shape) go through helpers that call ``.tolist()``.
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
