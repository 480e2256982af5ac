"""ONNX op handlers: one function per operator family, emitting torch calls.

A handler receives a :class:`~runners.convert.core.NodeCtx` and returns the value of
the node's output (or a list, one per output). It prefers plain torch calls with static
arguments (readable ``GraphModule.code``) and falls back to the run-time helpers of
:mod:`runners.convert.functional` when shapes, axes or pads are only known at run time
or when ONNX semantics need more than one torch op.

Handlers live in one module per operator family: :mod:`.elementwise` (arithmetic, logic,
unary math, activations, Clip, Where, Cast, Dropout), :mod:`.linalg` (MatMul, Gemm,
Einsum), :mod:`.norm` (Softmax family, normalization), :mod:`.spatial` (conv, pools),
:mod:`.reductions` (Reduce*, ArgMax/ArgMin, CumSum, TopK), :mod:`.indexing`
(gather/scatter, OneHot, NonZero, Trilu), :mod:`.shapes` (Shape, Reshape, Slice...),
:mod:`.constants` (Constant, ConstantOfShape, Range), :mod:`.padding` (Pad) and
:mod:`.resampling` (Resize, Upsample), :mod:`.sequences` (SplitToSequence, SequenceAt),
:mod:`.collectives` (the `pipeplan` domain's AllReduce and CopyToGroup). :mod:`.registry` holds ``HANDLERS`` and the
``@op`` decorator; importing this package imports every family, which registers them.
"""

from runners.convert.ops import (  # noqa: F401  (imported to register their handlers)
    collectives,
    constants,
    elementwise,
    indexing,
    linalg,
    norm,
    padding,
    reductions,
    resampling,
    sequences,
    shapes,
    spatial,
)
from runners.convert.ops.registry import HANDLERS, op

__all__ = ["HANDLERS", "op"]
