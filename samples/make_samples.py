"""Export the sample models of ``samples/zoo.py`` to ONNX.

Usage::

    python samples/make_samples.py [--out DIR] [--only NAME ...]

Both torch exporters are used on purpose, so the planner is exercised on both
flavours of graph:

* ``mlp``, ``resnet``: TorchScript exporter (``dynamo=False``). Node names carry
  module scopes, e.g. ``/layers.0/Gemm``. ``resnet`` is exported with
  ``do_constant_folding=False`` so BatchNormalization is *not* folded into
  the convolutions (the planner plans training and must see BN).
* ``gpt``, ``inception``, ``gpt_xl``: dynamo exporter (``dynamo=True``, opset 18).
  Module scopes are in each node's ``metadata_props`` under
  ``pkg.torch.onnx.name_scopes``.
* ``gpt_xl`` (GPT-2 XL, ~1.56 B parameters) is built on the meta device and
  written as a graph only: every initializer is a TensorProto with the right
  dims/dtype whose data lives EXTERNALLY in ``gpt_xl.onnx.data``, a file that
  is never written.

The batch dimension of every input and output is dynamic and named ``batch``.
Every file is written atomically (temp file, then ``os.replace``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch

if __package__ in (None, ""):  # run as a script: make `samples` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from samples import zoo  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "models"
BATCH = "batch"
DYNAMO_OPSET = 18
XL_DATA_ALIGNMENT = 4096  # byte alignment of tensors in the (virtual) external data file

# Node metadata keys dropped from dynamo exports (see samples/README.md), to keep
# gpt.onnx and gpt_xl.onnx under 1 MB: Python stack traces (with absolute paths of
# the machine that ran the export), the FX node text, and "namespace", which is just
# name_scopes and class_hierarchy joined into one string. Kept:
# pkg.torch.onnx.name_scopes, pkg.torch.onnx.class_hierarchy and any other key.
DROPPED_NODE_METADATA = (
    "pkg.torch.onnx.stack_trace",
    "pkg.torch.onnx.fx_node",
    "namespace",
)


@dataclass(frozen=True)
class Spec:
    """How one sample model is exported."""

    name: str
    exporter: str  # "torchscript" or "dynamo"
    opset: int
    input_names: tuple[str, ...]
    output_names: tuple[str, ...] = ("logits",)
    meta: bool = False  # build on the meta device, write a graph-only file


SPECS: dict[str, Spec] = {
    s.name: s
    for s in (
        Spec("mlp", "torchscript", 13, ("x",)),
        Spec("gpt", "dynamo", DYNAMO_OPSET, ("idx",)),
        Spec("resnet", "torchscript", 17, ("images",)),
        Spec("inception", "dynamo", DYNAMO_OPSET, ("images",)),
        Spec("gpt_xl", "dynamo", DYNAMO_OPSET, ("idx",), meta=True),
    )
}


# -----------------------------------------------------------------------------
# Writing


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temp path next to ``path``; move it onto ``path`` on success."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_proto(proto: onnx.ModelProto, path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(proto.SerializeToString())


# -----------------------------------------------------------------------------
# TorchScript exporter


def export_torchscript(spec: Spec, model: torch.nn.Module, inputs: tuple, path: Path) -> None:
    names = spec.input_names + spec.output_names
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # "legacy TorchScript exporter"
        torch.onnx.export(
            model,
            inputs,
            str(tmp),
            dynamo=False,
            opset_version=spec.opset,
            input_names=list(spec.input_names),
            output_names=list(spec.output_names),
            dynamic_axes={n: {0: BATCH} for n in names},
            # Constant folding in EVAL mode folds every BatchNormalization into the
            # preceding Conv. Without it BN stays a real BatchNormalization op
            # (training_mode=0, running stats as named initializers): a planner for
            # training must see BN. training=TrainingMode.PRESERVE gives the same
            # graph but warns that constant folding may mutate parameters.
            do_constant_folding=False,
        )


# -----------------------------------------------------------------------------
# Dynamo exporter


def _optimize(model, protected: set[str]) -> None:
    """The exporter's default ``optimize=True`` pipeline, minus two things.

    ``onnxscript.optimizer.optimize_ir`` (i) fuses BatchNormalization into the
    preceding Conv (a rewrite rule), (ii) constant-folds ``Transpose(weight)``
    into new anonymous initializers (``val_9``), losing parameter names and, for a
    tied weight, storing it twice; and (iii) deduplicates initializers of up to 1024
    elements by *content*, so e.g. every freshly initialised LayerNorm weight (all
    ones) becomes ONE shared initializer. A planner must not see those as shared
    weights. So: no BN fusion, no folding of any node that reads a parameter or
    buffer, and no initializer deduplication. Everything else matches ``optimize_ir``.
    """
    import onnx_ir as ir
    import onnx_ir.passes.common as common
    from onnxscript import optimizer, rewriter

    def should_fold(node: ir.Node) -> bool | None:
        for value in node.inputs:
            if value is not None and value.is_initializer() and value.name in protected:
                return False
        return None  # default rules

    # The default rewrite rules include FuseBatchNormInto{Conv,ConvTranspose,Gemm}:
    # keep BatchNormalization visible to the planner.
    rules = [r for r in rewriter._DEFAULT_REWRITE_RULES if "BatchNorm" not in (r.name or "")]
    optimizer.inline(model)
    for _ in range(2):
        optimizer.fold_constants(model, should_fold=should_fold)
        rewriter.rewrite(model, pattern_rewrite_rules=rules)
        optimizer.remove_unused_nodes(model)
    ir.passes.Sequential(
        common.RemoveUnusedOpsetsPass(),
        common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        common.CommonSubexpressionEliminationPass(),
        common.OutputFixPass(),
        common.NameFixPass(),
    )(model)


def _externalize(model, location: str) -> None:
    """Point every parameter/buffer initializer at ``location`` without writing it.

    Offsets are laid out as if the tensors were written back to back, each aligned
    to ``XL_DATA_ALIGNMENT`` bytes. Nothing reads the (meta) tensor data.
    """
    import onnx_ir as ir

    offset = 0
    for value in model.graph.initializers.values():
        tensor = value.const_value
        if not isinstance(tensor.raw, torch.Tensor) or tensor.raw.device.type != "meta":
            continue  # small constants made by the exporter: keep inline
        length = tensor.raw.numel() * tensor.raw.element_size()
        offset = -(-offset // XL_DATA_ALIGNMENT) * XL_DATA_ALIGNMENT
        value.const_value = ir.ExternalTensor(
            location, offset, length, tensor.dtype, shape=tensor.shape, name=value.name
        )
        offset += length


def _strip_metadata(proto: onnx.ModelProto, keys: Iterable[str]) -> None:
    drop = set(keys)
    for node in proto.graph.node:
        kept = [p for p in node.metadata_props if p.key not in drop]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)


def export_dynamo(spec: Spec, model: torch.nn.Module, inputs: tuple, path: Path) -> None:
    import onnx_ir as ir

    batch = torch.export.Dim(BATCH, min=1, max=1024)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        program = torch.onnx.export(
            model,
            inputs,
            dynamo=True,
            opset_version=spec.opset,
            input_names=list(spec.input_names),
            output_names=list(spec.output_names),
            dynamic_shapes=tuple({0: batch} for _ in inputs),
            optimize=False,  # see _optimize()
            verbose=False,
        )
    ir_model = program.model
    if spec.meta:
        _externalize(ir_model, f"{path.name}.data")
    _optimize(ir_model, protected=set(ir_model.graph.initializers))
    proto = ir.serde.serialize_model(ir_model)
    _strip_metadata(proto, DROPPED_NODE_METADATA)
    save_proto(proto, path)


# -----------------------------------------------------------------------------
# Checks and summary


def check_model_graph_only(path: Path) -> None:
    """``onnx.checker.check_model`` (non-full) for a file whose external data is absent.

    The checker does not read external data, but it does require every referenced
    data file to exist as a regular file next to the model. Check a copy of the
    model next to empty placeholder files instead.
    """
    proto = onnx.load(str(path), load_external_data=False)
    locations = {
        e.value
        for t in proto.graph.initializer
        if t.data_location == onnx.TensorProto.EXTERNAL
        for e in t.external_data
        if e.key == "location"
    }
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / path.name
        copy.write_bytes(path.read_bytes())
        for loc in locations:
            (Path(tmp) / loc).touch()
        onnx.checker.check_model(str(copy))


def check(spec: Spec, model: torch.nn.Module, path: Path) -> dict:
    """Validate the written file and return the row for the summary table."""
    proto = onnx.load(str(path), load_external_data=False)
    if spec.meta:
        check_model_graph_only(path)
    else:
        onnx.checker.check_model(proto)
    onnx.shape_inference.infer_shapes(proto, strict_mode=True)

    for vi in list(proto.graph.input) + list(proto.graph.output):
        dim0 = vi.type.tensor_type.shape.dim[0]
        if dim0.dim_param != BATCH:
            raise AssertionError(f"{path.name}: {vi.name} dim 0 is {dim0!r}, want {BATCH!r}")

    # Every unique torch parameter must appear as exactly one initializer, under any
    # of its names (a tied parameter has several: wte.weight / lm_head.weight).
    aliases: dict[str, int] = {}
    for pname, p in model.named_parameters(remove_duplicate=False):
        aliases[pname] = id(p)
    found: dict[int, int] = {}
    init_elems = onnx_param_elems = external = 0
    for init in proto.graph.initializer:
        n = 1
        for d in init.dims:
            n *= d
        init_elems += n
        external += init.data_location == onnx.TensorProto.EXTERNAL
        if init.name in aliases:
            found[aliases[init.name]] = found.get(aliases[init.name], 0) + 1
            onnx_param_elems += n
    torch_params = zoo.num_parameters(model)
    unique = {id(p) for p in model.parameters()}
    if set(found) != unique or any(c != 1 for c in found.values()):
        raise AssertionError(f"{path.name}: parameters not exported one-to-one")
    if onnx_param_elems != torch_params:
        raise AssertionError(f"{path.name}: {onnx_param_elems} != {torch_params} parameters")
    if spec.meta and external == 0:
        raise AssertionError(f"{path.name}: expected external initializers")

    return {
        "file": path.name,
        "size": path.stat().st_size,
        "nodes": len(proto.graph.node),
        "inits": len(proto.graph.initializer),
        "external": external,
        "init_elems": init_elems,
        "onnx_params": onnx_param_elems,
        "params": torch_params,
    }


def print_table(rows: Sequence[dict]) -> None:
    cols = [
        ("file", "file", "<"),
        ("size", "size (B)", ">"),
        ("nodes", "nodes", ">"),
        ("inits", "initializers", ">"),
        ("external", "external", ">"),
        ("init_elems", "init elements", ">"),
        ("onnx_params", "param elements", ">"),
        ("params", "torch params", ">"),
    ]

    def fmt(v) -> str:
        return f"{v:,}" if isinstance(v, int) else str(v)

    widths = [max(len(h), *(len(fmt(r[k])) for r in rows)) for k, h, _ in cols]
    print("  ".join(f"{h:{a}{w}}" for (_, h, a), w in zip(cols, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(f"{fmt(r[k]):{a}{w}}" for (k, _, a), w in zip(cols, widths, strict=True)))


def make(name: str, out: Path) -> dict:
    spec = SPECS[name]
    model, inputs = zoo.build(name, seed=0, batch=2, device="meta" if spec.meta else "cpu")
    path = out / f"{name}.onnx"
    if spec.exporter == "torchscript":
        export_torchscript(spec, model, inputs, path)
    else:
        export_dynamo(spec, model, inputs, path)
    return check(spec, model, path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    parser.add_argument(
        "--only", nargs="+", choices=list(SPECS), metavar="NAME", help="models to export"
    )
    args = parser.parse_args(argv)
    rows = []
    for name in args.only or list(SPECS):
        print(f"exporting {name} ...", file=sys.stderr, flush=True)
        rows.append(make(name, args.out))
    print_table(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
