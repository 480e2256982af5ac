"""Tensor-parallel blocks found in real exported graphs (`planner.graph.sharding`).

The first step of tensor parallelism: recognising, without knowing the model, the
Megatron blocks (column-parallel linears, per-shard work, a row-parallel linear) in what
the torch exporters write, and saying why a candidate does not split.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from planner.graph.inspect import inspect_model
from planner.graph.load import load_graph
from planner.graph.shapes import ShapeBindings
from planner.graph.sharding import find_blocks

ROOT = Path(__file__).resolve().parents[1]
GPT = ROOT / "samples" / "models" / "gpt.onnx"


def test_gpt_sample_has_an_attention_and_an_mlp_block_per_layer():
    blocks = find_blocks(load_graph(GPT, ShapeBindings(batch=2)))
    valid = [b for b in blocks if b.valid]
    assert [b.kind for b in valid] == ["attention", "mlp"] * 4
    for b in valid:
        assert len(b.columns) == 1 and len(b.rows) == 1
        assert all(b.why_not(t) == "" for t in (1, 2, 4))
    attention = valid[0]
    assert set(attention.heads) == {4}  # 4 heads of 16
    assert attention.why_not(3) == "heads 4 not divisible by 3"
    assert valid[1].why_not(3) == "width 256 not divisible by 3"
    # the LM head is tied to the embedding: reported, not split
    head = [b for b in blocks if not b.valid]
    assert len(head) == 1 and head[0].kind == "vocabulary"
    assert "weight lm_head.weight is also read outside the block (tied" in head[0].problem


def test_a_normalisation_over_the_split_axis_stops_a_block(tmp_path):
    model = torch.nn.Sequential(
        torch.nn.Linear(16, 32), torch.nn.LayerNorm(32), torch.nn.Linear(32, 16), torch.nn.ReLU()
    )
    path = tmp_path / "norm.onnx"
    torch.onnx.export(model, (torch.randn(4, 16),), str(path), dynamo=False)
    blocks = find_blocks(load_graph(path))
    assert not any(b.valid for b in blocks)
    assert any("LayerNormalization" in b.problem or "Reduce" in b.problem for b in blocks), [
        b.problem for b in blocks
    ]


def test_a_plain_mlp_splits_and_reports_its_parameters(tmp_path):
    model = torch.nn.Sequential(
        torch.nn.Linear(16, 64), torch.nn.GELU(), torch.nn.Linear(64, 16), torch.nn.LayerNorm(16)
    )
    path = tmp_path / "mlp.onnx"
    torch.onnx.export(model, (torch.randn(4, 16),), str(path), dynamo=False)
    report = inspect_model(path, tensor_parallel=4)
    tp = report.tensor_parallel
    assert [b.kind for b in tp.blocks] == ["mlp"] and tp.blocks[0].splits
    assert tp.sharded_params == 16 * 64 + 64 + 64 * 16  # both weights, the column's bias
    assert tp.replicated_params == report.params - tp.sharded_params


def test_cli_inspect_tp(tmp_path):
    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "runners.cli", "inspect", str(GPT), "--batch", "2", *args],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )

    r = cli("--tp", "4", "--json")
    assert r.returncode == 0, r.stderr
    tp = json.loads(r.stdout)["tensor_parallel"]
    assert tp["degree"] == 4 and sum(b["splits"] for b in tp["blocks"]) == 8
    r = cli("--tp", "3")
    assert r.returncode == 0 and "no: heads 4 not divisible by 3" in r.stdout
    r = cli("--tp", "0")
    assert r.returncode == 2 and r.stderr.strip().startswith("error: --tp must be at least 1")


@pytest.mark.slow
@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_transformers_blocks_are_found_in_both_exporters(tmp_path, exporter):
    """Llama (grouped-query attention, SwiGLU), BERT and GPT-2 from transformers configs."""
    from tests import corpus

    found = {}
    for name in ("llama", "bert", "gpt2"):
        path = corpus.export(corpus.build(name), exporter, tmp_path / f"{name}.onnx")
        found[name] = find_blocks(load_graph(path, ShapeBindings(batch=2)))
    llama = [b for b in found["llama"] if b.valid]
    assert [b.kind for b in llama] == ["attention", "mlp"] * 2 + ["vocabulary"]  # untied head
    assert set(llama[0].heads) == {4, 2}  # 4 query heads, 2 KV heads
    assert llama[0].why_not(2) == "" and llama[0].why_not(4) == "heads 2 not divisible by 4"
    assert len(llama[1].columns) == 2  # gate and up projections (SwiGLU)
    bert = [b for b in found["bert"] if b.valid]
    assert [b.kind for b in bert] == ["attention", "mlp"] * 2
    gpt2 = found["gpt2"]
    assert [b.kind for b in gpt2 if b.valid].count("mlp") == 2
    if exporter == "torchscript":
        assert [b.kind for b in gpt2 if b.valid] == ["attention", "mlp"] * 2
    else:  # the dynamo exporter splits the fused QKV with SplitToSequence: said, not hidden
        assert any("SplitToSequence" in b.problem for b in gpt2)
