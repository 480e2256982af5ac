"""Full activation recomputation (`--recompute`) costs time as well as saving memory.

The planner prices one more forward per micro-batch in each stage's backward (the closed
form, the ILP and the simulator all read `Problem.layers[*].backward_s`); the runner
really recomputes (`torch.utils.checkpoint` around each stage), so gradients stay exact
and the measured backward grows.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cost.cluster import load_cluster
from cost.errors import PipeplanError
from exporters.bundle import export
from planner.api import plan
from planner.config import PlanConfig
from planner.graph.inspect import load_model
from planner.graph.shapes import ShapeBindings
from planner.partition.problem import build_problem
from planner.simulate.replay import simulate_plan

ROOT = Path(__file__).resolve().parents[1]
GPT = ROOT / "samples" / "models" / "gpt.onnx"
A100X4 = ROOT / "samples" / "clusters" / "a100x4.yaml"
CPU2 = ROOT / "samples" / "clusters" / "cpu2.yaml"


def test_each_layer_pays_one_more_forward_in_its_backward():
    mg, lg = load_model(GPT, ShapeBindings(batch=8))
    cluster = load_cluster(A100X4)
    plain = build_problem(mg, lg, cluster, PlanConfig())
    recomputed = build_problem(mg, lg, cluster, PlanConfig(recompute=True))
    for a, b in zip(plain.layers, recomputed.layers, strict=True):
        assert b.forward_s == a.forward_s
        assert b.weight_grad_s == a.weight_grad_s  # W needs no activations
        for g in range(len(a.backward_s)):
            assert b.backward_s[g] == pytest.approx(a.backward_s[g] + a.forward_s[g])
    inference = PlanConfig(recompute=True, objective="latency")
    assert (
        build_problem(mg, lg, cluster, inference).layers[0].backward_s == plain.layers[0].backward_s
    )


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
def test_closed_form_and_simulator_agree_with_recompute(schedule):
    """Equal stages on one NVLink node: the closed form equals the simulator, with and
    without recomputation, and each stage's backward grows by exactly its forward."""
    kw = dict(schedule=schedule, stages=4, microbatches=8, strategy="uniform")
    bindings = ShapeBindings(batch=16)
    plain = plan(GPT, A100X4, PlanConfig(**kw), bindings)
    recomputed = plan(GPT, A100X4, PlanConfig(**kw, recompute=True), bindings)
    assert [s.layers for s in plain.stages] == [s.layers for s in recomputed.stages]
    for a, b in zip(plain.stages, recomputed.stages, strict=True):
        assert b.backward_ms == pytest.approx(a.backward_ms + a.forward_ms)
        assert b.forward_ms == pytest.approx(a.forward_ms)
        if a.in_flight_microbatches > 1:  # one in flight: recomputing saves nothing
            assert b.activation_bytes < a.activation_bytes
    for p in (plain, recomputed):
        assert p.predicted.iteration_ms == pytest.approx(
            p.predicted.analytic_iteration_ms, rel=0.02
        )
        assert simulate_plan(p).iteration_ms == pytest.approx(p.predicted.iteration_ms, rel=1e-9)
    # the bottleneck stage's extra forward, once per micro-batch, is the iteration's growth
    bottleneck = max(plain.stages, key=lambda s: s.forward_ms + s.backward_ms)
    grew = recomputed.predicted.iteration_ms - plain.predicted.iteration_ms
    assert grew >= 8 * bottleneck.forward_ms * 0.9


def test_recompute_is_chosen_only_where_it_pays():
    """Where memory does not bind, recomputation is pure cost: slower, never faster."""
    bindings = ShapeBindings(batch=16)
    plain = plan(GPT, A100X4, PlanConfig(stages=2), bindings)
    recomputed = plan(GPT, A100X4, PlanConfig(stages=2, recompute=True), bindings)
    assert recomputed.predicted.iteration_ms > plain.predicted.iteration_ms
    peak = max(s.peak_memory_bytes for s in recomputed.stages)
    assert peak < max(s.peak_memory_bytes for s in plain.stages)


def test_zero_bubble_with_recompute_is_refused_and_auto_skips_it():
    bindings = ShapeBindings(batch=16)
    with pytest.raises(PipeplanError, match="--recompute with --schedule zb"):
        plan(GPT, A100X4, PlanConfig(schedule="zb", recompute=True, stages=2), bindings)
    p = plan(GPT, A100X4, PlanConfig(schedule="auto", recompute=True, stages=2), bindings)
    assert p.schedule.kind != "zb"
    assert "zb" not in {t.kind for t in p.simulation.tried}


@pytest.mark.slow
def test_runner_recomputes_exactly_and_its_backward_grows(tmp_path):
    """Two processes on this CPU: gradients with recomputation equal one process's (the
    check), and the measured backward per micro-batch grows as the plan predicts."""
    from runners.launch import run

    reports = {}
    for recompute in (False, True):
        cfg = PlanConfig(stages=2, microbatches=4, strategy="greedy", recompute=recompute)
        p = plan(GPT, CPU2, cfg, ShapeBindings(batch=8))
        bundle = tmp_path / f"bundle_{recompute}"
        export(GPT, p, bundle)
        result = run(bundle, steps=6, check=True)
        assert result.check.passed, result.check
        reports[recompute] = (p, result)
    (p0, r0), (p1, r1) = reports[False], reports[True]
    for a, b in zip(r0.measured.per_stage, r1.measured.per_stage, strict=True):
        # predicted growth is one forward; measured: at least a third of the measured forward
        assert b.backward_ms > a.backward_ms + a.forward_ms / 3, (a, b)
    assert p1.predicted.iteration_ms > p0.predicted.iteration_ms
