"""The module scope of an ONNX node, as the torch exporters write it.

The dynamo exporter stores the module path in the `pkg.torch.onnx.name_scopes` metadata
(`['', 'blocks.3', 'blocks.3.attn', 'matmul_7']`: the last entry is the op itself); the
TorchScript exporter puts it in node names (`/blocks.3/attn/MatMul`). Layers are grouped
from these scopes (`planner.graph.layers`); see samples/README.md for both formats.
"""

from __future__ import annotations

import onnx


def scope_of(node: onnx.NodeProto) -> tuple[str, ...]:
    """The module path of a node, as components: ('blocks', '3', 'attn'); empty when the
    node carries neither form."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            entries = parse_list_literal(prop.value)
            modules = [e for e in entries[:-1] if e]
            if modules:
                return tuple(modules[-1].split("."))
            return ()
    name = node.name
    if name.startswith("/") and name.count("/") >= 2:
        # TorchScript writes a container's child relative to it:
        # /layer2/layer2.0/downsample/downsample.0/Conv is module layer2.0.downsample.0
        segments: list[str] = []
        for part in (p for p in name.split("/")[1:-1] if p):
            if segments and part.startswith(segments[-1] + "."):
                segments[-1] = part
            else:
                segments.append(part)
        return tuple(c for seg in segments for c in seg.split("."))
    return ()


def parse_list_literal(text: str) -> list[str]:
    """`"['', 'blocks.3']"` -> `['', 'blocks.3']` (a Python list-of-str repr)."""
    text = text.strip()
    if not (text.startswith("[") and text.endswith("]")):
        return [text]
    body = text[1:-1]
    return [item.strip().strip("'\"") for item in body.split(",")] if body.strip() else []
