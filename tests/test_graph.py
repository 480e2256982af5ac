"""Graph loading: real torch exports into networkx, shapes, parameters, folding, layers."""

from __future__ import annotations

import json
import subprocess
import sys

import networkx as nx
import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper

from cost.errors import PipeplanError
from planner.graph.inspect import inspect_model, load_model
from planner.graph.layers import group_layers
from planner.graph.load import load_graph
from planner.graph.shapes import ShapeBindings
from tests.exporting import export


class Block(torch.nn.Module):
    def __init__(self, d: int = 16):
        super().__init__()
        self.ln = torch.nn.LayerNorm(d)
        self.fc1 = torch.nn.Linear(d, 4 * d)
        self.fc2 = torch.nn.Linear(4 * d, d)

    def forward(self, x):
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.ln(x))))


class Net(torch.nn.Module):
    def __init__(self, n: int = 3, d: int = 16):
        super().__init__()
        self.blocks = torch.nn.ModuleList([Block(d) for _ in range(n)])
        self.head = torch.nn.Linear(d, 4)

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        x = x.reshape(x.shape[0], -1)  # shape arithmetic that must fold away
        return self.head(x)


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def net_files(tmp_path_factory):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("net")
    net = Net()
    x = (torch.randn(2, 16),)
    return net, {
        "torchscript": export(net, x, d / "ts.onnx", dynamo=False, opset=13),
        "dynamo": export(net, x, d / "dyn.onnx", dynamo=True, opset=18),
    }


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_loads_real_export_with_exact_params(net_files, exporter):
    net, files = net_files
    mg = load_graph(files[exporter], ShapeBindings(batch=8))
    assert isinstance(mg.graph, nx.DiGraph)
    assert mg.param_count == n_params(net)
    assert mg.param_bytes == 4 * n_params(net)
    # every working node has a cost; every edge carries named tensors with bytes
    for _u, _v, data in mg.graph.edges(data=True):
        assert data["tensors"] and data["bytes"] >= 0
    assert mg.tensors[mg.outputs[0]].shape == (8, 4)
    # the batch binding reaches every activation: fc1's output is 8 x 64
    gemm_outputs = [
        mg.tensors[t].shape
        for n in mg.op_nodes
        for t in mg.graph.nodes[n]["outputs"]
        if mg.graph.nodes[n]["op_type"] in ("Gemm", "MatMul")
    ]
    assert (8, 64) in gemm_outputs


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_flops_scale_with_batch(net_files, exporter):
    _, files = net_files
    f1 = load_graph(files[exporter], ShapeBindings(batch=1)).forward_flops
    f8 = load_graph(files[exporter], ShapeBindings(batch=8)).forward_flops
    assert f8 == pytest.approx(8 * f1, rel=1e-9)
    # linear layers dominate: 2 * batch * (3 * (16*64*2) + 16*4) MACs-as-2-FLOPs at least
    assert f1 >= 2 * (3 * (16 * 64 * 2) + 16 * 4)


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_layers_follow_module_scopes(net_files, exporter):
    _, files = net_files
    mg, lg = load_model(files[exporter], ShapeBindings(batch=4), layer_depth=2)
    names = [layer.name for layer in lg.layers]
    assert names == ["blocks.0", "blocks.1", "blocks.2", "head"], names
    assert sum(layer.param_count for layer in lg.layers) == mg.param_count
    assert_convex(mg, lg)


def assert_convex(mg, lg):
    """Every operator edge goes from a layer to the same or a later layer."""
    assert sorted(n for layer in lg.layers for n in layer.nodes) == sorted(mg.op_nodes)
    for u, v in mg.graph.edges():
        if u in lg.node_layer and v in lg.node_layer:
            assert lg.node_layer[u] <= lg.node_layer[v]


def test_shape_arithmetic_folds_to_zero_cost(net_files):
    _, files = net_files
    mg = load_graph(files["torchscript"], ShapeBindings(batch=4))
    folded = [n for n, d in mg.graph.nodes(data=True) if d["folded"]]
    folded_ops = {mg.graph.nodes[n]["op_type"] for n in folded}
    assert "Shape" in folded_ops, folded_ops
    assert all(mg.cost(n).flops == 0 and mg.cost(n).bytes_moved == 0 for n in folded)
    # the Reshape itself is a working (free) node, not shape arithmetic
    reshapes = [n for n in mg.op_nodes if mg.graph.nodes[n]["op_type"] == "Reshape"]
    assert reshapes and all(mg.cost(n).kind == "free" for n in reshapes)


def test_dim_and_input_shape_bindings(net_files):
    _, files = net_files
    a = load_graph(files["torchscript"], ShapeBindings(dims={"batch": 5}))
    b = load_graph(files["torchscript"], ShapeBindings(input_shapes={"in0": (5, 16)}))
    assert a.tensors["out"].shape == b.tensors["out"].shape == (5, 4)
    with pytest.raises(
        PipeplanError, match=r"unbound symbolic dimension 'batch' \(axis 0 of input 'in0'\)"
    ):
        load_graph(files["torchscript"])
    with pytest.raises(PipeplanError, match="rank 3 given"):
        load_graph(files["torchscript"], ShapeBindings(input_shapes={"in0": (5, 16, 1)}))
    with pytest.raises(PipeplanError, match="not a graph input"):
        load_graph(files["torchscript"], ShapeBindings(input_shapes={"nope": (5, 16)}))


