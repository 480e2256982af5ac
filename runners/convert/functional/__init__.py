"""Runtime helpers called from converted graphs (``call_function`` targets).

Each helper implements one ONNX operator's semantics where no single torch op matches
(ONNX ``0`` entries in Reshape, negative Gather indices, asymmetric pads, Resize
coordinate modes...). They are plain functions of tensors and Python values, built from
differentiable torch ops, so autograd sees through them. Arguments that ONNX gives as
tensors but that must be known to shape the result (shapes, axes, pads) arrive as Python
lists when the converter knew them, or as int64 tensors computed at run time.

The helpers live in one module per operator family (:mod:`.elementwise`, :mod:`.norm`,
:mod:`.padding`, :mod:`.spatial`, :mod:`.reductions`, :mod:`.shapes`, :mod:`.indexing`,
:mod:`.resampling`; argument coercion in :mod:`.common`) and are re-exported here, so op
handlers call them as ``R.<name>`` (``from runners.convert import functional as R``).

torch.fx refers to a call target by its ``__module__`` and ``__qualname__``: generated
code names it ``runners_convert_functional_shapes_reshape``, and pickling a converted
``GraphModule`` imports it back from ``runners.convert.functional.shapes``. A helper must
therefore stay a module-level function of the module that defines it (no lambdas, no
closures, no renaming on re-export).
"""

from runners.convert.functional.elementwise import (
    clip,
    div,
    dropout,
    hard_sigmoid,
    pow_,
    prelu,
    selu,
)
from runners.convert.functional.indexing import (
    gather,
    gather_elements,
    gather_nd,
    non_zero,
    one_hot,
    scatter_elements,
    scatter_nd,
    trilu,
)
from runners.convert.functional.norm import (
    batch_norm,
    batch_norm_training,
    group_norm,
    hardmax,
    layer_norm,
    lp_normalization,
    mean_variance_normalization,
    softmax_2d,
)
from runners.convert.functional.padding import pad
from runners.convert.functional.reductions import arg_extreme, cumsum, reduce, topk
from runners.convert.functional.resampling import resize
from runners.convert.functional.shapes import (
    constant_of_shape,
    expand,
    flatten,
    range_,
    reshape,
    shape,
    size,
    slice_,
    split,
    squeeze,
    tile,
    transpose,
    unsqueeze,
)
from runners.convert.functional.spatial import (
    avg_pool,
    conv,
    conv_transpose,
    global_pool,
    lp_pool,
    max_pool,
)

__all__ = [
    "arg_extreme",
    "avg_pool",
    "batch_norm",
    "batch_norm_training",
    "clip",
    "constant_of_shape",
    "conv",
    "conv_transpose",
    "cumsum",
    "div",
    "dropout",
    "expand",
    "flatten",
    "gather",
    "gather_elements",
    "gather_nd",
    "global_pool",
    "group_norm",
    "hard_sigmoid",
    "hardmax",
    "layer_norm",
    "lp_normalization",
    "lp_pool",
    "max_pool",
    "mean_variance_normalization",
    "non_zero",
    "one_hot",
    "pad",
    "pow_",
    "prelu",
    "range_",
    "reduce",
    "reshape",
    "resize",
    "scatter_elements",
    "scatter_nd",
    "selu",
    "shape",
    "size",
    "slice_",
    "softmax_2d",
    "split",
    "squeeze",
    "tile",
    "topk",
    "transpose",
    "trilu",
    "unsqueeze",
]
