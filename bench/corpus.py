"""The exporter corpus end to end, as a table (issue 13; tests/test_corpus.py asserts it).

For each model of `tests/corpus.py` (transformers Llama, BERT, GPT-2; timm ViT-S,
ConvNeXt-T, EfficientNet-B0, ResNet-50; random weights, no download) x both torch
exporters: torch's parameter count against `inspect`'s, the exporter merges found and
separated, the weight-only nodes, FLOPs against `torch.utils.flop_counter`, a 2-stage
plan on `cpu2.yaml` (tensors routed across the cut), the stage chain in onnxruntime
against the whole model (max abs), and `pipeplan run --check` on 2 processes in
inference and training (max rel). Prints a markdown table.

    python bench/corpus.py [--only NAME] [--no-run] [--defaults]

`--defaults` exports with the exporters' default settings instead of the training recipe
(what pipeplan meets when a user did not follow the README).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

from exporters.bundle import export  # noqa: E402
from planner.api import plan  # noqa: E402
from planner.config import PlanConfig  # noqa: E402
from planner.graph.inspect import inspect_model  # noqa: E402
from planner.graph.shapes import ShapeBindings  # noqa: E402
from runners.launch import run  # noqa: E402
from tests import corpus  # noqa: E402
from tests.test_export import feeds_for, run_pipeline  # noqa: E402

HEADER = (
    "| model | exporter | params torch | params pipeplan | merges separated | weight nodes "
    "| FLOPs / torch | routed tensors | chain max abs | run infer (max rel) "
    "| run train (max rel) |"
)


def _export_default(built: corpus.Built, exporter: str, path: Path) -> Path:
    """The exporters' defaults (dynamo optimize=True; TorchScript constant folding)."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            torch.onnx.export(built.module, built.example, str(path), dynamo=True,
                              input_names=["x"], output_names=["y"])  # fmt: skip
        else:
            torch.onnx.export(built.module, built.example, str(path), dynamo=False,
                              opset_version=17, input_names=["x"], output_names=["y"])  # fmt: skip
    return path


def _case(name: str, exporter: str, folder: Path, runs: bool, default: bool) -> str:
    built = corpus.build(name)
    path = folder / f"{name}_{exporter}.onnx"
    path = (
        _export_default(built, exporter, path) if default else corpus.export(built, exporter, path)
    )
    bindings = ShapeBindings(batch=corpus.BATCH)
    report = inspect_model(path, bindings)
    flops = report.forward_flops / corpus.torch_flops(built)
    p = plan(path, ROOT / "samples/clusters/cpu2.yaml", PlanConfig(stages=2), bindings)
    bundle = folder / f"{name}_{exporter}_bundle"
    manifest = export(path, p, bundle)
    feeds = feeds_for(manifest)
    reference = ort.InferenceSession(str(path)).run(None, feeds)
    got = run_pipeline(bundle, manifest, feeds)
    chain = max(
        float(np.abs(got[s.name] - r).max())
        for s, r in zip(manifest.graph_outputs, reference, strict=True)
    )
    checks = []
    for mode in ("infer", "train"):
        if not runs:
            checks.append("-")
            continue
        result = run(bundle, steps=2, mode=mode, check=True)
        c = result.check
        checks.append(f"{'pass' if c.passed else 'FAIL'} ({c.max_rel_diff:.1e})")
    written = {t.name for t in onnx.load(str(path), load_external_data=False).graph.initializer}
    note = ""
    if report.params != built.torch_params:
        buffers = sum(n for b, n in built.float_buffers.items() if b in written)
        note = f" (+{buffers:,} float buffer)" if buffers else " (differs)"
    routed = len(p.routing.forward)
    return (
        f"| {name} | {exporter} | {built.torch_params:,} | {report.params:,}{note} "
        f"| {report.merged_weights} | {report.weight_nodes} | {flops:.3f} | {routed} "
        f"| {chain:.1e} | {checks[0]} | {checks[1]} |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=None, help="models whose name contains this")
    parser.add_argument("--no-run", action="store_true", help="skip pipeplan run --check")
    parser.add_argument(
        "--defaults",
        action="store_true",
        help="export with the exporters' defaults (optimize=True, constant folding) instead",
    )
    args = parser.parse_args(argv)
    print(HEADER)
    print("|" + "---|" * (HEADER.count("|") - 1))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pipeplan-corpus-") as tmp:
        for name in corpus.MODELS:
            if args.only and args.only not in name:
                continue
            for exporter in corpus.EXPORTERS:
                try:
                    row = _case(name, exporter, Path(tmp), not args.no_run, args.defaults)
                except Exception as exc:  # a failing case is a row, not the end of the table
                    row = (
                        f"| {name} | {exporter} | failed: {type(exc).__name__}: {str(exc)[:150]} |"
                    )
                print(row, flush=True)
    print(f"\n{time.perf_counter() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