def test_unnamed_dimensions_need_input_shape(tmp_path, net_files):
    _, files = net_files
    model = onnx.load(str(files["torchscript"]))
    for vi in list(model.graph.input) + list(model.graph.output):
        d = vi.type.tensor_type.shape.dim[0]
        d.Clear()  # an unnamed dimension, as '?' exports write it
    path = tmp_path / "unnamed.onnx"
    onnx.save(model, str(path))
    with pytest.raises(
        PipeplanError, match=r"unknown dimension at axis 0 of input 'in0'.*--input-shape in0="
    ):
        load_graph(path)
    assert load_graph(path, ShapeBindings(input_shapes={"in0": (3, 16)})).tensors["out"].shape == (
        3,
        4,
    )
    assert load_graph(path, ShapeBindings(batch=3)).tensors["out"].shape == (3, 4)


def test_tied_weight_counted_once(tmp_path):
    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(50, 8)
            self.mid = torch.nn.Linear(8, 8)
            self.out = torch.nn.Linear(8, 50, bias=False)
            self.out.weight = self.emb.weight

        def forward(self, ids):
            return self.out(torch.relu(self.mid(self.emb(ids))))

    m = Tied()
    # optimize=False: the exporter's optimizer folds Transpose(weight) into a new
    # initializer, which unties the weight (see README, "Limits").
    path = export(
        m,
        (torch.randint(0, 50, (2, 6)),),
        tmp_path / "tied.onnx",
        dynamo=True,
        opset=18,
        optimize=False,
    )
    mg = load_graph(path, ShapeBindings(batch=2))
    assert mg.param_count == n_params(m) == 50 * 8 + 8 * 8 + 8
    shared = [p for p in mg.params.values() if len(p.consumers) > 1]
    assert shared, "the tied embedding should be used by two nodes"


def test_constant_node_tensors_are_constants_not_params(tmp_path, net_files):
    """Exporters write parameters as initializers and inline traced constants (a rotary
    table, a mask) as Constant nodes: such a tensor is held (a buffer), never trained."""
    net, files = net_files
    model = onnx.load(str(files["torchscript"]))
    nodes = []
    for init in model.graph.initializer:
        nodes.append(helper.make_node("Constant", [], [init.name], value=init))
    del model.graph.initializer[:]
    rest = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes + rest)
    path = tmp_path / "constants.onnx"
    onnx.save(model, str(path))
    mg = load_graph(path, ShapeBindings(batch=2))
    assert mg.param_count == 0
    assert {p.source for p in mg.params.values()} == {"constant"}
    assert not any(p.trainable for p in mg.params.values())
    held = sum(p.numel for p in mg.params.values() if p.numel > 1)
    assert held >= n_params(net) - sum(1 for p in net.parameters() if p.numel() == 1)


def test_batchnorm_running_stats_are_buffers(tmp_path):
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU())
    m.train()  # keep BatchNormalization in the graph
    path = tmp_path / "bn.onnx"
    torch.onnx.export(
        m,
        (torch.randn(2, 3, 8, 8),),
        str(path),
        dynamo=False,
        opset_version=17,
        training=torch.onnx.TrainingMode.PRESERVE,
        do_constant_folding=False,
        input_names=["x"],
        dynamic_axes={"x": {0: "batch"}},
    )
    mg = load_graph(path, ShapeBindings(batch=2))
    assert mg.param_count == n_params(m)
    assert sum(p.numel for p in mg.params.values() if not p.trainable) == 16


def test_missing_external_data_plans_from_graph(tmp_path, net_files):
    net, files = net_files
    model = onnx.load(str(files["torchscript"]))
    path = tmp_path / "ext.onnx"
    onnx.save(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="ext.onnx.data",
        size_threshold=0,
    )
    (tmp_path / "ext.onnx.data").unlink()
    mg = load_graph(path, ShapeBindings(batch=2))
    assert mg.param_count == n_params(net)
    assert mg.has_weights is False


def test_subgraph_op_is_opaque_with_warning(tmp_path):
    then_g = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y1"])],
        "then",
        [],
        [helper.make_tensor_value_info("y1", onnx.TensorProto.FLOAT, [2, 3])],
    )
    else_g = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["y2"])],
        "else",
        [],
        [helper.make_tensor_value_info("y2", onnx.TensorProto.FLOAT, [2, 3])],
    )
    g = helper.make_graph(
        [helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)],
        "g",
        [
            helper.make_tensor_value_info("c", onnx.TensorProto.BOOL, []),
            helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3]),
        ],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 3])],
    )
    path = tmp_path / "if.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    mg = load_graph(path)
    assert any("subgraph op 'If'" in w for w in mg.warnings)
    assert mg.cost(mg.op_nodes[0]).estimated


