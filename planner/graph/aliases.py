"""Weights the exporter merged, told apart from weights the model ties, and separated.

Both torch exporters merge initializers whose values are equal, which every freshly
initialised model is full of (LayerNorm weights all ones, biases all zeros). A merged
weight looks shared by the layers that read it, so a planner would hold it once, route
it between stages and all-reduce its gradient as a tie the user never made. The evidence
each exporter leaves (checked on transformers and timm models, torch 2.13):

* **TorchScript** (`dynamo=False`): the duplicates become `Identity(first)` nodes whose
  outputs carry the merged parameters' own torch names (`Identity(blocks.0.norm1.weight)
  -> norm.weight`), even across parameters and buffers (a BatchNorm weight of ones aliases
  another's running variance). A true tie (a tied embedding and head) is one initializer
  read directly in two places. So: every `Identity` of a float initializer is a merge.
* **dynamo** (`dynamo=True`, the default `optimize=True`): onnxscript's
  `DeduplicateInitializersPass(size_limit=1024)` replaces the uses of every equal
  initializer of at most 1024 elements by one of them, leaving no trace but the uses
  themselves: nodes of several modules (their `pkg.torch.onnx.name_scopes`) read one small
  initializer. Whether the optimizer ran shows: its rewriter marks the nodes it rewrites
  (`pkg.onnxscript.rewriter.rule_name`) and its constant folder makes initializers without
  torch.export's kind, which an unoptimized export records for every initializer
  (`pkg.torch.export.graph_signature.InputSpec.kind`); without the optimizer
  (`optimize=False`) nothing is merged. So: in a model the optimizer ran on, a float initializer of 2..1024 elements read by nodes
  of two or more module scopes is a merge. A true tie of a parameter of more than 1024
  elements is read the same way and is kept; a tie that small in an optimized model (rare)
  is split too, and `--keep-merged-weights` keeps every merge as written.

`separate_merged_weights` undoes the merges in the model proto itself, so that the
planner, the exporter and the runner all see one initializer per parameter: a TorchScript
alias becomes an initializer under the alias's name (a copy of the tensor's description:
inline data is copied, external data points at the same bytes), a dynamo merge gives each
further module scope its own copy, named `<scope>.<leaf>`. Weights are never read here.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import onnx

from cost.tensor import FLOAT_DTYPES
from planner.graph.onnx_io import torch_input_kinds

#: onnxscript's initializer deduplication skips tensors larger than this (elements).
DEDUP_SIZE_LIMIT = 1024
NAME_SCOPES = "pkg.torch.onnx.name_scopes"
OPTIMIZER_MARK = "pkg.onnxscript."


@dataclass
class AliasReport:
    """What `separate_merged_weights` found and did (`inspect` reports it)."""

    #: exporter merges found: (parameter name as separated, the initializer it aliased)
    merges: list[tuple[str, str]] = field(default_factory=list)
    #: False with --keep-merged-weights: merges found but kept as the exporter wrote them
    separated: bool = True

    def summary(self) -> str | None:
        """One line for warnings, or None when there was nothing to say."""
        if not self.merges:
            return None
        what = (
            "separated into their own parameters"
            if self.separated
            else "kept as shared weights (--keep-merged-weights)"
        )
        return (
            f"{len(self.merges)} weight(s) the exporter merged with an equal one "
            f"(e.g. {self.merges[0][0]} = {self.merges[0][1]}): {what}"
        )


def separate_merged_weights(
    model: onnx.ModelProto, *, keep: bool = False
) -> tuple[onnx.ModelProto, AliasReport]:
    """`model` with every exporter merge undone (module docstring); `keep`: find and
    report them only. The input proto is not modified."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer if t.data_type in FLOAT_DTYPES}
    outputs = {o.name for o in graph.output}
    report = AliasReport(separated=not keep)
    aliases = [
        n
        for n in graph.node
        if n.op_type == "Identity"
        and n.input
        and n.input[0] in inits
        and n.output[0] not in outputs
    ]
    splits = _dynamo_merges(graph, inits)
    report.merges = [(n.output[0], n.input[0]) for n in aliases] + [
        (new, old) for old, groups in splits.items() for new, _ in groups
    ]
    if keep or not report.merges:
        return model, report
    out = onnx.ModelProto()
    out.CopyFrom(model)
    _undo_identity_aliases(out.graph, {n.output[0] for n in aliases}, inits)
    _undo_dedups(out.graph, splits, inits)
    return out, report


