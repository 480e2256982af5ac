"""Merge calibrations of one device: a base profile and profiles that `--extend`ed it.

Each `pipeplan calibrate --extend BASE --model M` measures one model's operators and
probe on top of BASE. `merge_profiles(BASE, [P1, P2, ...])` is the profile that extending
BASE with all of those models in turn would give, without measuring again: BASE's device,
families and optimizer, the union of the operators and model reports (an operator already
held is kept as first met), the link refitted to every probe, and the in-model cost
refitted over every model (`runners.calibrate.in_model`). It lets a benchmark leave any
one model out of a calibration (`bench/fidelity.py --held-out`) at the price of one
calibration per model.
"""

from __future__ import annotations

from collections.abc import Sequence

from cost.errors import PipeplanError
from cost.profile import Profile
from runners.calibrate.in_model import fit_in_model
from runners.calibrate.session import refit_link


def merge_profiles(base: Profile, extensions: Sequence[Profile]) -> Profile:
    """`base` with the operators and models of every profile in `extensions` (each an
    `--extend` of the same device: its device figures must equal the base's)."""
    ops, models = dict(base.ops), dict(base.models)
    for ext in extensions:
        if ext.engine != base.engine:
            raise PipeplanError(
                f"cannot merge a profile timed by {ext.engine} into one timed by {base.engine}"
            )
        if ext.device != base.device:
            raise PipeplanError(
                f"cannot merge a profile of another calibration ({ext.device.name}): "
                "merge only profiles that --extend the base"
            )
        for sig, timing in ext.ops.items():
            ops.setdefault(sig, timing)
        for key, report in ext.models.items():
            models.setdefault(key, report)
    fit = dict(base.fit)
    link = base.link
    if link is not None:
        link, fit["link"] = refit_link(link, fit.get("link", {}), models)
    return base.model_copy(
        update={
            "ops": ops,
            "models": models,
            "link": link,
            "fit": fit,
            "in_model": fit_in_model(models),
        }
    )
