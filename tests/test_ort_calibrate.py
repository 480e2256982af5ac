"""`calibrate --engine onnxruntime`: operators timed in onnxruntime, and plans priced by them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cost.profile import load_profile, profile_from_dict, save_profile
from planner.api import plan
from planner.config import PlanConfig
from planner.graph.load import load_graph
from planner.graph.shapes import ShapeBindings
from runners.calibrate.model_ops import ModelRequest, model_key
from runners.calibrate.ort_ops import onnxruntime_profile

ROOT = Path(__file__).resolve().parents[1]
MLP = ROOT / "samples" / "models" / "mlp.onnx"
DEVICE = yaml.safe_load(
    "{name: cpu, peak_tflops: {fp32: 0.05}, memory_GB: 8, bandwidth_GBps: 20,"
    " launch_overhead_us: 2, compute_efficiency: 0.9, memory_efficiency: 1.0,"
    " half_efficiency_flops: 1000}"
)


@pytest.fixture(scope="module")
def ort_profile(tmp_path_factory) -> Path:
    base = profile_from_dict({"device": DEVICE, "threads": 1, "note": "base"})
    request = ModelRequest(str(MLP), ShapeBindings(batch=32))
    profile = onnxruntime_profile(base, [request], repeats=5)
    path = tmp_path_factory.mktemp("ortcal") / "ort.yaml"
    save_profile(profile, path)
    return path


def test_every_operator_is_timed_forward_only(ort_profile):
    p = load_profile(ort_profile)
    assert p.engine == "onnxruntime" and p.device.name == "cpu"
    mg = load_graph(MLP, ShapeBindings(batch=32))
    sigs = {d["signature"] for _, d in mg.graph.nodes(data=True) if not d["folded"]}
    assert sigs == set(p.ops)
    assert all(op.backward_s == 0 and op.isolated_forward_s is not None for op in p.ops.values())
    key = model_key(ModelRequest(str(MLP), ShapeBindings(batch=32)))
    assert p.in_model.source == "whole" and key in p.in_model.models
    assert p.in_model.backward_node_us == 0
    assert "onnxruntime" in p.note and p.overhead["forward_call_s"] > 0


def test_plans_on_it_are_priced_by_its_measurements(ort_profile, tmp_path):
    cluster = tmp_path / "c.yaml"
    cluster.write_text(yaml.safe_dump({"devices": [{"profile": str(ort_profile), "count": 2}]}))
    p = plan(MLP, cluster, PlanConfig(objective="latency", stages=2), ShapeBindings(batch=32))
    assert p.pricing["share"]["measured"] == pytest.approx(1.0)
    ops = load_profile(ort_profile).ops
    mg = load_graph(MLP, ShapeBindings(batch=32))
    nodes = {n: d for n, d in mg.graph.nodes(data=True)}
    expected = sum(ops[nodes[n]["signature"]].forward_s for st in p.stages for n in st.nodes)
    assert sum(s.forward_ms for s in p.stages) == pytest.approx(1e3 * expected, rel=0.02)


def test_cli_refuses_what_it_cannot_time(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "runners.cli", "calibrate", "--engine", "onnxruntime",
         "-o", str(tmp_path / "p.yaml")],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode != 0 and not (tmp_path / "p.yaml").exists()
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "--engine onnxruntime times the operators of --model" in lines[0]


def test_profiles_of_different_engines_do_not_merge(ort_profile):
    from cost.errors import PipeplanError
    from runners.calibrate.merge import merge_profiles

    ort = load_profile(ort_profile)
    torch_profile = ort.model_copy(update={"engine": "torch"})
    with pytest.raises(PipeplanError, match="timed by onnxruntime into one timed by torch"):
        merge_profiles(torch_profile, [ort])
