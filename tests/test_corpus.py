"""Real exporters' output of models nobody here wrote (`tests/corpus.py`), end to end.

For each of 7 architectures x 2 exporters: `inspect` counts torch's parameters and its
FLOPs are within 10% of `torch.utils.flop_counter`; a 2-stage plan exports to stage files
whose chain in onnxruntime equals the whole model; `pipeplan run --check` on 2 processes
passes in inference (outputs against onnxruntime) and training (gradients against one
process). Plus: training pipeplan's run of a TorchScript export (whose LayerNorm weights
the exporter merged) matches training the torch model itself, loss for loss.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from exporters.manifest import Manifest
from planner.graph.inspect import inspect_model
from planner.graph.shapes import ShapeBindings
from tests import corpus
from tests.test_cli_errors import pipeplan
from tests.test_export import feeds_for, run_pipeline

ROOT = Path(__file__).resolve().parents[1]
CASES = [(m, e) for m in corpus.MODELS for e in corpus.EXPORTERS]
IDS = [f"{m}-{e}" for m, e in CASES]
_BUILT: dict[str, corpus.Built] = {}
_FILES: dict[tuple[str, str], Path] = {}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("corpus")


def built(name: str) -> corpus.Built:
    if name not in _BUILT:
        _BUILT[name] = corpus.build(name)
    return _BUILT[name]


def exported(folder: Path, name: str, exporter: str) -> Path:
    key = (name, exporter)
    if key not in _FILES:
        _FILES[key] = corpus.export(built(name), exporter, folder / f"{name}_{exporter}.onnx")
    return _FILES[key]


def cli(*args: str) -> subprocess.CompletedProcess:
    return pipeplan(*args, timeout=600)


def ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "exporter"), CASES, ids=IDS)
def test_inspect_counts_torchs_parameters_and_flops(folder, name, exporter):
    model = built(name)
    path = exported(folder, name, exporter)
    report = inspect_model(path, ShapeBindings(batch=corpus.BATCH))
    expected = model.torch_params
    if exporter == "torchscript":  # no tensor kinds recorded: a float buffer written and
        written = {t.name for t in onnx.load(str(path), load_external_data=False).graph.initializer}
        expected += sum(n for b, n in model.float_buffers.items() if b in written)  # read as
        # data (a rotary embedding's inv_freq) is indistinguishable from a weight
    assert report.params == expected, (report.params, model.torch_params, report.warnings)
    reference = corpus.torch_flops(model)
    assert abs(report.forward_flops / reference - 1) <= 0.10, (report.forward_flops, reference)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "exporter"), CASES, ids=IDS)
def test_two_stages_export_chain_and_run(folder, tmp_path, name, exporter):
    model = exported(folder, name, exporter)
    plan, bundle = tmp_path / "plan.json", tmp_path / "bundle"
    batch = str(corpus.BATCH)
    ok(cli("plan", str(model), "-c", "samples/clusters/cpu2.yaml", "--batch", batch,
           "--stages", "2", "-o", str(plan)))  # fmt: skip
    ok(cli("export", str(model), str(plan), "-o", str(bundle)))
    manifest = Manifest.model_validate_json((bundle / "manifest.json").read_text())
    assert len(manifest.stages) == 2
    feeds = feeds_for(manifest)
    reference = ort.InferenceSession(str(model)).run(None, feeds)
    got = run_pipeline(bundle, manifest, feeds)
    for spec, ref in zip(manifest.graph_outputs, reference, strict=True):
        assert np.abs(got[spec.name] - ref).max() <= 1e-4, spec.name
    for mode in ("infer", "train"):
        report = tmp_path / f"run_{mode}.json"
        ok(cli("run", str(bundle), "--steps", "2", "--mode", mode, "--check", "--report",
               str(report)))  # fmt: skip
        assert json.loads(report.read_text())["check"]["passed"]


def _train_torch(model: torch.nn.Module, ids: np.ndarray, targets: np.ndarray, steps, m, mb):
    """What the runner does: per step, m micro-batches, loss = cross-entropy / m summed,
    one Adam step (lr 1e-3) over the model's parameters (ties once)."""
    model = model.eval()  # the export is of the eval-mode model (no dropout)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for step in range(steps):
        total = 0.0
        for micro in range(m):
            rows = slice((step * m + micro) * mb, (step * m + micro + 1) * mb)
            logits = model(torch.from_numpy(ids[rows]))
            loss = (
                torch.nn.functional.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]),
                    torch.from_numpy(targets[rows]).reshape(-1),
                )
                / m
            )
            loss.backward()
            total += float(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(total)
    return losses


@pytest.mark.slow
@pytest.mark.parametrize("keep", [False, True], ids=["separated", "kept"])
def test_training_matches_the_torch_model_despite_merged_weights(tmp_path, keep):
    """GPT-2's LayerNorm weights (ones) and biases (zeros) are merged by the TorchScript
    exporter; separated again, pipeplan's two-stage training follows torch's loss for loss
    (rel <= 1e-4); kept as the exporter wrote them (one shared weight, all-reduced), it
    does not: the negative control."""
    model = corpus.build("gpt2", seed=1)
    path = corpus.export(model, "torchscript", tmp_path / "gpt2.onnx")
    steps, m, mb = 4, 2, corpus.BATCH
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 256, (steps * m * mb, corpus.SEQUENCE)).astype(np.int64)
    targets = rng.integers(0, 256, (steps * m * mb, corpus.SEQUENCE)).astype(np.int64)
    np.savez(tmp_path / "data.npz", x=ids, targets=targets)
    plan, bundle, report = tmp_path / "plan.json", tmp_path / "bundle", tmp_path / "run.json"
    extra = ["--keep-merged-weights"] if keep else []
    ok(cli("plan", str(path), "-c", "samples/clusters/cpu2.yaml", "--batch", str(mb),
           "--stages", "2", "-m", str(m), "-o", str(plan), *extra))  # fmt: skip
    ok(cli("export", str(path), str(plan), "-o", str(bundle)))
    ok(cli("run", str(bundle), "--steps", str(steps), "--data", str(tmp_path / "data.npz"),
           "--report", str(report)))  # fmt: skip
    ours = json.loads(report.read_text())["losses"]
    theirs = _train_torch(model.module, ids, targets, steps, m, mb)
    assert len(ours) == steps
    close = np.allclose(ours, theirs, rtol=1e-4, atol=0)
    if keep:
        assert ours[0] == pytest.approx(theirs[0], rel=1e-4)  # same start...
        assert not close, (ours, theirs)  # ...then the shared LayerNorm weights diverge
    else:
        assert close, (ours, theirs)
