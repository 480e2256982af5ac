"""Run-time Resize (and Upsample): nearest and linear modes, one axis at a time.

Output sizes come from ``sizes`` (with keep_aspect_ratio_policy stretch, not_larger or
not_smaller) or from ``floor(in * scale)``; each output index maps to a source coordinate
by coordinate_transformation_mode (half_pixel, pytorch_half_pixel, align_corners,
asymmetric, half_pixel_symmetric, tf_crop_and_resize with roi and extrapolation_value),
then to an input index by nearest_mode or to a linear blend of its two neighbours.
"""

from __future__ import annotations

import math

import torch

from runners.convert.functional.common import floats, ints, wrap_axis


def _source_coords(out_n: int, in_n: int, scale: float, mode: str, roi=None, device=None):
    i = torch.arange(out_n, dtype=torch.float64, device=device)
    if mode == "half_pixel":
        return (i + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return (i + 0.5) / scale - 0.5 if out_n > 1 else torch.zeros_like(i)
    if mode == "align_corners":
        return i * (in_n - 1) / (out_n - 1) if out_n > 1 else torch.zeros_like(i)
    if mode == "asymmetric":
        return i / scale
    if mode == "half_pixel_symmetric":
        adj = out_n / (scale * in_n)
        center = in_n / 2
        offset = center * (1 - adj)
        return offset + (i + 0.5) / scale - 0.5
    if mode == "tf_crop_and_resize":
        start, end = roi
        if out_n > 1:
            return start * (in_n - 1) + i * (end - start) * (in_n - 1) / (out_n - 1)
        return torch.full_like(i, 0.5 * (start + end) * (in_n - 1))
    raise NotImplementedError(f"Resize coordinate_transformation_mode={mode!r}")


def _nearest(coords: torch.Tensor, mode: str, scale: float) -> torch.Tensor:
    if mode == "round_prefer_floor":
        idx = torch.ceil(coords - 0.5)
    elif mode == "round_prefer_ceil":
        idx = torch.floor(coords + 0.5)
    elif mode == "floor":
        idx = torch.floor(coords)
    elif mode == "ceil":
        idx = torch.ceil(coords)
    else:
        raise NotImplementedError(f"Resize nearest_mode={mode!r}")
    return idx.long()


def resize(
    x,
    roi=None,
    scales=None,
    sizes=None,
    mode: str = "nearest",
    coordinate_transformation_mode: str = "half_pixel",
    nearest_mode: str = "round_prefer_floor",
    axes=None,
    keep_aspect_ratio_policy: str = "stretch",
    cubic_coeff_a: float = -0.75,
    exclude_outside: int = 0,
    extrapolation_value: float = 0.0,
):
    """ONNX Resize (nearest and linear), one axis at a time with index arithmetic."""
    r = x.dim()
    ax = (
        [wrap_axis(a, r) for a in ints(axes)]
        if axes is not None and len(ints(axes))
        else list(range(r))
    )
    in_sizes = [x.shape[a] for a in ax]
    sizes_l = ints(sizes) if sizes is not None else []
    scales_l = floats(scales) if scales is not None else []
    if sizes_l:
        if keep_aspect_ratio_policy != "stretch":
            ratios = [o / i for o, i in zip(sizes_l, in_sizes, strict=True)]
            s = min(ratios) if keep_aspect_ratio_policy == "not_larger" else max(ratios)
            sizes_l = [int(math.floor(i * s + 0.5)) for i in in_sizes]
            scales_l = [s] * len(ax)
        else:
            scales_l = [o / i for o, i in zip(sizes_l, in_sizes, strict=True)]
    elif scales_l:
        sizes_l = [int(math.floor(i * s)) for i, s in zip(in_sizes, scales_l, strict=True)]
    else:
        raise ValueError("Resize needs scales or sizes")
    roi_l = floats(roi) if roi is not None else []
    if mode == "cubic":
        raise NotImplementedError("Resize mode 'cubic' is not supported by pipeplan's converter")
    for j, a in enumerate(ax):
        n_in, n_out, s = in_sizes[j], sizes_l[j], scales_l[j]
        if n_in == n_out and coordinate_transformation_mode != "tf_crop_and_resize":
            continue
        roi_a = None
        if roi_l:
            roi_a = (
                roi_l[j] if len(roi_l) == 2 * len(ax) else roi_l[a],
                roi_l[j + len(ax)] if len(roi_l) == 2 * len(ax) else roi_l[a + r],
            )
        coords = _source_coords(n_out, n_in, s, coordinate_transformation_mode, roi_a, x.device)
        outside = (coords < 0) | (coords > n_in - 1)
        if mode == "nearest":
            idx = _nearest(coords, nearest_mode, s).clamp(0, n_in - 1)
            y = torch.index_select(x, a, idx)
        else:  # linear
            c = coords.clamp(0, n_in - 1)
            lo = torch.floor(c).long().clamp(0, n_in - 1)
            hi = (lo + 1).clamp(max=n_in - 1)
            w = (c - lo.to(c.dtype)).to(x.dtype)
            shape = [1] * r
            shape[a] = n_out
            w = w.reshape(shape)
            y = torch.index_select(x, a, lo) * (1 - w) + torch.index_select(x, a, hi) * w
        if coordinate_transformation_mode == "tf_crop_and_resize" and bool(outside.any()):
            shape = [1] * r
            shape[a] = n_out
            y = torch.where(
                outside.reshape(shape),
                torch.tensor(extrapolation_value, dtype=y.dtype, device=y.device),
                y,
            )
        x = y
    return x
