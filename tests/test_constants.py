"""Constants the exporters fold into float initializers (masks, rotary tables) are not
parameters: never counted as trainable, never in the runner's optimizer."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from exporters.bundle import export
from planner.api import plan
from planner.config import PlanConfig
from planner.graph.constants import constant_kind, is_anonymous
from planner.graph.inspect import inspect_model
from planner.graph.load import load_graph
from planner.graph.shapes import ShapeBindings
from runners.onnx_to_torch import convert

ROOT = Path(__file__).resolve().parents[1]


class RotaryAttention(torch.nn.Module):
    """One attention block with a causal mask and rotary tables computed in forward, as
    transformers' Llama does: exporters bake both into constants."""

    def __init__(self, d: int = 16):
        super().__init__()
        self.q, self.k, self.o = (torch.nn.Linear(d, d) for _ in range(3))
        inv = 1.0 / (10000 ** (torch.arange(0, d, 2).float() / d))
        self.register_buffer("inv_freq", inv, persistent=False)

    def forward(self, x):
        t = x.shape[1]
        angles = torch.outer(torch.arange(t).float(), self.inv_freq)
        cos = torch.cat([angles.cos(), angles.cos()], -1)
        sin = torch.cat([angles.sin(), angles.sin()], -1)
        q = self.q(x) * cos + self.k(x) * sin
        mask = torch.tril(torch.ones(t, t))
        scores = (q @ self.k(x).transpose(1, 2)).masked_fill(mask == 0, float("-inf"))
        return self.o((scores.softmax(-1) * mask) @ x)


RECIPES = {
    "dynamo-default": dict(dynamo=True),  # optimize=True folds the tables into initializers
    "dynamo-training": dict(dynamo=True, optimize=False),  # torch.export kinds say it
    "torchscript-default": dict(dynamo=False, opset_version=17),
    "torchscript-training": dict(dynamo=False, opset_version=17, do_constant_folding=False),
}


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    torch.manual_seed(0)
    model = RotaryAttention().eval()
    x = torch.randn(2, 8, 16)
    folder = tmp_path_factory.mktemp("constants")
    files = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, kw in RECIPES.items():
            files[name] = folder / f"{name}.onnx"
            torch.onnx.export(model, (x,), str(files[name]), input_names=["x"], **kw)
    return model, files


def test_values_tell_masks_and_tables_from_weights():
    rng = np.random.default_rng(0)
    tril = np.tril(np.ones((8, 8), np.float32))
    assert constant_kind(tril) == "mask"
    assert constant_kind(np.where(tril > 0, 0, -np.inf).astype(np.float32)) == "mask"
    assert constant_kind(np.where(tril > 0, 0, np.finfo(np.float32).min)) == "mask"
    angles = np.outer(np.arange(16), 1.0 / 10000 ** (np.arange(0, 8, 2) / 8))
    assert constant_kind(np.cos(angles)) == "position table"
    assert constant_kind(np.sin(angles)[None]) == "position table"
    assert constant_kind(rng.standard_normal((16, 16))) is None  # a weight
    assert constant_kind(np.zeros((16, 16))) is None  # a zero-initialised weight
    assert constant_kind(np.ones(16)) is None  # a LayerNorm weight
    assert constant_kind(rng.uniform(-1, 1, (1, 197, 384))) is None  # a position embedding


def test_names_the_exporters_make():
    for name in ("onnx::MatMul_39", "/m/Constant_3_output_0", "val_12", "_val_3", "cat_1", "tril",
                 "m.transformer.h.1.attn.where"):  # fmt: skip
        assert is_anonymous(name), name
    for name in ("blocks.0.ln1.weight", "m.model.embed_tokens.weight", "m.wpe.bias"):
        assert not is_anonymous(name), name


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_parameters_are_torchs_under_every_recipe(exports, recipe):
    model, files = exports
    mg = load_graph(files[recipe])
    assert mg.param_count == sum(p.numel() for p in model.parameters())
    if recipe == "dynamo-default":  # the cos/sin tables and the mask were folded
        assert set(mg.folded_constants.values()) == {"mask", "position table"}
        assert any("constants the exporter folded" in w for w in mg.warnings)
        for name in mg.folded_constants:
            assert not mg.params[name].trainable
        report = inspect_model(files[recipe])
        assert report.folded_constants == mg.folded_constants
        assert report.params == mg.param_count


@pytest.mark.parametrize("recipe", ["dynamo-default", "dynamo-training"])
def test_stage_files_keep_constants_out_of_the_optimizer(exports, tmp_path, recipe):
    """The runner's parameters (what its optimizer steps) over both stages are exactly
    torch's: no folded constant becomes an nn.Parameter."""
    model, files = exports
    p = plan(
        files[recipe],
        ROOT / "samples/clusters/cpu2.yaml",
        PlanConfig(stages=2, strategy="greedy"),
        ShapeBindings(),
    )
    manifest = export(files[recipe], p, tmp_path / "bundle")
    trained = 0
    for st in manifest.stages:
        module = convert(str(tmp_path / "bundle" / st.file))
        trained += sum(q.numel() for q in module.parameters() if q.requires_grad)
        stage_inits = onnx.load(str(tmp_path / "bundle" / st.file)).graph.initializer
        folded = {t.name for t in stage_inits} & set(load_graph(files[recipe]).folded_constants)
        assert not folded & set(module.param_names), folded
    assert trained == sum(q.numel() for q in model.parameters())
