"""The device's in-model cost: operators inside a model take longer than alone.

Per calibrated model (the calibrator's own networks, `runners.calibrate.networks`, and
every `--model`), forward and backward apart:

    excess per operator = (measured in-model time - sum of the operators' isolated times)
                          / operators

where the in-model time is the pipeline probe's stage times summed over stages
(`runners.calibrate.probe`; the whole model timed in one process when no probe ran, minus
the call overhead) and the operators are the model's working (non-folded) nodes, the
zero-cost ones (reshapes, views) included: each is one call of the converted graph, with
its dispatch, allocation, autograd bookkeeping and the cache misses its isolated timing
never sees. The device's figure is the median over the models (pipeline ones where any
model has one); `cost.roofline` adds it to every operator priced by a family law or by the
roofline, so a model never calibrated is priced as operators *in a model*.

Why per operator and not a factor: over the four samples and the two networks (this VM,
bench/RESULTS.md), the ratio of in-model to isolated time ranged 1.0-1.9 (it is larger
where operators are small: gpt, mlp), the excess per operator 5-80 us; held out one model
at a time, the per-operator median predicted the in-model times with a mean error of
11%, a median factor 20%, and a fitted factor plus per-operator term 12%.

Its error is measured the way it is used: leave one model out. For each model, its forward
and backward time is predicted from the family laws (`alone_seconds`, the sum of
`cost.roofline.alone_*_seconds` over its operators) plus the other models' median excess
per operator, and compared with its measured in-model time
(`InModelFit.held_out_error`).
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

from cost.profile import InModelFit, Profile, save_profile


def measured_in_model(report: dict) -> tuple[str, float, float] | None:
    """(source, forward_s, backward_s) measured in the model: the pipeline probe's summed
    stage times, else the whole model timed alone (less the call overhead); None when
    neither was measured."""
    probe = report.get("pipeline")
    if isinstance(probe, dict) and probe.get("per_stage_ms"):
        stages = probe["per_stage_ms"]
        f = sum(st.get("measured_forward_ms", 0.0) for st in stages) / 1e3
        b = sum(st.get("measured_backward_ms", 0.0) for st in stages) / 1e3
        if f > 0:
            return "pipeline", f, b
    if report.get("whole_forward_s"):
        call = report.get("call_overhead_s") or {}
        f = report["whole_forward_s"] - call.get("forward_call_s", 0.0)
        b = report.get("whole_backward_s", 0.0) - call.get("backward_call_s", 0.0)
        if f > 0:
            return "whole", f, b
    return None


def model_excess(report: dict) -> tuple[str, float, float] | None:
    """(source, forward, backward) in-model excess per operator (us) of one model report,
    or None (nothing measured in the model, or no operators timed)."""
    measured = measured_in_model(report)
    iso_f = report.get("sum_isolated_forward_s") or 0.0
    iso_b = report.get("sum_isolated_backward_s") or 0.0
    nodes = report.get("operators") or 0
    if measured is None or iso_f <= 0 or nodes <= 0:
        return None
    source, f, b = measured
    return source, 1e6 * (f - iso_f) / nodes, 1e6 * (b - iso_b) / nodes


def fit_in_model(reports: dict[str, dict]) -> InModelFit | None:
    """The median in-model excess per operator over the models of `reports`
    (`Profile.models`; negative medians are taken as 0), with each model's leave-one-out
    error; None when no model has one."""
    excess = {k: e for k, rep in reports.items() if (e := model_excess(rep)) is not None}
    if not excess:
        return None
    source = "pipeline" if any(e[0] == "pipeline" for e in excess.values()) else "whole"
    excess = {k: e for k, e in excess.items() if e[0] == source}

    def medians(rows) -> tuple[float, float]:
        rows = list(rows)
        return (
            max(0.0, statistics.median(e[1] for e in rows)),
            max(0.0, statistics.median(e[2] for e in rows)),
        )

    fwd, bwd = medians(excess.values())
    held_out = {}
    for key in excess:
        report = reports[key]
        others = [e for k, e in excess.items() if k != key]
        alone = report.get("alone_forward_s"), report.get("alone_backward_s")
        measured = measured_in_model(report)
        if not others or alone[0] is None or measured is None:
            continue
        f, b = medians(others)
        predicted = alone[0] + (alone[1] or 0.0) + 1e-6 * (f + b) * report["operators"]
        actual = measured[1] + measured[2]
        held_out[key] = round(abs(predicted - actual) / actual, 4)
    return InModelFit(
        forward_node_us=round(fwd, 3),
        backward_node_us=round(bwd, 3),
        source=source,
        models={k: [round(e[1], 3), round(e[2], 3)] for k, e in excess.items()},
        held_out_error=held_out,
    )


def alone_seconds(mg, profile: Profile) -> tuple[float, float]:
    """(forward, backward) seconds of a model's operators priced as a model never
    calibrated is: each by its family's law, else the roofline, with the device figures and
    families of `profile` (its measured operators and in-model cost ignored)."""
    from cost.devices import DeviceSpec
    from cost.profile import device_spec_input
    from cost.roofline import alone_backward_seconds, alone_forward_seconds
    from runners.calibrate.model_ops import _op_dtype

    bare = profile.model_copy(update={"ops": {}, "in_model": None, "models": {}})
    with tempfile.TemporaryDirectory(prefix="pipeplan-alone-") as tmp:
        path = Path(tmp) / "profile.yaml"
        save_profile(bare, path)
        spec = DeviceSpec(**device_spec_input({"profile": str(path)}))
        f = b = 0.0
        for _, data in mg.graph.nodes(data=True):
            if data["folded"]:
                continue
            cost, sig, dtype = data["cost"], data["signature"], _op_dtype(mg, data)
            f += alone_forward_seconds(cost, spec, dtype, sig)
            b += alone_backward_seconds(cost, spec, dtype, sig)
    return f, b
