"""Weights as exporters write them: merges separated, true ties kept, weights never routed."""

from __future__ import annotations

import warnings

import onnx
import pytest
import torch

from exporters.bundle import export as export_bundle
from planner.api import plan
from planner.config import PlanConfig
from planner.graph.inspect import inspect_model
from planner.graph.load import load_graph
from planner.graph.shapes import ShapeBindings


class Blocks(torch.nn.Module):
    """Fresh LayerNorms (all ones / zeros) and Linears: what exporters merge."""

    def __init__(self, tied: bool = False):
        super().__init__()
        self.emb = torch.nn.Embedding(40, 16)
        self.blocks = torch.nn.ModuleList(
            torch.nn.Sequential(torch.nn.LayerNorm(16), torch.nn.Linear(16, 16)) for _ in range(3)
        )
        self.norm = torch.nn.LayerNorm(16)
        self.head = torch.nn.Linear(16, 40, bias=False)
        if tied:
            self.head.weight = self.emb.weight
        torch.nn.init.zeros_(self.blocks[0][1].bias)  # a Linear bias of zeros, like LN biases

    def forward(self, ids):
        x = self.emb(ids)
        for block in self.blocks:
            x = x + block(x)
        return self.head(self.norm(x))


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def export(m, path, *, dynamo: bool, optimize: bool = False, folding: bool = False):
    ids = torch.randint(0, 40, (2, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(
                m.eval(), (ids,), str(path), dynamo=True, optimize=optimize,
                input_names=["ids"], dynamic_shapes=({0: torch.export.Dim("batch")},),
            )  # fmt: skip
        else:
            torch.onnx.export(
                m.eval(), (ids,), str(path), dynamo=False, do_constant_folding=folding,
                input_names=["ids"], dynamic_axes={"ids": {0: "batch"}}, opset_version=17,
            )  # fmt: skip
    return path


def identity_aliases(path) -> int:
    g = onnx.load(str(path)).graph
    inits = {t.name for t in g.initializer}
    return sum(1 for n in g.node if n.op_type == "Identity" and n.input[0] in inits)


def test_torchscript_identity_merges_become_parameters_again(tmp_path):
    m = Blocks()
    path = export(m, tmp_path / "ts.onnx", dynamo=False)
    assert identity_aliases(path) >= 6  # the exporter did merge (the premise)
    report = inspect_model(path, ShapeBindings(batch=2))
    assert report.params == n_params(m)
    assert report.merged_weights == identity_aliases(path) and report.merged_weights_separated
    assert report.shared_weights == 0
    assert any("merged" in w for w in report.warnings)
    kept = inspect_model(path, ShapeBindings(batch=2), keep_merged_weights=True)
    assert kept.params < n_params(m) and not kept.merged_weights_separated
    assert kept.shared_weights >= 1  # the merge looks like a tie when kept


def test_dynamo_optimizer_merges_become_parameters_again(tmp_path):
    m = Blocks()
    path = export(m, tmp_path / "dyn.onnx", dynamo=True, optimize=True)
    report = inspect_model(path, ShapeBindings(batch=2))
    assert report.merged_weights > 0
    assert report.params == n_params(m)


def test_unoptimized_dynamo_export_has_no_merges(tmp_path):
    m = Blocks()
    report = inspect_model(export(m, tmp_path / "raw.onnx", dynamo=True), ShapeBindings(batch=2))
    assert report.merged_weights == 0 and report.params == n_params(m)


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
def test_a_true_tie_stays_tied(tmp_path, dynamo):
    m = Blocks(tied=True)
    path = export(m, tmp_path / "tied.onnx", dynamo=dynamo)
    report = inspect_model(path, ShapeBindings(batch=2))
    assert report.params == n_params(m)  # the embedding counted once
    assert report.shared_weights == 1  # read by the embedding and the head layers


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
def test_weights_are_never_routed_and_ties_are_listed(tmp_path, dynamo):
    m = Blocks(tied=True)
    path = export(m, tmp_path / "tied.onnx", dynamo=dynamo)
    p = plan(path, "samples/clusters/cpu2.yaml", PlanConfig(stages=2), ShapeBindings(batch=2))
    mg = load_graph(path, ShapeBindings(batch=2))
    routed = {r.tensor for r in p.routing.forward}
    assert routed and not routed & mg.param_like  # activations only: no weight, no W^T
    manifest = export_bundle(path, p, tmp_path / "bundle")
    assert [w.name for w in manifest.shared_weights] in (["emb.weight"], ["head.weight"])  # the tie


def test_weight_computations_sit_with_their_consumers(tmp_path):
    """`Transpose(W)` of the tied head is computed on the stage that uses it."""
    m = Blocks(tied=True)
    path = export(m, tmp_path / "tied.onnx", dynamo=True)
    mg = load_graph(path, ShapeBindings(batch=2))
    derived = [n for n, d in mg.graph.nodes(data=True) if d["weight_derived"]]
    assert any(mg.graph.nodes[n]["op_type"] == "Transpose" for n in derived)
    assert not set(derived) & set(mg.op_nodes)
    p = plan(path, "samples/clusters/cpu2.yaml", PlanConfig(stages=2), ShapeBindings(batch=2))
    manifest = export_bundle(path, p, tmp_path / "bundle")
    last = onnx.load(str(tmp_path / "bundle" / manifest.stages[-1].file))
    assert any(
        n.op_type == "Transpose" and n.input[0] in ("emb.weight", "head.weight")
        for n in last.graph.node
    )


def test_transformer_encoder_from_the_dynamo_exporter_plans_and_exports(tmp_path):
    """`value_float` Constants feeding CastLike are float32 (they were read as float64 and
    the stage model failed shape inference)."""
    layer = torch.nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
    m = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()
    path = tmp_path / "enc.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            m, (torch.randn(2, 8, 16),), str(path), dynamo=True, optimize=False,
            input_names=["x"], dynamic_shapes=({0: torch.export.Dim("batch")},),
        )  # fmt: skip
    onnx.checker.check_model(str(path), full_check=True)
    p = plan(path, "samples/clusters/cpu2.yaml", PlanConfig(stages=2), ShapeBindings(batch=2))
    manifest = export_bundle(path, p, tmp_path / "bundle")
    assert len(manifest.stages) == 2
