"""Data x pipeline plans: the layout search, its pricing, and its bad input.

The search (`planner.parallel.search`) must never pick a layout worse, by the closed form,
than any fixed (replicas, stages) a user could ask for; the all-reduce and ZeRO-1 are
priced by their formulas (`cost.collectives`, `cost.memory`); the plan lists every
replica's devices; `whatif` reads the same search's answer.
"""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cost.cluster import cluster_from_dict, load_cluster
from cost.collectives import DEFAULT_BUCKET_BYTES
from cost.links import PRESETS
from cost.memory import optimizer_state_bytes_per_param
from planner.api import plan, solve_pipeline
from planner.assemble import microbatch_size
from planner.config import PlanConfig
from planner.graph.inspect import load_model
from planner.graph.shapes import ShapeBindings
from planner.parallel.search import layout_options, search_layouts
from planner.partition.problem import build_problem
from planner.whatif.analysis import whatif

ROOT = Path(__file__).resolve().parents[1]
GPT = ROOT / "samples" / "models" / "gpt.onnx"
H100X16 = ROOT / "samples" / "clusters" / "h100x16.yaml"

#: A device whose memory binds for the small models below (0.02 GB).
SMALL = {
    "name": "small",
    "peak_tflops": {"fp32": 2.0},
    "memory_GB": 0.02,
    "bandwidth_GBps": 100.0,
}
KINDS = ["A100-80GB", "V100-32GB", "T4", SMALL]
LINKS = ["NVLink3", "PCIe4", "100GbE", "loopback"]


def _mlp_file(tmp_path: Path, rng: random.Random, i: int) -> tuple[Path, int]:
    """A random MLP exported by torch.onnx (TorchScript exporter), and its batch size."""
    widths = [rng.choice([64, 256, 512, 1024]) for _ in range(rng.randint(3, 6))]
    layers: list[torch.nn.Module] = []
    for a, b in zip(widths, widths[1:], strict=False):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers)
    batch = rng.choice([4, 16, 64])
    path = tmp_path / f"mlp{i}.onnx"
    torch.onnx.export(model, (torch.randn(batch, widths[0]),), str(path), dynamo=False)
    return path, batch


def _cluster(rng: random.Random, i: int):
    nodes = []
    for n in range(rng.randint(1, 2)):
        kind = rng.choice(KINDS)
        count = rng.choice([1, 2, 2, 3, 4])
        nodes.append({"name": f"n{n}", "devices": [kind] * count, "link": rng.choice(LINKS)})
    return cluster_from_dict(
        {"name": f"random{i}", "nodes": nodes, "inter_node_link": rng.choice(["IB-HDR", "100GbE"])}
    )


def _closed_form(p) -> float:
    return next(t for t in p.layouts_tried if t.chosen).throughput_samples_per_s


