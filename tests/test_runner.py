"""The torch runner on real torch.distributed processes (gloo, CPU), launched by torchrun.

Slow (every run starts several Python processes): marked `slow`, run in CI.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cost.errors import PipeplanError
from exporters.bundle import export
from planner.api import plan
from planner.config import PlanConfig
from planner.graph.shapes import ShapeBindings
from planner.plan_file import load_plan
from planner.simulate.replay import replay
from runners.launch import RunFailed, load_bundle, run
from tests.killing import kill_one_rank_and_check

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
SCHEDULES = ["gpipe", "1f1b", "interleaved", "zb"]


def make_bundle(
    tmp: Path, model: str, stages: int, schedule: str, batch: int = 4, m: int = 4
) -> Path:
    cfg = PlanConfig(
        schedule=schedule, stages=stages, microbatches=m, strategy="greedy", parallel="pp"
    )
    p = plan(
        ROOT / "samples" / "models" / f"{model}.onnx",
        ROOT / "samples/clusters/a100x4.yaml",
        cfg,
        ShapeBindings(batch=batch),
    )
    bundle = tmp / f"{model}-{stages}-{schedule}"
    export(ROOT / "samples" / "models" / f"{model}.onnx", p, bundle)
    return bundle


@pytest.mark.parametrize("model", ["mlp", "gpt"])
@pytest.mark.parametrize("stages", [2, 3])
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_training_gradients_equal_one_process(tmp_path, model, stages, schedule):
    bundle = make_bundle(tmp_path, model, stages, schedule)
    result = run(bundle, steps=2, check=True)
    assert result.check.kind == "gradients"
    assert result.check.passed, result.check
    assert result.check.max_rel_diff <= 1e-4
    devices = len({s.device for s in load_bundle(bundle)[1].stages})
    assert result.world_size == devices
    assert result.measured.iteration_ms > 0 and len(result.losses) == 2


@pytest.mark.parametrize("model", ["mlp", "gpt"])
@pytest.mark.parametrize("stages", [2, 3])
@pytest.mark.parametrize("schedule", ["1f1b", "interleaved"])
def test_inference_outputs_equal_onnxruntime(tmp_path, model, stages, schedule):
    bundle = make_bundle(tmp_path, model, stages, schedule)
    result = run(bundle, steps=1, mode="infer", check=True)
    assert result.check.kind == "outputs" and result.check.passed, result.check
    # measured against the inference prediction (the schedule's forwards), not training's
    p = load_plan(bundle / "plan.json")
    expected = replay(p, inference=True).iteration_s * 1e3
    assert result.predicted_iteration_ms == pytest.approx(expected)
    assert result.predicted_iteration_ms < 0.7 * p.predicted.iteration_ms


@pytest.mark.parametrize("model", ["mlp", "gpt"])
def test_loss_falls_over_20_steps(tmp_path, model):
    bundle = make_bundle(tmp_path, model, 2, "1f1b")
    result = run(bundle, steps=20)
    assert len(result.losses) == 20
    assert result.losses[-1] < 0.9 * result.losses[0], result.losses


def test_cli_run_writes_report_and_trace(tmp_path):
    bundle = make_bundle(tmp_path, "mlp", 2, "zb")
    report, trace = tmp_path / "r.json", tmp_path / "t.json"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "runners.cli",
            "run",
            str(bundle),
            "--steps",
            "3",
            "--check",
            "--report",
            str(report),
            "--trace",
            str(trace),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr
    data = json.loads(report.read_text())
    for key in ("iteration_ms", "throughput_samples_per_s", "per_stage"):
        assert key in data["measured"]
    assert {"forward_ms", "backward_ms", "comm_ms", "idle_ms"} <= set(
        data["measured"]["per_stage"][0]
    )
    assert data["predicted_iteration_ms"] > 0 and data["measured_over_predicted"] > 0
    events = json.loads(trace.read_text())["traceEvents"]
    names = {
        e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"
    }
    assert any(n.startswith("measured") for n in names) and any(
        n.startswith("simulated") for n in names
    )
    assert "check gradients: passed" in r.stdout


def test_nan_loss_stops_the_run(tmp_path):
    bundle = make_bundle(tmp_path, "mlp", 2, "1f1b")
    with pytest.raises(RunFailed, match=r"rank \d+ failed: FloatingPointError: loss is (nan|inf)"):
        run(bundle, steps=6, lr=1e30)


def test_a_failing_rank_is_named(tmp_path):
    import numpy as np

    bundle = make_bundle(tmp_path, "mlp", 2, "1f1b")
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((3, 5), dtype=np.float32))  # wrong feature size for the first Linear
    start = time.monotonic()
    with pytest.raises(RunFailed, match=r"rank 0 failed: RuntimeError"):
        run(bundle, steps=2, data=str(bad))
    assert time.monotonic() - start < 60


def test_a_killed_rank_stops_every_rank_within_60_s(tmp_path):
    bundle = make_bundle(tmp_path, "gpt", 3, "1f1b")
    kill_one_rank_and_check(bundle, 3)


def test_bundle_checks(tmp_path):
    bundle = make_bundle(tmp_path, "mlp", 2, "1f1b")
    other = tmp_path / "modified"
    shutil.copytree(bundle, other)
    with open(other / "stage_1.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(PipeplanError, match="does not match its manifest"):
        load_bundle(other)
    old = tmp_path / "old"
    shutil.copytree(bundle, old)
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["manifest_version"] = 99
    (old / "manifest.json").write_text(json.dumps(manifest))
    r = subprocess.run(
        [sys.executable, "-m", "runners.cli", "run", str(old)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "manifest version 99" in r.stderr
    with pytest.raises(PipeplanError, match="no manifest.json"):
        load_bundle(tmp_path)
    with pytest.raises(PipeplanError, match="--nproc 5 does not match"):
        run(bundle, nproc=5)
