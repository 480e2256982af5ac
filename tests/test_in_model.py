"""The in-model factor (runners.calibrate.in_model) and its use in pricing and merging."""

from __future__ import annotations

import collections

import pytest
import yaml

from cost.cluster import cluster_from_dict
from cost.errors import PipeplanError
from cost.opcost import OpCost
from cost.profile import FamilyFit, FamilyLaw, InModelFit, OpTiming, profile_from_dict
from cost.roofline import (
    alone_backward_seconds,
    alone_forward_seconds,
    backward_seconds,
    forward_seconds,
)
from runners.calibrate.in_model import fit_in_model, measured_in_model, model_excess

DEVICE = yaml.safe_load(
    "{name: cpu, peak_tflops: {fp32: 1.0}, memory_GB: 8, bandwidth_GBps: 50,"
    " launch_overhead_us: 2, compute_efficiency: 0.9, memory_efficiency: 1.0,"
    " half_efficiency_flops: 1000}"
)


def _report(iso_f, iso_b, in_f, in_b, alone_f=None, alone_b=None, probe=True, ops=10) -> dict:
    """A model report as `ModelOps`/the probe write it: isolated sums and in-model times."""
    report = {
        "operators": ops,
        "sum_isolated_forward_s": iso_f,
        "sum_isolated_backward_s": iso_b,
        "call_overhead_s": {"forward_call_s": 0.0, "backward_call_s": 0.0},
        "whole_forward_s": iso_f + ops * 5e-6,
        "whole_backward_s": iso_b + ops * 8e-6,
    }
    if probe:  # two stages that split the in-model time 40/60
        report["pipeline"] = {
            "per_stage_ms": [
                {"measured_forward_ms": 400 * in_f, "measured_backward_ms": 400 * in_b},
                {"measured_forward_ms": 600 * in_f, "measured_backward_ms": 600 * in_b},
            ]
        }
    if alone_f is not None:
        report |= {"alone_forward_s": alone_f, "alone_backward_s": alone_b}
    return report


def test_excess_reads_the_probe_then_the_whole_model() -> None:
    r = _report(0.010, 0.020, 0.015, 0.024, ops=50)
    assert measured_in_model(r) == ("pipeline", pytest.approx(0.015), pytest.approx(0.024))
    src, f, b = model_excess(r)
    assert src == "pipeline" and f == pytest.approx(100.0) and b == pytest.approx(80.0)
    src, f, b = model_excess(_report(0.010, 0.020, 0, 0, probe=False))
    assert src == "whole" and f == pytest.approx(5.0) and b == pytest.approx(8.0)
    assert model_excess({"sum_isolated_forward_s": 0.01, "operators": 3}) is None


def test_fit_is_the_median_with_a_leave_one_out_error() -> None:
    # three models of 100 operators, forward excess 20, 50, 100 us per operator, backward
    # 10, 30, 60; the family laws predict each model's isolated times exactly
    reports = {
        "a": _report(0.010, 0.020, 0.012, 0.021, 0.010, 0.020, ops=100),
        "b": _report(0.010, 0.020, 0.015, 0.023, 0.010, 0.020, ops=100),
        "c": _report(0.010, 0.020, 0.020, 0.026, 0.010, 0.020, ops=100),
        "whole-only": _report(0.010, 0.020, 0, 0, probe=False),  # not mixed with probes
    }
    fit = fit_in_model(reports)
    assert fit.source == "pipeline" and set(fit.models) == {"a", "b", "c"}
    assert fit.forward_node_us == pytest.approx(50) and fit.backward_node_us == pytest.approx(30)
    # "a" predicted from b and c: medians 75 us forward, 45 us backward per operator
    expected = abs(0.030 + 100 * 120e-6 - (0.012 + 0.021)) / (0.012 + 0.021)
    assert fit.held_out_error["a"] == pytest.approx(expected, abs=1e-4)
    assert set(fit.held_out_error) == {"a", "b", "c"}
    # one model: a figure, but nothing to hold out; faster in the model than alone: 0
    one = fit_in_model({"a": reports["a"]})
    assert one.forward_node_us == pytest.approx(20) and one.held_out_error == {}
    assert fit_in_model({"x": _report(0.010, 0.020, 0.008, 0.015)}).forward_node_us == 0
    assert fit_in_model({}) is None


def _device(tmp_path, data: dict, name: str = "p.yaml"):
    (tmp_path / name).write_text(yaml.safe_dump(data))
    c = cluster_from_dict(
        {"name": "c", "nodes": [{"name": "n0", "devices": [{"profile": name}]}]},
        base_dir=str(tmp_path),
    )
    return c.device("n0.0")


