"""Data x pipeline runs on real torch.distributed processes (gloo, CPU), four ranks at most.

Slow (each run starts up to four Python processes on a 2-core machine): marked `slow`,
run in CI. Models are the small samples; the point is the arithmetic of the replicas
(the global batch split, the bucketed all-reduce, ZeRO-1), checked against one process.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cost.cluster import cluster_from_dict
from exporters.bundle import export
from exporters.manifest import Manifest
from planner.api import plan
from planner.config import PlanConfig
from planner.graph.shapes import ShapeBindings
from runners.launch import run
from tests.killing import kill_one_rank_and_check

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
CPU4 = cluster_from_dict(
    {"name": "cpu4", "nodes": [{"name": "n0", "devices": "4x CPU", "link": "loopback"}]}
)
BATCH = {"mlp": 4, "gpt": 2, "resnet": 2}


def make_bundle(tmp: Path, model: str, dp: int, stages: int, **config) -> Path:
    cluster = (
        CPU4
        if dp * stages > 2
        else cluster_from_dict(
            {"name": "cpu2", "nodes": [{"name": "n0", "devices": "2x CPU", "link": "loopback"}]}
        )
    )
    cfg = PlanConfig(data_parallel=dp, stages=stages, microbatches=4, **config)
    source = ROOT / "samples" / "models" / f"{model}.onnx"
    p = plan(source, cluster, cfg, ShapeBindings(batch=BATCH[model]))
    assert p.layout.data_parallel == dp and len(p.stages) == stages
    bundle = tmp / f"{model}-{dp}x{stages}-{config.get('zero', 0)}"
    export(source, p, bundle)
    return bundle


@pytest.mark.parametrize("model", ["gpt", "resnet"])
def test_two_replicas_of_two_stages_train_like_one_process(tmp_path, model):
    """2 x 2 on four ranks: every replica's gradients after the all-reduce equal one
    process's over the whole global batch (rel <= 1e-4)."""
    bundle = make_bundle(tmp_path, model, 2, 2)
    manifest = Manifest.model_validate_json((bundle / "manifest.json").read_text())
    assert manifest.data_parallel == 2 and manifest.world_size == 4
    assert [r.ranks for r in manifest.replicas] == [[0, 1], [2, 3]]
    assert [s.ranks for s in manifest.stages] == [[0, 2], [1, 3]]
    result = run(bundle, steps=2, check=True)
    assert result.world_size == 4 and result.data_parallel == 2
    assert result.check.passed, result.check
    assert "2 replicas" in result.check.detail
    assert result.measured.throughput_samples_per_s == pytest.approx(
        2 * 4 * BATCH[model] / (result.measured.iteration_ms / 1e3)
    )


def test_zero1_trains_exactly_like_replicated_optimizer_state(tmp_path):
    """ZeRO-1 (ZeroRedundancyOptimizer) on 2 replicas: the same losses step after step as
    every replica holding the whole Adam state, and the same gradients as one process."""
    plain = run(make_bundle(tmp_path, "gpt", 2, 1), steps=4, check=True)
    sharded = run(make_bundle(tmp_path, "gpt", 2, 1, zero=1), steps=4, check=True)
    assert plain.check.passed and sharded.check.passed
    assert sharded.zero == 1 and plain.zero == 0
    assert len(sharded.losses) == 4
    assert sharded.losses == pytest.approx(plain.losses, rel=1e-5)
    assert sharded.losses[-1] < sharded.losses[0]


def test_replicas_infer_their_share_of_the_batch(tmp_path):
    bundle = make_bundle(tmp_path, "mlp", 2, 1)
    result = run(bundle, steps=1, mode="infer", check=True)
    assert result.check.passed, result.check
    assert "8 micro-batches" in result.check.detail  # 2 replicas x 4


def test_a_killed_rank_stops_every_replica(tmp_path):
    bundle = make_bundle(tmp_path, "mlp", 2, 2)
    kill_one_rank_and_check(bundle, 4, start_s=90)
