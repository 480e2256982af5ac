"""Export: stage models that onnxruntime runs, chained by the routing, equal the whole model."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from cost.errors import PipeplanError
from exporters.bundle import export
from exporters.manifest import MANIFEST_VERSION, Manifest
from planner.api import plan
from planner.config import PlanConfig
from planner.graph.shapes import ShapeBindings
from tests.exporting import export as torch_export

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = {"mlp": 4, "gpt": 3, "resnet": 2, "inception": 2}


def sample(name: str) -> str:
    return str(ROOT / "samples" / "models" / f"{name}.onnx")


def feeds_for(manifest: Manifest, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for t in manifest.graph_inputs:
        if t.dtype.startswith("int"):
            feeds[t.name] = rng.integers(0, 100, t.shape).astype(t.dtype)
        else:
            feeds[t.name] = rng.standard_normal(t.shape).astype(t.dtype)
    return feeds


def run_pipeline(
    bundle: Path, manifest: Manifest, feeds: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Run stage by stage; each stage sees only graph inputs and tensors routed to it."""
    delivered: dict[int, dict[str, np.ndarray]] = {s.index: {} for s in manifest.stages}
    produced: dict[int, dict[str, np.ndarray]] = {}
    results = {}
    for st in manifest.stages:
        session = ort.InferenceSession(str(bundle / st.file))
        inputs = {}
        for t in st.inputs:
            if t.source == "graph":
                inputs[t.name] = feeds[t.name]
            else:
                assert t.name in delivered[st.index], f"{t.name} never reached stage {st.index}"
                inputs[t.name] = delivered[st.index][t.name]
        outs = session.run([o.name for o in st.outputs], inputs)
        produced[st.index] = {o.name: v for o, v in zip(st.outputs, outs, strict=True)}
        for o, v in zip(st.outputs, outs, strict=True):
            if "graph" in o.destinations:
                results[o.name] = v
        for route in manifest.routing.forward:
            if route.src_stage != st.index:
                continue
            value = produced[st.index].get(route.tensor, delivered[st.index].get(route.tensor))
            assert value is not None, (
                f"stage {st.index} must send {route.tensor} but has not got it"
            )
            delivered[route.dst_stage][route.tensor] = value
    return results


def check_equal(model: str, bundle: Path, manifest: Manifest) -> None:
    feeds = feeds_for(manifest)
    reference = ort.InferenceSession(model).run(None, feeds)
    got = run_pipeline(bundle, manifest, feeds)
    for spec, ref in zip(manifest.graph_outputs, reference, strict=True):
        assert np.abs(got[spec.name] - ref).max() <= 1e-5, spec.name


@pytest.mark.parametrize("name", list(SAMPLES))
@pytest.mark.parametrize("stages", [2, 3, 4])
def test_stage_models_reproduce_the_whole_model(tmp_path, name, stages):
    model = sample(name)
    p = plan(
        model,
        ROOT / "samples/clusters/a100x4.yaml",
        PlanConfig(stages=stages, time_limit_s=30),
        ShapeBindings(batch=SAMPLES[name]),
    )
    assert len(p.stages) == stages
    bundle = tmp_path / "bundle"
    manifest = export(model, p, bundle)
    assert manifest.weights == "present"
    for st in manifest.stages:
        onnx.checker.check_model(str(bundle / st.file), full_check=True)
    check_equal(model, bundle, manifest)
    again = Manifest.model_validate_json((bundle / "manifest.json").read_text())
    assert again == manifest


class Skip(torch.nn.Module):
    """A long skip: the input of block 0 is added back after block 3."""

    def __init__(self):
        super().__init__()
        self.blocks = torch.nn.ModuleList(
            torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.Tanh()) for _ in range(4)
        )
        self.head = torch.nn.Linear(16, 3)

    def forward(self, x):
        h = self.blocks[0](x)
        skip = h
        for b in self.blocks[1:]:
            h = b(h)
        return self.head(h + skip)


def test_skip_connection_relayed_across_two_boundaries(tmp_path):
    path = torch_export(
        Skip(), (torch.randn(2, 16),), tmp_path / "skip.onnx", dynamo=True, opset=18
    )
    p = plan(
        str(path),
        ROOT / "samples/clusters/a100x4.yaml",
        PlanConfig(stages=4, strategy="uniform"),
        ShapeBindings(batch=2),
        layer_depth=2,
    )
    manifest = export(str(path), p, tmp_path / "bundle")
    relays = [r for st in manifest.stages for r in st.relays]
    assert relays, "the skip tensor should be relayed through a middle stage"
    crossings = {}
    for r in manifest.routing.forward:
        crossings.setdefault(r.tensor, []).append((r.src_stage, r.dst_stage))
    assert max(len(v) for v in crossings.values()) >= 2
    check_equal(str(path), tmp_path / "bundle", manifest)


