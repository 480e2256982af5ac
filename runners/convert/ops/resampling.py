"""Resize and the deprecated Upsample.

Upsample, and Resize before opset 11, take scales only, with asymmetric coordinates and
floor rounding for nearest; from opset 11 roi, scales and sizes are optional inputs and
coordinate_transformation_mode / nearest_mode attributes, from 18 axes and
keep_aspect_ratio_policy too. The run-time ``resize`` does the work (nearest and linear);
cubic mode and antialias are not supported.
"""

from __future__ import annotations

from runners.convert import functional as R
from runners.convert.core import NodeCtx
from runners.convert.ops.registry import op


def _floats_or_val(c: NodeCtx, i: int):
    v = c.const(i)
    if v is not None:
        return [float(t) for t in v.reshape(-1).tolist()]
    return c.val(i)


@op("Resize", "Upsample")
def _resize(c: NodeCtx):
    x = c.val(0)
    mode = c.attr("mode", "nearest")
    if c.op == "Upsample" or c.opset < 11:
        scales = c.attr("scales")
        scales = list(scales) if scales is not None else _floats_or_val(c, 1)
        coord, nearest, roi, sizes = "asymmetric", "floor", None, None
    else:
        roi = _floats_or_val(c, 1) if c.has(1) else None
        scales = _floats_or_val(c, 2) if c.has(2) else None
        sizes = c.ints_or_node(3) if c.has(3) else None
        if isinstance(scales, list) and not scales:
            scales = None
        if isinstance(roi, list) and not roi:
            roi = None
        coord = c.attr("coordinate_transformation_mode", "half_pixel")
        nearest = c.attr("nearest_mode", "round_prefer_floor")
    if mode == "cubic":
        raise c.unsupported("mode 'cubic'")
    if c.attr("antialias", 0):
        raise c.unsupported("antialias")
    axes = c.attr("axes")
    return c.call(
        R.resize,
        x,
        roi,
        scales,
        sizes,
        mode,
        coord,
        nearest,
        list(axes) if axes is not None else None,
        c.attr("keep_aspect_ratio_policy", "stretch"),
        c.attr("cubic_coeff_a", -0.75),
        c.attr("exclude_outside", 0),
        c.attr("extrapolation_value", 0.0),
    )
