"""Checks that cannot lie and flags that cannot be silently ignored (issue 14)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from runners.reference import GRADIENT_TOLERANCE, compare_gradients, ranks_threads
from tests.test_cli_errors import assert_one_error_line, pipeplan
from tests.test_unknown_shapes import _nonzero_model

ROOT = Path(__file__).resolve().parents[1]
MLP = str(ROOT / "samples" / "models" / "mlp.onnx")


def test_an_unknown_dim_name_is_an_error():
    assert_one_error_line(
        pipeplan("inspect", MLP, "--batch", "2", "--dim", "sequence=16"),
        "--dim sequence",
        "named: batch",
    )


def test_batch_on_a_fixed_batch_model_is_an_error(tmp_path):
    path = _nonzero_model(tmp_path / "fixed.onnx")  # input x: [4, 8]
    assert_one_error_line(pipeplan("inspect", str(path), "--batch", "2"), "fixed at 4", "'x'")
    assert pipeplan("inspect", str(path), "--batch", "4").returncode == 0  # agrees: fine
    assert pipeplan("inspect", str(path)).returncode == 0


@pytest.mark.parametrize(
    "length, fragment",
    [("1024000.0", "not a non-negative integer"), ("16", "needs 256 bytes")],
)
def test_malformed_external_data_numbers_are_refused_at_load(tmp_path, length, fragment):
    path = _nonzero_model(tmp_path / "m.onnx")
    model = onnx.load(str(path))
    onnx.save(model, str(path), save_as_external_data=True, location="m.data",
              size_threshold=0)  # fmt: skip
    model = onnx.load(str(path), load_external_data=False)
    for t in model.graph.initializer:
        for entry in t.external_data:
            if entry.key == "length":
                entry.value = length
    onnx.save(model, str(path))
    for command in ("inspect", "plan"):
        extra = ["-c", str(ROOT / "samples/clusters/cpu2.yaml")] if command == "plan" else []
        assert_one_error_line(pipeplan(command, str(path), *extra), "a.weight", fragment)


def test_the_manifest_names_its_model_absolutely_and_check_fails_without_it(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(MLP, work / "mlp.onnx")
    env = os.environ | {"PYTHONPATH": str(ROOT)}

    def cli(*args, cwd):
        return subprocess.run([sys.executable, "-m", "runners.cli", *args], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=300)  # fmt: skip

    plan = cli("plan", "mlp.onnx", "-c", str(ROOT / "samples/clusters/cpu2.yaml"), "--batch",
               "4", "--stages", "2", "--strategy", "greedy", "-o", "plan.json", cwd=work)  # fmt: skip
    assert plan.returncode == 0, plan.stderr
    export = cli("export", "mlp.onnx", "plan.json", "-o", "bundle", cwd=work)
    assert export.returncode == 0, export.stderr
    manifest = json.loads((work / "bundle" / "manifest.json").read_text())
    assert manifest["model_path"] == str((work / "mlp.onnx").resolve())
    (work / "mlp.onnx").rename(work / "moved.onnx")
    result = cli("run", str(work / "bundle"), "--check", "--mode", "infer", cwd=tmp_path)
    assert_one_error_line(result, "needs the source model", "mlp.onnx")


def test_gradient_scale_is_the_steps_for_near_zero_tensors():
    rng = np.random.default_rng(0)
    big = rng.standard_normal((64, 64)).astype(np.float32)
    tiny = (rng.standard_normal(64) * 1e-9).astype(np.float32)
    ref = {"0/w": big, "0/b": tiny}
    # rounding noise on a near-zero gradient: 100% of itself, 1e-9 of the step's scale
    noisy = {"0/w": big.copy(), "0/b": tiny * 2}
    _, rel, missing = compare_gradients(noisy, ref)
    assert not missing and rel <= GRADIENT_TOLERANCE
    # a real error in a large tensor still fails
    wrong = {"0/w": big * 1.01, "0/b": tiny}
    assert compare_gradients(wrong, ref)[1] > GRADIENT_TOLERANCE
    # and one a tensor only one side has is reported
    assert compare_gradients({"0/w": big}, ref)[2] == ["0/b"]


def test_the_reference_runs_with_the_ranks_threads(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    with ranks_threads():
        assert torch.get_num_threads() == 1  # what launch gives each rank unless set
    assert torch.get_num_threads() == before
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    with ranks_threads():
        assert torch.get_num_threads() == 2
