"""Operator families and their fitted time laws (issue 18, `cost.families`,
`runners.calibrate.families`): the classifier, the fit on synthetic laws, and pricing."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from cost.cluster import cluster_from_dict
from cost.families import family_of
from cost.opcost import OpCost
from cost.profile import FamilyFit, FamilyLaw
from cost.roofline import backward_seconds, forward_seconds
from runners.calibrate.families import fit_family, fit_law


def _sig(op, inputs="float[16,64,28,28]g", attrs=""):
    return f"{op}||{inputs}|float[16,64,28,28]|{attrs}"


@pytest.mark.parametrize(
    "signature,family",
    [
        (
            _sig("Conv", "float[16,64,28,28]g,float[64,64,3,3]w", "group=1;kernel_shape=[3, 3]"),
            "conv-k3",
        ),
        (_sig("Conv", "float[16,64,28,28]g,float[128,64,1,1]w", ""), "conv-k1"),
        (_sig("Conv", "float[16,64,28,28]g,float[64,64,7,7]w", ""), "conv-k5+"),
        (_sig("Conv", "float[16,64,28,28]g,float[64,1,3,3]w", "group=64"), "conv-depthwise"),
        (_sig("Conv", "float[16,64,28,28]g,float[64,8,3,3]w", "group=8"), "conv-grouped"),
        (_sig("MatMul", "float[8,64]g,float[64,64]w"), "gemm"),
        (_sig("MaxPool"), "pool-max"),
        (_sig("GlobalAveragePool"), "pool-avg"),
        (_sig("BatchNormalization"), "norm-batch"),
        (_sig("LayerNormalization"), "norm-layer"),
        (_sig("Softmax"), "softmax"),
        (_sig("ReduceMean"), "reduce"),
        (_sig("Concat"), "concat"),
        (_sig("Relu"), "eltwise"),
        (_sig("Transpose"), "movement"),
        (_sig("com.microsoft.Foo"), None),
        (None, None),
    ],
)
def test_family_of_reads_the_signature(signature, family):
    assert family_of(signature) == family


def test_fit_recovers_a_known_law():
    """Points drawn from t = 20 us + flops / 50 GFLOP/s + bytes / 10 GB/s (2% noise)."""
    rng = np.random.default_rng(0)
    flops = np.exp(rng.uniform(np.log(1e4), np.log(1e9), 40))  # log-uniform, as sweeps are
    nbytes = np.exp(rng.uniform(np.log(1e4), np.log(1e8), 40))
    t = (20e-6 + flops / 50e9 + nbytes / 10e9) * (1 + 0.02 * rng.standard_normal(40))
    law = fit_law(flops, nbytes, t)
    assert law.fixed_us == pytest.approx(20, rel=0.2)
    assert law.gflops == pytest.approx(50, rel=0.05)
    assert law.gbps == pytest.approx(10, rel=0.1)


def test_fit_drops_a_term_the_data_do_not_need():
    """A pure-bandwidth law (no fixed cost, no FLOP term): the NNLS keeps rates >= 0 and
    predicts the law (FLOPs and bytes collinear here: either term may carry it)."""
    nbytes = np.geomspace(1e4, 1e8, 20)
    flops = nbytes * 0.25
    t = nbytes / 20e9
    law = fit_law(flops, nbytes, t)
    assert law.seconds(0.25e8, 1e8) == pytest.approx(1e8 / 20e9, rel=1e-3)
    assert law.fixed_us >= 0 and law.gflops >= 0 and law.gbps >= 0


def test_family_fit_reports_its_held_out_error():
    rng = np.random.default_rng(1)
    points = []
    for _ in range(30):
        f, b = rng.uniform(1e6, 1e9), rng.uniform(1e5, 1e8)
        points.append((f, b, 5e-6 + f / 80e9, 2 * f, 8e-6 + 2 * f / 60e9))
    fit = fit_family(points)
    assert fit.points == 30 and fit.held_out_error < 0.01 and fit.max_error < 0.01
    assert fit.backward.gflops == pytest.approx(60, rel=0.01)


def test_an_operator_never_timed_is_priced_by_its_family(tmp_path):
    law = FamilyFit(
        forward=FamilyLaw(fixed_us=10, gflops=5),
        backward=FamilyLaw(fixed_us=20, gflops=5),
        points=9,
    )
    base = yaml.safe_load(
        "device: {name: cpu, peak_tflops: {fp32: 1.0}, memory_GB: 8, bandwidth_GBps: 50,"
        " launch_overhead_us: 2, compute_efficiency: 0.9, memory_efficiency: 1.0,"
        " half_efficiency_flops: 1000}"
    )
    with_fit = dict(base, families={"conv-k3": law.model_dump()})
    (tmp_path / "fit.yaml").write_text(yaml.safe_dump(with_fit))
    (tmp_path / "plain.yaml").write_text(yaml.safe_dump(base))

    def device(name):
        c = cluster_from_dict(
            {"name": "c", "nodes": [{"name": "n0", "devices": [{"profile": name}]}]},
            base_dir=str(tmp_path),
        )
        return c.device("n0.0")

    cost = OpCost(
        flops=10**9, bytes_read=10**6, bytes_written=10**6, backward_flops=2 * 10**9, kind="compute"
    )
    sig = _sig("Conv", "float[16,64,28,28]g,float[64,64,3,3]w", "")
    fitted, plain = device("fit.yaml"), device("plain.yaml")
    assert forward_seconds(cost, fitted, "fp32", sig) == pytest.approx(10e-6 + 1e9 / 5e9)
    assert backward_seconds(cost, fitted, "fp32", sig) == pytest.approx(20e-6 + 2e9 / 5e9)
    # another family, or no fit at all: the roofline (far faster than the fitted law here)
    assert forward_seconds(cost, fitted, "fp32", _sig("MatMul")) < 0.01
    assert forward_seconds(cost, plain, "fp32", sig) < 0.01
    # a fit is for fp32 only: bf16 goes to the roofline
    assert forward_seconds(cost, fitted, "bf16", sig) < 0.01


def test_a_plan_says_what_its_prediction_rests_on(tmp_path):
    """A profile with one family fit (gemm): the plan counts its sources and warns, in one
    line per family, that the inception sample's convolutions fall back to the roofline."""
    from pathlib import Path

    from planner.api import plan
    from planner.config import PlanConfig
    from planner.graph.shapes import ShapeBindings

    root = Path(__file__).resolve().parents[1]
    data = yaml.safe_load((root / "samples/clusters/cpu_profile.yaml").read_text())
    data["ops"] = {}
    data["families"] = {
        "gemm": FamilyFit(forward=FamilyLaw(gflops=50), backward=FamilyLaw(gflops=50)).model_dump()
    }
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(data))
    cluster = cluster_from_dict(
        {"name": "c", "nodes": [{"name": "n0", "devices": [{"profile": "p.yaml", "count": 2}]}]},
        base_dir=str(tmp_path),
    )
    p = plan(
        root / "samples/models/inception.onnx",
        cluster,
        PlanConfig(parallel="pp"),
        ShapeBindings(batch=4),
    )
    ops = p.pricing["operators"]
    assert ops["family"] >= 1 and ops["roofline"] > ops["family"] and ops["measured"] == 0
    assert sum(p.pricing["share"].values()) == pytest.approx(1.0)
    assert "conv-k3" in p.pricing["missing_families"]
    lines = [w for w in p.warnings if "no fit for operator family conv-k3" in w]
    assert len(lines) == 1
