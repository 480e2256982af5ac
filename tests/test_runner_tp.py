"""Tensor-parallel runs on real torch.distributed processes (gloo, CPU): four ranks.

Slow (four Python processes on a 2-core machine): marked `slow`, run in CI. The stages
run their shards with `pipeplan.AllReduce` / `CopyToGroup` as autograd collectives over
the (dp, pp, tp) mesh's tensor-parallel group; `--check` compares inference with
onnxruntime on the source model and training gradients (the shards joined back) with one
process running the unsharded stages.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from exporters.bundle import export
from exporters.manifest import Manifest
from planner.api import plan
from planner.config import PlanConfig
from planner.graph.shapes import ShapeBindings
from runners.launch import run

ROOT = Path(__file__).resolve().parents[1]
CPU4 = ROOT / "samples" / "clusters" / "cpu4_profile.yaml"
pytestmark = pytest.mark.slow


def make_bundle(tmp: Path, source: Path, name: str, **config) -> Path:
    cfg = PlanConfig(tensor_parallel=2, microbatches=2, **config)
    p = plan(source, CPU4, cfg, ShapeBindings(batch=2))
    assert p.layout.tensor_parallel == 2 and p.layout.devices_used == 4
    bundle = tmp / name
    export(source, p, bundle)
    return bundle


def _check_both(bundle: Path) -> None:
    inference = run(bundle, steps=1, mode="infer", check=True)
    assert inference.check.passed, inference.check
    training = run(bundle, steps=2, check=True)
    assert training.world_size == 4 and training.tensor_parallel == 2
    assert training.check.passed, training.check
    assert training.losses[1] < training.losses[0]


def test_gpt_two_stages_of_two_shards(tmp_path):
    bundle = make_bundle(tmp_path, ROOT / "samples/models/gpt.onnx", "gpt", stages=2)
    manifest = Manifest.model_validate_json((bundle / "manifest.json").read_text())
    assert manifest.world_size == 4 and [s.ranks for s in manifest.stages] == [[0], [2]]
    assert [[f.device for f in s.tensor_files] for s in manifest.stages] == [
        ["n0.0", "n0.1"],
        ["n0.2", "n0.3"],
    ]
    _check_both(bundle)


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_llama_grouped_query_attention_and_swiglu(tmp_path, exporter):
    """transformers' Llama (4 query heads over 2 KV heads, SwiGLU), random weights."""
    from tests import corpus

    source = corpus.export(corpus.build("llama"), exporter, tmp_path / "llama.onnx")
    bundle = make_bundle(tmp_path, source, "llama", stages=2)
    manifest = Manifest.model_validate_json((bundle / "manifest.json").read_text())
    sharded = {p for s in manifest.stages for p in s.sharded_parameters}
    assert any("k_proj" in p for p in sharded) and any("gate_proj" in p for p in sharded)
    _check_both(bundle)


def test_gpt_two_replicas_of_two_shards(tmp_path):
    bundle = make_bundle(tmp_path, ROOT / "samples/models/gpt.onnx", "gpt-dp", data_parallel=2)
    manifest = Manifest.model_validate_json((bundle / "manifest.json").read_text())
    assert manifest.data_parallel == 2 and manifest.tensor_parallel == 2
    assert [r.ranks for r in manifest.replicas] == [[0], [2]]
    result = run(bundle, steps=2, check=True)
    assert result.check.passed, result.check
    assert "2 replicas" in result.check.detail