def test_tied_weight_is_listed_with_its_stages(tmp_path):
    model = sample("gpt")
    p = plan(
        model, ROOT / "samples/clusters/a100x4.yaml", PlanConfig(stages=2), ShapeBindings(batch=2)
    )
    manifest = export(model, p, tmp_path / "bundle")
    tied = [w for w in manifest.shared_weights if w.name == "lm_head.weight"]
    assert tied and tied[0].stages == [0, 1]
    for st in manifest.stages:
        assert "lm_head.weight" in st.parameters
    check_equal(model, tmp_path / "bundle", manifest)


def test_model_without_weights_gives_weightless_stages(tmp_path):
    model = sample("gpt_xl")
    p = plan(
        model,
        ROOT / "samples/clusters/h100x16.yaml",
        PlanConfig(stages=4, strategy="params"),
        ShapeBindings(batch=1),
    )
    bundle = tmp_path / "bundle"
    manifest = export(model, p, bundle)
    assert manifest.weights == "absent"
    assert sum(st.param_count for st in manifest.stages) >= 1_557_611_200
    for st in manifest.stages:
        assert st.data_file and not (bundle / st.data_file).exists()
        assert (bundle / st.file).stat().st_size < 2_000_000


def test_external_weights_are_copied_per_stage(tmp_path):
    src = onnx.load(sample("mlp"))
    model = tmp_path / "ext" / "mlp.onnx"
    model.parent.mkdir()
    onnx.save(
        src, str(model), save_as_external_data=True, location="mlp.onnx.data", size_threshold=0
    )
    p = plan(
        str(model),
        ROOT / "samples/clusters/a100x4.yaml",
        PlanConfig(stages=2),
        ShapeBindings(batch=4),
    )
    manifest = export(str(model), p, tmp_path / "bundle")
    assert manifest.weights == "present"
    for st in manifest.stages:
        assert (tmp_path / "bundle" / st.data_file).exists()
    check_equal(sample("mlp"), tmp_path / "bundle", manifest)


def test_export_is_atomic(tmp_path, monkeypatch):
    import exporters.bundle as bundle_module

    model = sample("mlp")
    p = plan(
        model, ROOT / "samples/clusters/a100x4.yaml", PlanConfig(stages=3), ShapeBindings(batch=4)
    )
    calls = {"n": 0}
    real = bundle_module._check

    def failing(path, proto, present):
        calls["n"] += 1
        if calls["n"] == 2:
            raise PipeplanError("simulated failure while checking stage 1")
        real(path, proto, present)

    monkeypatch.setattr(bundle_module, "_check", failing)
    with pytest.raises(PipeplanError, match="simulated failure"):
        export(model, p, tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()
    assert list(tmp_path.iterdir()) == []


def test_cli_export_and_errors(tmp_path):
    plan_file = tmp_path / "plan.json"

    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "runners.cli", *args], capture_output=True, text=True, cwd=ROOT
        )

    r = run(
        "plan",
        sample("gpt"),
        "--cluster",
        "samples/clusters/cpu2.yaml",
        "--batch",
        "2",
        "-o",
        str(plan_file),
    )
    assert r.returncode == 0, r.stderr
    r = run("export", sample("gpt"), str(plan_file), "-o", str(tmp_path / "b"))
    assert r.returncode == 0, r.stderr
    assert (
        json.loads((tmp_path / "b" / "manifest.json").read_text())["manifest_version"]
        == MANIFEST_VERSION
    )
    for args, fragment in [
        (("export", sample("gpt"), str(plan_file), "-o", str(tmp_path / "b")), "exists"),
        (("export", sample("mlp"), str(plan_file), "-o", str(tmp_path / "c")), "another graph"),
        (
            ("export", sample("gpt"), str(tmp_path / "nope.json"), "-o", str(tmp_path / "d")),
            "plan file not found",
        ),
    ]:
        r = run(*args)
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        assert r.returncode == 2 and len(lines) == 1 and fragment in lines[0], r.stderr
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    r = run("export", sample("gpt"), str(bad), "-o", str(tmp_path / "e"))
    assert r.returncode == 2 and "invalid plan" in r.stderr
    assert not (tmp_path / "c").exists() and not (tmp_path / "e").exists()
    r = run("schema", "manifest")
    assert r.returncode == 0 and "StageFile" in r.stdout
    shutil.rmtree(tmp_path / "b")
