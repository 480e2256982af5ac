"""Through the real loader: AlexNet, VGG-16, ResNet-50 (built in torch, exported).

Each model is built on the meta device and exported by the dynamo exporter as a
graph-only file (initializers reference an external file that is never written, as
`samples/make_samples.py` does for the 1.6 B GPT), so even VGG-16's 138 M parameters cost
nothing to export. `planner.graph.load.load_graph` must then count exactly torch's parameters
(BatchNorm running statistics are buffers, not parameters) and its product FLOPs must
match `torch.utils.flop_counter` within 1%.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from planner.graph.load import load_graph
from planner.graph.shapes import ShapeBindings
from samples.make_samples import _externalize, save_proto
from tests.reference_models import REFERENCE_MODELS

PRODUCTS = {"Conv", "Gemm", "MatMul", "ConvTranspose", "Einsum"}


def export_graph_only(model, x, path) -> None:
    """Dynamo export of a meta-device model; initializers point at an absent file."""
    import onnx_ir as ir

    program = torch.onnx.export(
        model,
        (x,),
        dynamo=True,
        optimize=False,
        verbose=False,
        input_names=["images"],
        dynamic_shapes=({0: torch.export.Dim("batch")},),
    )
    _externalize(program.model, f"{path.name}.data")
    save_proto(ir.serde.serialize_model(program.model), path)


@pytest.mark.parametrize("name", ["alexnet", "vgg16", "resnet50"])
def test_params_and_flops_through_the_loader(tmp_path, name):
    build, input_shape = REFERENCE_MODELS[name]
    with torch.device("meta"):
        model = build().eval()
        x = torch.empty(*input_shape)
    with FlopCounterMode(display=False) as counter:
        model(x)
    torch_flops = counter.get_total_flops()
    torch_params = sum(p.numel() for p in model.parameters())
    path = tmp_path / f"{name}.onnx"
    export_graph_only(model, x, path)
    mg = load_graph(path, ShapeBindings(batch=1))
    assert mg.has_weights is False
    assert mg.param_count == torch_params
    products = sum(
        mg.cost(n).flops for n in mg.op_nodes if mg.graph.nodes[n]["op_type"] in PRODUCTS
    )
    assert products == pytest.approx(torch_flops, rel=0.01)
    assert torch_flops <= mg.forward_flops <= 1.10 * torch_flops
