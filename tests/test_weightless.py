"""Graph-only exports: a real Llama-3-8B configuration built on the meta device, exported
without materialising a weight (`exporters.from_torch.export_weightless`), inspected and
planned; a two-block version is exported into a bundle whose weights are absent."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

pytest.importorskip("transformers")

from exporters.bundle import export  # noqa: E402
from exporters.from_torch import export_weightless  # noqa: E402
from planner.api import plan  # noqa: E402
from planner.config import PlanConfig  # noqa: E402
from planner.graph.inspect import inspect_model  # noqa: E402
from samples.export_llama8b import build_meta_llama, logits_only  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
H100X16 = ROOT / "samples" / "clusters" / "h100x16.yaml"


def _export(tmp: Path, layers: int | None, seq: int) -> tuple[Path, int]:
    import torch

    model = logits_only(build_meta_llama(layers))
    params = sum(p.numel() for p in model.parameters())
    path = tmp / "llama.onnx"
    export_weightless(model, (torch.zeros(1, seq, dtype=torch.int64),), path)
    return path, params


def test_weightless_export_writes_no_weights_and_counts_them_all(tmp_path):
    path, params = _export(tmp_path, layers=2, seq=64)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["llama.onnx"]  # no data file
    assert path.stat().st_size < 5_000_000  # 1.5 B parameters, a graph of ~1 MB
    proto = onnx.load(str(path), load_external_data=False)
    external = [t for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert len(external) == len(proto.graph.initializer) > 0
    report = inspect_model(str(path))
    assert report.params == params == 1_486_901_248
    assert report.has_weights is False

    p = plan(path, H100X16, PlanConfig(stages=2, strategy="pipedream", dtype="bf16"))
    bundle = tmp_path / "bundle"
    manifest = export(path, p, bundle)
    assert manifest.weights == "absent"
    assert len(manifest.stages) == 2
    assert not list(bundle.glob("*.data"))


@pytest.mark.slow
def test_llama3_8b_is_inspected_and_planned_without_its_weights(tmp_path):
    path, params = _export(tmp_path, layers=None, seq=2048)
    assert params == 8_030_261_248  # Llama-3-8B's published size
    r = subprocess.run(
        [sys.executable, "-m", "runners.cli", "inspect", str(path), "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    counted = json.loads(r.stdout)["params"]
    assert abs(counted - params) <= 0.001 * params
    p = plan(path, H100X16, PlanConfig(dtype="bf16", time_limit_s=5))
    assert p.model.params == counted and p.model.has_weights is False
    assert all(s.peak_memory_bytes <= s.memory_capacity_bytes for s in p.stages)