def test_pricing_adds_the_in_model_cost_to_laws_and_roofline_only(tmp_path) -> None:
    law = FamilyFit(forward=FamilyLaw(fixed_us=10, gflops=5), backward=FamilyLaw(gflops=2))
    measured = OpTiming(op_type="Relu", forward_s=0.003, backward_s=0.004)
    relu = "Relu||float[64,64]g|float[64,64]|"
    data = dict(
        device=DEVICE,
        families={"gemm": law.model_dump()},
        ops={relu: measured.model_dump()},
        in_model=InModelFit(forward_node_us=30, backward_node_us=50).model_dump(),
    )
    device = _device(tmp_path, data)
    plain = _device(tmp_path, dict(data, in_model=None), "plain.yaml")
    gemm = OpCost(flops=10**9, bytes_read=10**6, bytes_written=10**6, backward_flops=2 * 10**9)
    sig = "MatMul||float[64,256]g,float[256,256]w|float[64,256]|"
    alone_f = alone_forward_seconds(gemm, device, "fp32", sig)
    assert alone_f == pytest.approx(10e-6 + 1e9 / 5e9)
    assert forward_seconds(gemm, device, "fp32", sig) == pytest.approx(alone_f + 30e-6)
    assert backward_seconds(gemm, device, "fp32", sig) == pytest.approx(
        alone_backward_seconds(gemm, device, "fp32", sig) + 50e-6
    )
    assert forward_seconds(gemm, plain, "fp32", sig) == pytest.approx(alone_f)
    # the roofline (no family for Softmax here) pays it too, and so does a free operator
    soft = "Softmax||float[64,64]g|float[64,64]|axis=-1"
    assert forward_seconds(gemm, device, "fp32", soft) == pytest.approx(
        forward_seconds(gemm, plain, "fp32", soft) + 30e-6
    )
    free = OpCost(kind="free")
    assert forward_seconds(free, device, "fp32", "Reshape||x|y|") == pytest.approx(30e-6)
    assert forward_seconds(free, plain, "fp32", "Reshape||x|y|") == 0.0
    # a measured operator carries its own model's correction: nothing added
    assert forward_seconds(gemm, device, "fp32", relu) == 0.003
    assert backward_seconds(gemm, device, "fp32", relu) == 0.004


def _profile(**extra):
    return profile_from_dict(dict(device=DEVICE, **extra))


def test_merge_unions_operators_and_refits_the_factor() -> None:
    from runners.calibrate.merge import merge_profiles

    nets = {"net": _report(0.010, 0.020, 0.012, 0.022, 0.010, 0.020)}  # 200 us / op
    base = _profile(models=nets, in_model=fit_in_model(nets).model_dump())
    op = OpTiming(op_type="Relu", forward_s=1e-4, backward_s=2e-4).model_dump()
    ext_a = _profile(ops={"A": op}, models=nets | {"a": _report(0.01, 0.02, 0.02, 0.032)})
    ext_b = _profile(ops={"A": op, "B": op}, models=nets | {"b": _report(0.01, 0.02, 0.016, 0.03)})
    merged = merge_profiles(base, [ext_a, ext_b])
    assert set(merged.ops) == {"A", "B"} and set(merged.models) == {"net", "a", "b"}
    assert merged.in_model.forward_node_us == pytest.approx(600)  # median of 200, 1000, 600
    assert merge_profiles(base, []).in_model == base.in_model
    other = _profile().model_copy(update={"device": base.device.model_copy(update={"name": "x"})})
    with pytest.raises(PipeplanError, match="another calibration"):
        merge_profiles(base, [other])


def test_the_calibrators_networks_cover_the_common_families(tmp_path) -> None:
    from cost.families import family_of
    from planner.graph.load import load_graph
    from runners.calibrate.networks import export_networks

    requests = export_networks(tmp_path)
    families = collections.Counter()
    for req in requests:
        mg = load_graph(req.path, req.bindings)
        for _, d in mg.graph.nodes(data=True):
            if not d["folded"] and (fam := family_of(d["signature"])):
                families[fam] += 1
    for fam in ("conv-k3", "conv-k1", "conv-depthwise", "norm-batch", "pool-max", "pool-avg",
                "concat", "gemm", "norm-layer", "softmax", "eltwise"):  # fmt: skip
        assert families[fam] >= 1, fam