@pytest.mark.parametrize("opset", [11, 13, 17])
def test_torchscript_opsets_load(tmp_path, opset):
    m = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Upsample(scale_factor=2),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 16 * 16, 3),
    )
    path = export(m, (torch.randn(1, 3, 8, 8),), tmp_path / f"o{opset}.onnx", opset=opset)
    mg = load_graph(path, ShapeBindings(batch=2))
    assert mg.param_count == n_params(m)
    assert mg.tensors["out"].shape == (2, 3)
    assert not [n for n in mg.op_nodes if mg.cost(n).estimated]


@pytest.mark.parametrize("opset", [18, 21])
def test_dynamo_opsets_load(tmp_path, opset):
    m = Net(n=2, d=8)
    path = export(m, (torch.randn(2, 8),), tmp_path / f"d{opset}.onnx", dynamo=True, opset=opset)
    mg = load_graph(path, ShapeBindings(batch=3))
    assert mg.param_count == n_params(m)
    assert not [n for n in mg.op_nodes if mg.cost(n).estimated]


def test_structural_grouping_without_scopes(tmp_path, net_files):
    _, files = net_files
    model = onnx.load(str(files["dynamo"]))
    for i, node in enumerate(model.graph.node):
        node.name = f"n{i}"
        del node.metadata_props[:]
    path = tmp_path / "anon.onnx"
    onnx.save(model, str(path))
    mg, lg = load_model(path, ShapeBindings(batch=2))
    assert lg.source == "structure"
    assert len(lg.layers) >= 4  # three residual blocks and a head at least
    assert all(any(mg.cost(n).kind == "compute" for n in layer.nodes) for layer in lg.layers)
    assert_convex(mg, lg)


def test_layer_overrides(tmp_path, net_files):
    _, files = net_files
    spec = tmp_path / "layers.yaml"
    spec.write_text("front: ['blocks\\.0', 'blocks\\.1']\n")
    mg, lg = load_model(
        files["torchscript"], ShapeBindings(batch=2), layers_file=str(spec), layer_depth=2
    )
    assert lg.layers[0].name == "front"
    assert [layer.name for layer in lg.layers[1:]] == ["blocks.2", "head"]
    assert_convex(mg, lg)


def test_inspect_json_cli(net_files):
    net, files = net_files
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "runners.cli",
            "inspect",
            str(files["dynamo"]),
            "--batch",
            "2",
            "--json",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    report = json.loads(out.stdout)
    assert report["params"] == n_params(net)
    assert report["param_bytes"] == 4 * n_params(net)
    assert report["nodes"] >= report["working_nodes"] > 0
    assert report["forward_flops"] == sum(layer["forward_flops"] for layer in report["layers"])
    for layer in report["layers"]:
        assert {"name", "nodes", "forward_flops", "params", "activation_bytes"} <= set(layer)


def test_inspect_report_matches_library(net_files):
    _, files = net_files
    report = inspect_model(files["torchscript"], ShapeBindings(batch=2))
    assert report.params == sum(layer.params for layer in report.layers)
    assert np.isclose(report.forward_flops, sum(layer.forward_flops for layer in report.layers))


def test_graph_hash_ignores_weight_values(tmp_path, net_files):
    _, files = net_files
    model = onnx.load(str(files["torchscript"]))
    for init in model.graph.initializer:
        arr = numpy_helper.to_array(init)
        init.CopyFrom(numpy_helper.from_array(np.zeros_like(arr), init.name))
    path = tmp_path / "zeros.onnx"
    onnx.save(model, str(path))
    assert (
        load_graph(path, ShapeBindings(batch=2)).graph_hash
        == load_graph(files["torchscript"], ShapeBindings(batch=2)).graph_hash
    )


def test_single_layer_grouping_is_total(net_files):
    _, files = net_files
    mg = load_graph(files["dynamo"], ShapeBindings(batch=2))
    lg = group_layers(mg, max_layer_share=1.0)
    assert sum(len(layer.nodes) for layer in lg.layers) == len(mg.op_nodes)


@pytest.mark.parametrize("style", ["tf2onnx", "paddle2onnx"])
def test_foreign_exporter_dimension_styles(tmp_path, net_files, style):
    """tf2onnx names free dims 'unk__N'; paddle2onnx writes -1: both bind like any other."""
    _, files = net_files
    model = onnx.load(str(files["torchscript"]))
    for vi in list(model.graph.input) + list(model.graph.output):
        d = vi.type.tensor_type.shape.dim[0]
        d.Clear()
        if style == "tf2onnx":
            d.dim_param = "unk__12"
        else:
            d.dim_value = -1
    model.producer_name = style
    path = tmp_path / f"{style}.onnx"
    onnx.save(model, str(path))
    with pytest.raises(PipeplanError, match="in0"):
        load_graph(path)
    assert load_graph(path, ShapeBindings(batch=6)).tensors["out"].shape == (6, 4)
    assert load_graph(path, ShapeBindings(input_shapes={"in0": (6, 16)})).tensors["out"].shape == (
        6,
        4,
    )
