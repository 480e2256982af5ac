"""`cost.timings` and `plan --timings`: where planning time goes, phase by phase."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from cost.timings import phase, recording
from planner.api import plan
from planner.config import PlanConfig
from planner.graph.shapes import ShapeBindings
from tests.test_cli_errors import pipeplan

ROOT = Path(__file__).resolve().parents[1]
PHASES = ["load", "price", "layers", "tensor", "problem", "baselines", "milp build", "bound",
          "milp solve", "simulate", "assemble"]  # fmt: skip
#: a chain answered by the dynamic programme: no MILP
DP_PHASES = ["load", "price", "layers", "tensor", "problem", "baselines", "chain dp", "simulate",
             "assemble"]  # fmt: skip


def test_phases_are_exclusive_and_accumulate():
    with recording() as phases:
        with phase("outer"):
            time.sleep(0.01)
            with phase("inner"):
                time.sleep(0.2)
            time.sleep(0.01)
        with phase("inner"):
            time.sleep(0.01)
    assert list(phases) == ["outer", "inner"]
    assert 0.02 <= phases["outer"] < 0.15  # the inner 200 ms are not the outer's
    assert phases["inner"] >= 0.21


def test_nothing_is_recorded_outside_a_recording():
    with phase("alone"):
        pass
    with recording() as phases:
        pass
    assert phases == {}


@pytest.mark.parametrize("chain_dp", [True, False])
def test_a_plan_reports_every_phase_of_its_data_path(chain_dp):
    with recording() as phases:
        plan(
            ROOT / "samples/models/gpt.onnx",
            ROOT / "samples/clusters/mixed.yaml",
            PlanConfig(chain_dp=chain_dp),
            ShapeBindings(batch=8),
        )
    assert list(phases) == (DP_PHASES if chain_dp else PHASES)
    assert all(v >= 0 for v in phases.values())


def test_cli_timings_keep_json_stdout_clean():
    r = pipeplan(
        "plan", str(ROOT / "samples/models/mlp.onnx"), "-c",
        str(ROOT / "samples/clusters/mixed.yaml"), "--batch", "8", "--json", "--timings",
        "--no-chain-dp",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    json.loads(r.stdout)
    assert "planning time by phase" in r.stderr
    for name in ("load", "milp solve", "total"):
        assert name in r.stderr
