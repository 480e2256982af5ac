"""Schedules and simulator together, on generated schedules: the closed forms, and plans."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cost.links import LinkSpec
from planner.api import plan
from planner.config import PlanConfig
from planner.graph.shapes import ShapeBindings
from planner.schedule.build import build_schedule, hoist_sends
from planner.schedule.check import check_schedule
from planner.simulate.costs import SimCosts
from planner.simulate.engine import simulate
from planner.simulate.replay import simulate_plan

ROOT = Path(__file__).resolve().parents[1]
FREE = LinkSpec(name="free", bandwidth_GBps=1e12, latency_us=0.0)


def run(kind, p, m, *, tf=1.0, tb=2.0, v=1, wfrac=0.5, act=10):
    stages = p * v
    devices = [f"d{k % p}" for k in range(stages)]
    schedule = hoist_sends(
        build_schedule(
            kind,
            stage_device=devices,
            microbatches=m,
            virtual_stages=v,
            routes=[(("x",), ("x",))] * (stages - 1),
        )
    )
    check_schedule(schedule, semantics="eager")
    costs = SimCosts(
        forward_s=[tf / v] * stages,
        backward_s=[tb / v] * stages,
        weight_grad_fraction=[wfrac] * stages,
        link=lambda a, b: FREE,
        activation_bytes=[act] * stages,
    )
    return schedule, simulate(schedule, costs)


@pytest.mark.parametrize("kind", ["gpipe", "1f1b"])
@pytest.mark.parametrize("p, m", [(1, 1), (2, 4), (4, 8), (4, 3), (6, 12), (8, 32)])
def test_gpipe_and_1f1b_bubble_closed_form(kind, p, m):
    _, sim = run(kind, p, m)
    assert sim.iteration_s == pytest.approx((m + p - 1) * 3.0, rel=1e-12)
    assert sim.bubble_fraction == pytest.approx((p - 1) / (m + p - 1), abs=1e-12)


@pytest.mark.parametrize("p, m, v", [(2, 4, 2), (4, 8, 2), (4, 8, 4), (3, 6, 3), (4, 16, 2)])
def test_interleaved_bubble_is_one_vth(p, m, v):
    """Bubble time = (p - 1) / (v m) of the ideal time m (T_F + T_B) (Narayanan et al., SC 2021)."""
    _, sim = run("interleaved", p, m, v=v)
    ideal = m * 3.0
    assert (sim.iteration_s - ideal) / ideal == pytest.approx((p - 1) / (v * m), rel=1e-9)


@pytest.mark.parametrize("p, m", [(2, 4), (4, 8), (4, 16), (8, 16)])
def test_zero_bubble_h1_cuts_the_bubble_to_a_third(p, m):
    """T_F = T_B = T_W = 1: 1F1B idles 3(p - 1) per device, ZB-H1 (p - 1) (Qi et al., ICLR 2024)."""
    _, zb = run("zb", p, m, tf=1.0, tb=2.0, wfrac=0.5)
    _, ref = run("1f1b", p, m, tf=1.0, tb=2.0)
    ideal = 3.0 * m
    assert zb.iteration_s - ideal == pytest.approx((ref.iteration_s - ideal) / 3, rel=1e-9)


@pytest.mark.parametrize("p, m", [(4, 8), (4, 2), (6, 12)])
def test_peak_activation_memory(p, m):
    act = 10
    _, one = run("1f1b", p, m, act=act)
    _, gp = run("gpipe", p, m, act=act)
    _, zb = run("zb", p, m, act=act)
    for i in range(p):
        assert one.peak_memory[f"d{i}"] == min(p - i, m) * act
        assert gp.peak_memory[f"d{i}"] == m * act
    assert max(zb.peak_memory.values()) <= max(one.peak_memory.values())


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b", "zb", "interleaved"])
def test_every_schedule_plans_and_replays(tmp_path, schedule):
    p = plan(
        ROOT / "samples/models/gpt.onnx",
        ROOT / "samples/clusters/a100x4.yaml",
        PlanConfig(schedule=schedule, stages=4 if schedule != "interleaved" else None),
        ShapeBindings(batch=16),
    )
    assert p.schedule is not None and p.schedule.kind == schedule
    assert p.predicted.schedule == schedule
    check_schedule(p.schedule, semantics="eager")
    if schedule == "interleaved":
        assert p.schedule.virtual_stages == 2 and len(p.stages) == 2 * len(
            {s.device for s in p.stages}
        )
    report = simulate_plan(p)
    assert report.iteration_ms == pytest.approx(p.predicted.iteration_ms, rel=1e-9)
    if schedule in ("gpipe", "1f1b"):
        # free-ish links on one NVLink node: the simulator and the closed form agree closely
        assert p.predicted.iteration_ms == pytest.approx(
            p.predicted.analytic_iteration_ms, rel=0.02
        )


def test_auto_schedule_picks_the_fastest_that_fits():
    p = plan(
        ROOT / "samples/models/gpt.onnx",
        ROOT / "samples/clusters/hetero.yaml",
        PlanConfig(schedule="auto"),
        ShapeBindings(batch=64),
    )
    tried = {t.kind: t for t in p.simulation.tried}
    assert set(tried) == {"gpipe", "1f1b", "zb", "interleaved"}
    best = min((t for t in tried.values() if t.fits), key=lambda t: t.iteration_ms)
    assert p.predicted.schedule == best.kind
    assert p.predicted.iteration_ms == pytest.approx(best.iteration_ms)


def test_auto_microbatches_reaches_a_small_bubble():
    p = plan(
        ROOT / "samples/models/gpt.onnx",
        ROOT / "samples/clusters/a100x4.yaml",
        PlanConfig(auto_microbatches=True, stages=4),
        ShapeBindings(batch=16),
    )
    assert p.config.microbatches == 27  # 9 (p - 1): closed-form bubble (p - 1)/(m + p - 1) = 10%
    assert p.predicted.bubble_fraction < 0.2


def test_auto_microbatches_backs_off_when_memory_is_short(tmp_path):
    spec = tmp_path / "c.yaml"
    spec.write_text(
        "nodes:\n  - name: n0\n    devices: [{like: A100-80GB, memory_GB: 0.06, count: 4}]\n    link: NVLink3\n"
    )
    p = plan(
        ROOT / "samples/models/gpt.onnx",
        spec,
        PlanConfig(auto_microbatches=True, schedule="gpipe", stages=4),
        ShapeBindings(batch=16),
    )
    assert p.config.microbatches < 27
    assert all(d.peak_memory_bytes <= d.memory_capacity_bytes for d in p.simulation.per_device)


def test_cli_simulate_trace_and_png(tmp_path):
    plan_file = tmp_path / "plan.json"
    cmd = [sys.executable, "-m", "runners.cli"]
    r = subprocess.run(
        [
            *cmd,
            "plan",
            "samples/models/gpt.onnx",
            "-c",
            "samples/clusters/hetero.yaml",
            "--batch",
            "64",
            "--schedule",
            "zb",
            "-o",
            str(plan_file),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr
    trace, png = tmp_path / "t.json", tmp_path / "t.png"
    r = subprocess.run(
        [*cmd, "simulate", str(plan_file), "--trace", str(trace), "--png", str(png), "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    saved = json.loads(plan_file.read_text())
    assert report["iteration_ms"] == pytest.approx(saved["predicted"]["iteration_ms"], rel=1e-9)
    events = json.loads(trace.read_text())["traceEvents"]
    computes = [e for e in events if e.get("ph") == "X" and e["name"][0] in "FBW"]
    assert len(computes) == sum(
        1 for acts in saved["schedule"]["actions"].values() for a in acts if a["op"] in "FBW"
    )
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = subprocess.run(
        [*cmd, "simulate", str(tmp_path / "missing.json")], capture_output=True, text=True, cwd=ROOT
    )
    assert r.returncode == 2 and r.stderr.startswith("error: plan file not found")
