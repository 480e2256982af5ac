"""The committed sample ONNX files match the torch models in samples/zoo.py."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from samples import zoo
from samples.make_samples import check_model_graph_only

MODELS_DIR = Path(__file__).resolve().parent.parent / "samples" / "models"
DYNAMO = ("gpt", "inception", "gpt_xl")
SCOPES_KEY = "pkg.torch.onnx.name_scopes"

ort = pytest.importorskip("onnxruntime")


@functools.cache
def session(name: str):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(
        str(MODELS_DIR / f"{name}.onnx"), opts, providers=["CPUExecutionProvider"]
    )


@functools.cache
def load(name: str) -> onnx.ModelProto:
    return onnx.load(str(MODELS_DIR / f"{name}.onnx"), load_external_data=False)


@functools.cache
def torch_model(name: str) -> torch.nn.Module:
    return zoo.build(name, seed=0)[0]


@pytest.mark.parametrize("batch", [2, 3])
@pytest.mark.parametrize("name", zoo.SMALL_MODELS)
def test_onnxruntime_matches_torch(name: str, batch: int) -> None:
    inputs = zoo.example_inputs(name, batch=batch, seed=0)
    with torch.no_grad():
        expected = torch_model(name)(*inputs).numpy()
    sess = session(name)
    feeds = {i.name: t.numpy() for i, t in zip(sess.get_inputs(), inputs, strict=True)}
    (actual,) = sess.run(None, feeds)
    assert actual.shape == expected.shape
    assert actual.shape[0] == batch
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", zoo.MODEL_NAMES)
def test_batch_dim_is_named_batch(name: str) -> None:
    graph = load(name).graph
    for vi in list(graph.input) + list(graph.output):
        dim0 = vi.type.tensor_type.shape.dim[0]
        assert dim0.dim_param == "batch", (vi.name, dim0)
        assert not dim0.HasField("dim_value")


@pytest.mark.parametrize("name", zoo.MODEL_NAMES)
def test_files_are_small(name: str) -> None:
    assert (MODELS_DIR / f"{name}.onnx").stat().st_size < 1_000_000


@pytest.mark.parametrize("name", ["resnet", "inception"])
def test_batchnorm_is_not_fused(name: str) -> None:
    ops = [n.op_type for n in load(name).graph.node]
    assert ops.count("BatchNormalization") == ops.count("Conv")


def test_torchscript_names_carry_module_scopes() -> None:
    names = [n.name for n in load("mlp").graph.node]
    assert "/layers.0/Gemm" in names
    assert "/layers.5/Gemm" in names


@pytest.mark.parametrize("name", DYNAMO)
def test_dynamo_nodes_carry_name_scopes(name: str) -> None:
    nodes = load(name).graph.node
    scopes = {}
    for node in nodes:
        props = {p.key: p.value for p in node.metadata_props}
        if SCOPES_KEY in props:
            scopes[node.name] = ast.literal_eval(props[SCOPES_KEY])
    # onnxscript's constant folder creates a few nodes (Split) without metadata
    assert len(scopes) >= 0.95 * len(nodes)
    for value in scopes.values():
        assert isinstance(value, list)
        assert value[0] == ""  # the root module
    if name.startswith("gpt"):
        assert any(v[1:3] == ["blocks.0", "blocks.0.attn"] for v in scopes.values())


def test_gpt_lm_head_is_tied() -> None:
    model = torch_model("gpt")
    assert model.lm_head.weight is model.wte.weight
    inits = {i.name for i in load("gpt").graph.initializer}
    assert "lm_head.weight" in inits
    assert "wte.weight" not in inits


# -----------------------------------------------------------------------------
# gpt_xl: graph only, weights external and absent


@functools.cache
def xl_meta_model() -> torch.nn.Module:
    return zoo.build("gpt_xl", device="meta")[0]


def test_gpt_xl_is_graph_only() -> None:
    path = MODELS_DIR / "gpt_xl.onnx"
    assert not (MODELS_DIR / "gpt_xl.onnx.data").exists()
    proto = load("gpt_xl")
    external = [t for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert external
    for t in external:
        entries = {e.key: e.value for e in t.external_data}
        assert entries["location"] == "gpt_xl.onnx.data"
        assert int(entries["length"]) > 0 and int(entries["offset"]) >= 0
        assert not t.raw_data
    check_model_graph_only(path)
    onnx.shape_inference.infer_shapes(proto, strict_mode=True)


def test_gpt_xl_parameter_count_matches_torch() -> None:
    model = xl_meta_model()
    n_params = zoo.num_parameters(model)
    assert 1_557_000_000 < n_params < 1_558_000_000
    aliases = {n: p for n, p in model.named_parameters(remove_duplicate=False)}
    seen: dict[int, str] = {}
    for t in load("gpt_xl").graph.initializer:
        if t.name in aliases:
            p = aliases[t.name]
            assert id(p) not in seen, f"{t.name} duplicates {seen[id(p)]}"
            assert tuple(t.dims) == tuple(p.shape)
            assert t.data_type == onnx.TensorProto.FLOAT
            assert t.data_location == onnx.TensorProto.EXTERNAL
            seen[id(p)] = t.name
    assert sum(aliases[n].numel() for n in seen.values()) == n_params
    # the tied wte/lm_head weight is stored once, under the name lm_head.weight
    assert "lm_head.weight" in seen.values()