def _copy(tensor: onnx.TensorProto, name: str) -> onnx.TensorProto:
    copy = onnx.TensorProto()
    copy.CopyFrom(tensor)
    copy.name = name
    return copy


def _undo_identity_aliases(graph: onnx.GraphProto, alias_outputs: set[str], inits) -> None:
    kept = []
    for node in graph.node:
        if node.op_type == "Identity" and node.output and node.output[0] in alias_outputs:
            graph.initializer.append(_copy(inits[node.input[0]], node.output[0]))
        else:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)


def _innermost_scope(node: onnx.NodeProto) -> str | None:
    for prop in node.metadata_props:
        if prop.key == NAME_SCOPES:
            try:
                entries = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return None
            modules = [e for e in entries[:-1] if e]
            return modules[-1] if modules else ""
    return None


def _optimized(graph: onnx.GraphProto) -> bool:
    """Whether onnxscript's optimizer ran on a dynamo export: it marks the nodes its
    rewriter changes, and the initializers its constant folder makes carry no
    torch.export kind (an unoptimized export records one for every initializer)."""
    if any(p.key.startswith(OPTIMIZER_MARK) for n in graph.node for p in n.metadata_props):
        return True
    kinds = torch_input_kinds(graph)
    return bool(kinds) and any(t.name not in kinds for t in graph.initializer)


def _numel(tensor: onnx.TensorProto) -> int:
    return int(np.prod(list(tensor.dims))) if len(tensor.dims) else 1


def _dynamo_merges(graph: onnx.GraphProto, inits) -> dict[str, list[tuple[str, str]]]:
    """initializer -> [(new name, module scope)] for each module scope after the first
    that reads a deduplicated initializer (module docstring)."""
    if not _optimized(graph):
        return {}
    scopes: dict[str, list[str]] = defaultdict(list)  # initializer -> scopes, in order
    for node in graph.node:
        scope = _innermost_scope(node)
        if scope is None:
            continue
        for tensor in node.input:
            t = inits.get(tensor)
            if t is not None and 1 < _numel(t) <= DEDUP_SIZE_LIMIT and scope not in scopes[tensor]:
                scopes[tensor].append(scope)
    taken = set(inits) | {o for n in graph.node for o in n.output}
    out: dict[str, list[tuple[str, str]]] = {}
    for tensor, found in scopes.items():
        if len(found) < 2:
            continue
        owner = next((s for s in found if tensor.startswith(s + ".")), found[0])
        leaf = tensor.rsplit(".", 1)[-1]
        groups = []
        for scope in found:
            if scope == owner:
                continue
            name = f"{scope}.{leaf}" if scope else leaf
            while name in taken:
                name += "_"
            taken.add(name)
            groups.append((name, scope))
        out[tensor] = groups
    return out


def _undo_dedups(graph: onnx.GraphProto, splits, inits) -> None:
    rename: dict[tuple[str, str], str] = {}  # (scope, initializer) -> its own copy
    for tensor, groups in splits.items():
        for name, scope in groups:
            rename[scope, tensor] = name
            graph.initializer.append(_copy(inits[tensor], name))
    if not rename:
        return
    for node in graph.node:
        scope = _innermost_scope(node)
        for i, tensor in enumerate(node.input):
            new = rename.get((scope, tensor))
            if new is not None:
                node.input[i] = new
