"""Shapes the exporters leave to the planner: masks resolved, the rest never cut through.

TorchScript exports of transformers models with an attention-mask input build the mask
with `Expand(x, Where(Equal(shape, -1), ones, shape))` and `GatherElements` of a folded
buffer, which ONNX shape inference leaves unknown; `planner.graph.shape_fallback`
resolves them. A tensor whose shape no rule can know (NonZero's output) keeps its
producer and consumers on one stage, named in a warning.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from exporters.bundle import export
from planner.api import plan
from planner.config import PlanConfig
from planner.graph.inspect import load_model
from planner.graph.shapes import ShapeBindings
from tests.test_export import run_pipeline

ROOT = Path(__file__).resolve().parents[1]
CPU2 = ROOT / "samples" / "clusters" / "cpu2.yaml"


@pytest.fixture(scope="module")
def bert_with_mask(tmp_path_factory) -> Path:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, max_position_embeddings=64, attn_implementation="eager",
    )  # fmt: skip
    bert = transformers.BertModel(config, add_pooling_layer=False).eval()

    class WithMask(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = bert

        def forward(self, ids, mask):
            return self.m(input_ids=ids, attention_mask=mask).last_hidden_state

    path = tmp_path_factory.mktemp("bert") / "bert_mask.onnx"
    ids, mask = torch.randint(0, 256, (2, 16)), torch.ones(2, 16, dtype=torch.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            WithMask(), (ids, mask), str(path), dynamo=False, opset_version=17,
            input_names=["ids", "mask"],
            dynamic_axes={"ids": {0: "batch", 1: "seq"}, "mask": {0: "batch", 1: "seq"}},
        )  # fmt: skip
    return path


def test_torchscript_attention_masks_get_their_shapes(bert_with_mask, tmp_path):
    bindings = ShapeBindings(batch=2, dims={"seq": 16})
    mg, lg = load_model(bert_with_mask, bindings)
    unknown = [
        t
        for n in mg.op_nodes
        for t in mg.graph.nodes[n]["outputs"]
        if t not in mg.tensors or mg.tensors[t].shape is None
    ]
    assert unknown == []
    assert not any("unknown shape" in w for w in mg.warnings + lg.warnings)
    p = plan(bert_with_mask, CPU2, PlanConfig(stages=2), bindings)
    assert all(r.bytes > 0 and r.shape is not None and r.dtype for r in p.routing.forward)
    manifest = export(bert_with_mask, p, tmp_path / "bundle")  # the full checker passes
    rng = np.random.default_rng(0)
    feeds = {
        "ids": rng.integers(0, 256, (2, 16)).astype(np.int64),
        "mask": (rng.random((2, 16)) > 0.3).astype(np.int64),
    }
    reference = ort.InferenceSession(str(bert_with_mask)).run(None, feeds)[0]
    got = run_pipeline(tmp_path / "bundle", manifest, feeds)
    assert np.abs(got[manifest.graph_outputs[0].name] - reference).max() <= 1e-4


def _nonzero_model(path: Path) -> Path:
    """x -> /a/MatMul -> /b/Relu -> /b/NonZero -> /c/Cast, /c/ReduceSum -> /d/Add: the
    NonZero output has a data-dependent shape, unknown before running."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "a.weight")
    nodes = [
        helper.make_node("MatMul", ["x", "a.weight"], ["h"], name="/a/MatMul"),
        helper.make_node("Relu", ["h"], ["r"], name="/b/Relu"),
        helper.make_node("NonZero", ["r"], ["nz"], name="/b/NonZero"),
        helper.make_node("Cast", ["nz"], ["nzf"], to=TensorProto.FLOAT, name="/c/Cast"),
        helper.make_node("ReduceSum", ["nzf"], ["count"], keepdims=0, name="/c/ReduceSum"),
        helper.make_node("Add", ["r", "count"], ["y"], name="/d/Add"),
    ]
    graph = helper.make_graph(
        nodes,
        "nonzero",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])],
        initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


def test_a_tensor_of_unknown_shape_is_never_cut(tmp_path):
    path = _nonzero_model(tmp_path / "nz.onnx")
    mg, lg = load_model(path)
    assert lg.unknown_shape_tensors == ["nz"]
    assert any("nz" in w and "unknown shape" in w for w in lg.warnings)
    home = {lg.node_layer["/b/NonZero"], lg.node_layer["/c/Cast"]}
    assert len(home) == 1  # producer and consumer in one layer
    p = plan(path, CPU2, PlanConfig(stages=2, strategy="greedy"), ShapeBindings())
    assert "nz" not in {r.tensor for r in p.routing.forward}
    assert any("unknown shape" in w for w in p.warnings)
