"""Price every working operator of a loaded graph with the cost model.

For each node in topological (file) order this decodes an `OpNode` (attributes, the
static shapes of its tensors, which inputs are weights) and stores on the graph node:

* `cost`: its `OpCost` from `cost.ops.op_cost` (folded nodes cost nothing);
* `input_roles`: per input, `w` a parameter or a view of one, `g` an activation that
  carries a gradient in training, `n` data without one (graph inputs, integers), `k` a
  constant, `-` absent. An output carries a gradient when its node reads a `w` or `g`;
* `signature`: `cost.signature.op_signature`, the key of measured times in a profile.

Unknown operators (and subgraph operators, which are opaque) get the cost model's
byte-only estimate; `price_graph` returns a warning per kind.
"""

from __future__ import annotations

from collections import defaultdict

import networkx as nx
import numpy as np
import onnx

from cost.opcost import OpCost, OpNode
from cost.ops import KNOWN_OPS, op_cost
from cost.signature import op_signature
from cost.tensor import TensorInfo
from planner.graph.fold import SUBGRAPH_OPS
from planner.graph.onnx_io import decode_attributes


def price_graph(
    graph: nx.DiGraph,
    nodes: list[onnx.NodeProto],
    names: list[str],
    tensors: dict[str, TensorInfo],
    constants: dict[str, np.ndarray],
    param_like: set[str],
    static: set[str],
) -> list[str]:
    """Set `cost`, `input_roles` and `signature` on every node of `graph`; return warnings."""
    grad_tensors: set[str] = set()  # activations that carry a gradient in training
    unknown_ops: dict[str, int] = defaultdict(int)
    unknown_shapes = 0
    for node, name in zip(nodes, names, strict=True):
        data = graph.nodes[name]
        inputs = tuple(tensors.get(i, TensorInfo(i, None)) if i else None for i in node.input)
        outputs = tuple(tensors.get(o, TensorInfo(o, None)) for o in node.output if o)
        attrs = decode_attributes(node)
        if data["folded"] or data["weight_derived"]:
            cost = OpCost(kind="free")
        else:
            op_type = (
                node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
            )
            cost = op_cost(
                OpNode(
                    op_type=op_type,
                    domain=node.domain,
                    attrs=attrs,
                    inputs=inputs,
                    outputs=outputs,
                    param_inputs=frozenset(i for i, t in enumerate(node.input) if t in param_like),
                    name=name,
                )
            )
            if op_type not in KNOWN_OPS or node.op_type in SUBGRAPH_OPS:
                unknown_ops[op_type] += 1
            elif any(t is not None and t.shape is None for t in (*inputs, *outputs)):
                unknown_shapes += 1
        roles = tuple(
            input_role(t, param_like, static, grad_tensors) if t else "-" for t in node.input
        )
        if (
            not data["folded"]
            and not data["weight_derived"]
            and any(r in ("w", "g") for r in roles)
        ):
            grad_tensors.update(o.name for o in outputs if o.is_float)
        data["cost"] = cost
        data["input_roles"] = roles
        data["signature"] = op_signature(
            node.op_type, node.domain, inputs, outputs, attrs, roles, constants
        )
    return _warnings(unknown_ops, unknown_shapes)


def input_role(tensor: str, param_like: set[str], static: set[str], grad: set[str]) -> str:
    """`w`, `k`, `g` or `n` (module docstring)."""
    if tensor in param_like:
        return "w"
    if tensor in static:
        return "k"
    return "g" if tensor in grad else "n"


def _warnings(unknown_ops: dict[str, int], unknown_shapes: int) -> list[str]:
    out = []
    for op_type, count in sorted(unknown_ops.items()):
        kind = "subgraph op" if op_type in SUBGRAPH_OPS else "unknown op"
        out.append(
            f"{kind} '{op_type}' ({count} node{'s' if count > 1 else ''}): priced by bytes only"
        )
    if unknown_shapes:
        out.append(
            f"{unknown_shapes} operator(s) have tensors of unknown shape: their cost is estimated"
        )
    return out