@pytest.mark.parametrize("seed", range(10))
def test_auto_layout_is_never_worse_than_any_fixed_layout(tmp_path, seed):
    """On random MLPs and clusters: auto >= every fixed (dp, stages) that plans, by the
    closed form the search ranks with (tail with the all-reduce included)."""
    rng = random.Random(seed)
    model, batch = _mlp_file(tmp_path, rng, seed)
    cluster = _cluster(rng, seed)
    base = PlanConfig(
        microbatches=rng.choice([1, 2, 4, 8]),
        zero=rng.choice([0, 1]),
        dtype=rng.choice(["fp32", "bf16"]),
        time_limit_s=5,
    )
    bindings = ShapeBindings(batch=batch)
    try:
        auto = plan(model, cluster, base, bindings)
    except Exception as exc:  # nothing fits at all: then no fixed layout may fit either
        auto = None
        reason = str(exc)
    n = cluster.num_devices
    checked = 0
    for dp in [d for d in range(1, n + 1) if n % d == 0]:
        for stages in range(1, n // dp + 1):
            cfg = base.model_copy(update={"data_parallel": dp, "stages": stages})
            try:
                fixed = plan(model, cluster, cfg, bindings)
            except Exception:
                continue
            assert auto is not None, f"dp={dp} stages={stages} fits but auto failed: {reason}"
            assert fixed.layout.data_parallel == dp
            assert _closed_form(auto) >= _closed_form(fixed) * (1 - 1e-9), (dp, stages)
            checked += 1
    assert auto is None or checked >= 1


def _big_cluster(rng: random.Random, i: int):
    nodes = []
    for n in range(rng.randint(2, 3)):
        kind = rng.choice(KINDS)
        nodes.append(
            {"name": f"n{n}", "devices": [kind] * rng.choice([2, 4]), "link": rng.choice(LINKS)}
        )
    return cluster_from_dict(
        {"name": f"big{i}", "nodes": nodes, "inter_node_link": rng.choice(["IB-HDR", "100GbE"])}
    )


@pytest.mark.parametrize("seed", range(8))
def test_bounds_are_valid_and_pruning_keeps_the_best(tmp_path, seed):
    """Every candidate solved (no pruning): each one's bound is at least its throughput,
    and the pruned search finds the same best throughput."""
    rng = random.Random(100 + seed)
    model, batch = _mlp_file(tmp_path, rng, seed)
    cluster = _big_cluster(rng, seed)
    config = PlanConfig(microbatches=rng.choice([1, 4, 8]), zero=rng.choice([0, 1]), time_limit_s=5)
    mg, lg = load_model(model, ShapeBindings(batch=batch))
    mb = microbatch_size(mg)
    options = layout_options(cluster, config, mb)

    def build(o):
        return build_problem(mg, lg, o.layout.sub, o.config, o.ring)

    def solve(o, problem):
        return solve_pipeline(mg, lg, o.layout.sub, o.config, o.ring, problem=problem)

    every = search_layouts(options, build, solve, mb, prune=False)
    pruned = search_layouts(options, build, solve, mb)
    assert len(every) == len(options) >= 2
    for t in every:
        assert t.bound_throughput >= t.throughput(mb) * (1 - 1e-9), t.option.layout.description
    assert pruned[0].throughput(mb) == pytest.approx(every[0].throughput(mb), rel=1e-9)


def test_zero1_shards_optimizer_state_by_the_replica_count():
    """ZeRO-1 on 4 replicas: each device holds weights + gradients + 1/4 of Adam's state."""
    cluster = cluster_from_dict(
        {"name": "a4", "nodes": [{"name": "n0", "devices": "4x A100-80GB", "link": "NVLink3"}]}
    )
    bindings = ShapeBindings(batch=8)
    full = plan(GPT, cluster, PlanConfig(data_parallel=4), bindings)
    sharded = plan(GPT, cluster, PlanConfig(data_parallel=4, zero=1), bindings)
    assert full.layout.zero == 0 and sharded.layout.zero == 1
    mg, _ = load_model(GPT, bindings)
    trainable = sum(p.numel for p in mg.params.values() if p.trainable)
    state = optimizer_state_bytes_per_param("fp32", "adam")  # m and v: 8 bytes
    assert len(full.stages) == len(sharded.stages) == 1
    saved = full.stages[0].params_state_bytes - sharded.stages[0].params_state_bytes
    assert saved == pytest.approx(trainable * state * (1 - 1 / 4), rel=1e-6)
    # the sharded step is a quarter of the step; the all-gather of the weights is added
    assert sharded.stages[0].sync_ms > full.stages[0].sync_ms > 0


def test_allreduce_is_the_ring_formula_over_the_ring_link():
    """Two H100 nodes, 8 replicas of a 2-stage pipeline whose stages sit on different
    nodes: each stage's ring stays inside its node (NVLink4), and its sync time is
    2(r-1)/r G / beta + 2(r-1) alpha G / bucket (`cost.collectives`)."""
    bindings = ShapeBindings(batch=8)
    p = plan(GPT, load_cluster(H100X16), PlanConfig(data_parallel=8, stages=2), bindings)
    assert p.layout.data_parallel == 8 and len(p.replicas) == 8
    mg, lg = load_model(GPT, bindings)
    nv = PRESETS["NVLink4"]
    r = 8
    for st, devices in zip(p.stages, zip(*p.replicas, strict=True), strict=True):
        nodes = {d.split(".")[0] for d in devices}
        assert len(nodes) == 1, "a stage's replicas share a node: the ring is on NVLink"
        names = {q for layer in st.layers for q in lg.layer_named(layer).params}
        g = sum(mg.params[q].numel for q in names if mg.params[q].trainable) * 4
        expect = 2 * (r - 1) / r * g / nv.effective_bytes_per_s
        expect += 2 * (r - 1) * nv.latency_us * 1e-6 * g / DEFAULT_BUCKET_BYTES
        assert math.isclose(st.sync_ms * 1e-3, expect, rel_tol=1e-9)
    assert {p.replicas[0][0].split(".")[0], p.replicas[0][1].split(".")[0]} == {"n0", "n1"}


def test_auto_beats_one_pipeline_and_explains_it():
    """GPT on 16 H100: replicas win over one long pipeline, and the plan says by how much."""
    p = plan(GPT, load_cluster(H100X16), PlanConfig(), ShapeBindings(batch=8))
    assert p.layout.data_parallel > 1
    assert p.layout.global_batch == p.layout.data_parallel * 8 * 8
    assert p.predicted.global_batch == p.layout.global_batch
    pipeline_only = next(t for t in p.layouts_tried if t.data_parallel == 1)
    chosen = next(t for t in p.layouts_tried if t.chosen)
    assert chosen.throughput_samples_per_s > pipeline_only.throughput_samples_per_s
    assert any(line.startswith("pipeline only:") for line in p.explanation)
    # replicas are disjoint, identical in kinds, and replica 0 is the stages' devices
    used = [d for rep in p.replicas for d in rep]
    assert len(used) == len(set(used))
    assert p.replicas[0] == [s.device for s in p.stages]
    pp = plan(GPT, load_cluster(H100X16), PlanConfig(parallel="pp"), ShapeBindings(batch=8))
    assert pp.layout.data_parallel == 1 and pp.replicas == [[s.device for s in pp.stages]]


def test_fixed_global_batch_is_split_over_replicas():
    cluster = cluster_from_dict(
        {"name": "a4", "nodes": [{"name": "n0", "devices": "4x A100-80GB", "link": "NVLink3"}]}
    )
    p = plan(GPT, cluster, PlanConfig(global_batch=64), ShapeBindings(batch=8))
    assert p.layout.batch == "fixed-global" and p.layout.global_batch == 64
    assert p.layout.data_parallel * p.layout.microbatches_per_replica * 8 == 64
    assert all(t.data_parallel in (1, 2, 4, 8) for t in p.layouts_tried)


def test_whatif_rows_are_the_plan_search():
    """One model of data parallelism: whatif's row is `plan`'s answer on that cluster."""
    cluster = load_cluster(H100X16)
    cfg = PlanConfig()
    report = whatif(GPT, cluster, cfg, ShapeBindings(batch=8), default_sweep=False, cache=False)
    row = report.rows[0]
    p = plan(GPT, cluster, cfg, ShapeBindings(batch=8))
    assert row.replicas == p.layout.data_parallel
    assert row.throughput_samples_per_s == pytest.approx(p.predicted.throughput_samples_per_s)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "runners.cli", *args], capture_output=True, text=True, cwd=ROOT
    )


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (["--dp", "3"], "--dp 3 does not divide the cluster's 16 devices"),
        (["--dp", "2", "--parallel", "pp"], "--dp needs --parallel auto"),
        (["--zero", "2"], "zero must be 0 or 1"),
        (["--zero", "1", "--parallel", "pp"], "--zero 1 shards over data-parallel replicas"),
        (["--global-batch", "12"], "not a multiple of the micro-batch size 8"),
        (["--global-batch", "64", "--microbatches", "auto"], "not both"),
        (["--global-batch", "8", "--dp", "2"], "does not split over --dp 2 replicas"),
        (["--parallel", "dp"], "parallel"),
    ],
)
def test_bad_layout_flags_are_one_error_line_exit_2(tmp_path, flags, fragment):
    out = tmp_path / "plan.json"
    r = _cli("plan", str(GPT), "-c", str(H100X16), "--batch", "8", "-o", str(out), *flags)
    assert r.returncode == 2, r.stderr
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    assert fragment in lines[0]
    assert not out.exists()


def test_plan_json_has_layout_and_replicas(tmp_path):
    out = tmp_path / "plan.json"
    r = _cli("plan", str(GPT), "-c", str(H100X16), "--batch", "8", "--dp", "4", "-o", str(out))
    assert r.returncode == 0, r.stderr
    data = json.loads(out.read_text())
    assert data["layout"]["data_parallel"] == 4
    assert data["layout"]["pipeline_stages"] == len(data["replicas"][0])
    assert len(data["replicas"]) == 4
    assert "layout: 4 replicas" in r.stdout
