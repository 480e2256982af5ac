"""`run --engine onnxruntime`: the stage files served in onnxruntime sessions, streamed
over torch.distributed (gloo), checked against the whole model in one session.

Checks that start processes are marked `slow` (run in CI); the refusals and the figures'
arithmetic are fast.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from cost.errors import PipeplanError
from exporters.bundle import export
from planner.api import plan
from planner.config import PlanConfig
from planner.graph.shapes import ShapeBindings
from planner.plan_file import load_plan
from runners.launch import load_bundle, run
from runners.ort import providers as prov
from runners.ort.serving import latency_stats, predicted_serving
from tests.killing import kill_one_rank_and_check

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "samples" / "models"


def make_bundle(
    tmp: Path, model: Path, stages: int, *, batch: int = 2, schedule: str = "1f1b", m: int = 2
) -> Path:
    cfg = PlanConfig(
        schedule=schedule, stages=stages, microbatches=m, strategy="greedy", parallel="pp"
    )
    p = plan(model, ROOT / "samples/clusters/a100x4.yaml", cfg, ShapeBindings(batch=batch))
    bundle = tmp / f"{model.stem}-{stages}-{schedule}"
    export(model, p, bundle)
    return bundle


@pytest.fixture(scope="module")
def mlp_bundle(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("ort"), MODELS / "mlp.onnx", 2)


# ---------------------------------------------------------------------- fast: refusals


def test_training_and_torch_only_flags_are_refused(mlp_bundle):
    with pytest.raises(PipeplanError, match="inference only: use --mode infer"):
        run(mlp_bundle, engine="onnxruntime", mode="train")
    with pytest.raises(PipeplanError, match="need --engine onnxruntime"):
        run(mlp_bundle, stream=4)
    with pytest.raises(PipeplanError, match="--engine must be torch or onnxruntime"):
        run(mlp_bundle, engine="tvm")
    with pytest.raises(PipeplanError, match="--stream must be at least 1"):
        run(mlp_bundle, engine="onnxruntime", stream=0)


def test_unknown_and_absent_providers_are_refused(mlp_bundle):
    with pytest.raises(PipeplanError, match="unknown execution provider 'Vulkan'"):
        run(mlp_bundle, engine="onnxruntime", providers=["Vulkan"])
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(PipeplanError, match="stage 0 .* needs CUDAExecutionProvider, which"):
        run(mlp_bundle, engine="onnxruntime", providers=["CUDA"])


def test_providers_come_from_the_flag_else_the_device_else_cpu(mlp_bundle):
    _, manifest = load_bundle(mlp_bundle)
    assert prov.stage_providers(manifest) == {0: [prov.CPU], 1: [prov.CPU]}
    got = prov.stage_providers(manifest, ["cuda", "TensorRT"])
    assert got[0] == ["CUDAExecutionProvider", "TensorrtExecutionProvider", prov.CPU]
    raw = manifest.cluster.model_dump()
    for d in raw["nodes"][0]["devices"]:
        d["providers"] = ["OpenVINO"]
    fake = manifest.model_copy(update={"cluster": type(manifest.cluster).model_validate(raw)})
    assert prov.stage_providers(fake)[1] == ["OpenVINOExecutionProvider", prov.CPU]


def test_cluster_spec_takes_providers(tmp_path):
    from cost.cluster import load_cluster

    spec = tmp_path / "c.yaml"
    spec.write_text("devices:\n  - {like: A100-80GB, providers: [CUDA, CPU], count: 2}\n  - T4\n")
    c = load_cluster(spec)
    devices = c.nodes[0].devices
    assert devices[0].providers == ("CUDA", "CPU") and devices[2].providers == ()


def _model_with(tmp: Path, domain: str, op: str) -> Path:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])
    nodes = [
        helper.make_node("Relu", ["x"], ["h"]),
        helper.make_node(op, ["h"], ["y"], domain=domain),
    ]
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=opsets)
    path = tmp / f"{op}.onnx"
    onnx.save(model, str(path))
    return path


def test_missing_kernels_are_named(tmp_path):
    assert prov.missing_kernels(_model_with(tmp_path, "", "Sigmoid"), [prov.CPU]) == []
    missing = prov.missing_kernels(_model_with(tmp_path, "pipeplan", "AllReduce"), [prov.CPU])
    assert missing == ["pipeplan.AllReduce (opset 1)"]


def test_a_stage_needing_an_absent_kernel_is_refused_before_start(mlp_bundle, monkeypatch):
    kernels = {k: v for k, v in prov._kernels().items() if k != ("", "Gemm")}
    monkeypatch.setattr(prov, "_kernels", lambda: kernels)
    with pytest.raises(PipeplanError, match=r"stage 0 \(stage_0.onnx\) needs ai.onnx.Gemm"):
        run(mlp_bundle, engine="onnxruntime")


def test_serving_arithmetic(mlp_bundle):
    p = load_plan(mlp_bundle / "plan.json")
    latency, throughput = predicted_serving(p)
    forward = [s.forward_ms + s.send_blocking_ms for s in p.stages]
    assert latency == pytest.approx(sum(forward) + sum(s.send_ms for s in p.stages))
    slowest = max(max(forward), max(s.send_ms for s in p.stages))
    assert throughput == pytest.approx(1e3 * p.model.microbatch_size / slowest)
    stats = latency_stats([float(v) for v in range(1, 101)])
    assert stats.p50_ms == pytest.approx(50.5) and stats.p99_ms == pytest.approx(99.01)
    assert stats.min_ms == 1 and stats.max_ms == 100


# ---------------------------------------------------------------------- slow: processes


@pytest.mark.slow
@pytest.mark.parametrize(
    ("model", "stages", "batch"),
    [("mlp", 2, 8), ("gpt", 2, 2), ("resnet", 2, 2), ("inception", 2, 2), ("gpt", 4, 2)],
)
def test_stream_outputs_equal_one_session(tmp_path, model, stages, batch):
    bundle = make_bundle(tmp_path, MODELS / f"{model}.onnx", stages, batch=batch)
    report = tmp_path / "r.json"
    result = run(bundle, engine="onnxruntime", stream=12, check=True, report=str(report))
    assert result.check.kind == "outputs" and result.check.passed, result.check
    assert result.check.max_abs_diff <= 1e-4 or result.check.max_rel_diff <= 1e-4
    s = result.serving
    assert result.engine == "onnxruntime" and result.world_size == stages
    assert s.requests == 12 and s.in_flight == stages
    assert 0 < s.latency.min_ms <= s.latency.p50_ms <= s.latency.p99_ms <= s.latency.max_ms
    assert s.throughput_samples_per_s > 0 and s.predicted_latency_ms > 0
    assert [t.stage for t in result.measured.per_stage] == list(range(stages))
    assert all(t.forward_ms > 0 for t in result.measured.per_stage)
    assert '"serving"' in report.read_text()


@pytest.mark.slow
def test_interleaved_stages_on_one_rank(tmp_path):
    bundle = make_bundle(tmp_path, MODELS / "gpt.onnx", 2, schedule="interleaved", m=4)
    _, manifest = load_bundle(bundle)
    assert len(manifest.stages) > manifest.world_size  # a rank holds two stages
    result = run(bundle, engine="onnxruntime", stream=8, check=True)
    assert result.check.passed, result.check


@pytest.mark.slow
def test_timm_model_from_the_corpus(tmp_path):
    from tests import corpus

    path = corpus.export(corpus.build("resnet50"), "dynamo", tmp_path / "resnet50.onnx")
    bundle = make_bundle(tmp_path, path, 2, batch=corpus.BATCH)
    result = run(bundle, engine="onnxruntime", stream=6, check=True)
    assert result.check.passed, result.check


@pytest.mark.slow
def test_cli_serves_and_reports(tmp_path, mlp_bundle):
    report = tmp_path / "r.json"
    out = subprocess.run(
        [sys.executable, "-m", "runners.cli", "run", str(mlp_bundle), "--engine", "onnxruntime",
         "--stream", "8", "--in-flight", "1", "--check", "--report", str(report)],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "latency p50" in out.stdout and "check outputs: passed" in out.stdout
    assert "1 in flight" in out.stdout and report.exists()


@pytest.mark.slow
def test_a_killed_stage_process_stops_every_rank(tmp_path, mlp_bundle):
    kill_one_rank_and_check(
        mlp_bundle, 2, args=("--engine", "onnxruntime", "--stream", "100000000"),
        module="runners.ort.worker",
    )  # fmt: skip
