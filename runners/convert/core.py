"""ONNX graph -> ``torch.fx.GraphModule``: values, parameters, constant folding.

Every ONNX value is, while converting, either an ``fx.Node`` (it depends on a graph
input or a parameter) or a ``torch.Tensor`` known at conversion time (initializers that
are not parameters, Constant nodes, and everything computed only from those). Op
handlers (``runners.convert.ops``) emit calls through :meth:`NodeCtx.call`, which folds
the call when no argument is a node, so shape arithmetic disappears from the graph and
shapes, axes and pads usually reach torch ops as Python lists.
"""

from __future__ import annotations

import copy
import keyword
import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx
import onnx.inliner
import torch
import torch.fx as fx
from torch import nn

from cost.opcost import is_data_input
from planner.graph.onnx_io import untrained_tensors
from runners.convert import weights as W

Value = fx.Node | torch.Tensor


def py_name(name: str, fallback: str = "v") -> str:
    """A Python identifier from an ONNX name."""
    s = re.sub(r"\W", "_", name).strip("_") or fallback
    if s[0].isdigit():
        s = f"{fallback}_{s}"
    if keyword.iskeyword(s):
        s += "_"
    return s


def has_node(args: Any) -> bool:
    found = False

    def visit(a):
        nonlocal found
        if isinstance(a, fx.Node):
            found = True
        return a

    fx.node.map_aggregate(args, visit)
    return found


class OnnxGraphModule(fx.GraphModule):
    """The converted model; keeps the ONNX name tables across ``copy.deepcopy``."""

    _extra = ("input_names", "output_names", "param_names", "buffer_names", "opset")

    def __deepcopy__(self, memo):
        res = super().__deepcopy__(memo)
        for k in self._extra:
            if hasattr(self, k):
                setattr(res, k, copy.deepcopy(getattr(self, k), memo))
        for sub in ("params", "state", "consts"):
            if hasattr(self, sub):
                setattr(res, sub, copy.deepcopy(getattr(self, sub), memo))
        return res


class Converter:
    def __init__(self, model: onnx.ModelProto, base_dir: Path | None, seed: int, weights: str):
        if weights not in ("auto", "random"):
            raise ValueError(f"weights must be 'auto' or 'random', not {weights!r}")
        if model.functions:
            model = onnx.inliner.inline_local_functions(model)
        self.model = model
        self.base_dir = base_dir
        self.seed = seed
        self.weights = weights
        self.opset = next(
            (o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13
        )
        self.graph = fx.Graph()
        self.root = nn.Module()
        self.root.params = nn.Module()
        self.root.state = nn.Module()
        self.root.consts = nn.Module()
        self.env: dict[str, Value] = {}
        self.param_names: dict[str, str] = {}
        self.buffer_names: dict[str, str] = {}
        self.init_values: dict[str, torch.Tensor] = {}  # all initializer values (incl. params)
        self._attr_names: set[str] = set()
        self._materialized: dict[int, fx.Node] = {}
        self._keep_alive: list[torch.Tensor] = []
        self._init_of: dict[int, str] = {}  # id(tensor) -> initializer name
        self._random: list[str] = []
        self.info = self._infer_info()

    # ------------------------------------------------------------------ static info

    def _infer_info(self) -> dict[str, tuple[torch.dtype | None, list[int | None] | None]]:
        """dtype and shape of every value ONNX shape inference knows about."""
        info: dict[str, tuple[torch.dtype | None, list[int | None] | None]] = {}
        try:
            inferred = onnx.shape_inference.infer_shapes(self.model, data_prop=True)
            graph = inferred.graph
        except Exception:  # inference is an optimisation only
            graph = self.model.graph
        for vi in [*graph.input, *graph.value_info, *graph.output]:
            tt = vi.type.tensor_type
            if not vi.type.HasField("tensor_type"):
                continue
            dtype = W.ONNX_TO_TORCH.get(tt.elem_type)
            shape = None
            if tt.HasField("shape"):
                shape = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
            info[vi.name] = (dtype, shape)
        return info

    # ------------------------------------------------------------------ registration

    def _unique_attr(self, owner: str, name: str) -> str:
        base = py_name(name, "t")
        cand, i = base, 1
        while f"{owner}.{cand}" in self._attr_names:
            i += 1
            cand = f"{base}_{i}"
        self._attr_names.add(f"{owner}.{cand}")
        return cand

    def materialize(self, t: torch.Tensor, hint: str) -> fx.Node:
        """A get_attr node for a constant tensor (a buffer, registered once)."""
        node = self._materialized.get(id(t))
        if node is not None:
            return node
        init = self._init_of.get(id(t))
        if init is not None:
            attr = self._unique_attr("state", init)
            self.root.state.register_buffer(attr, t)
            path = f"state.{attr}"
            self.buffer_names[init] = path
        else:
            attr = self._unique_attr("consts", hint)
            self.root.consts.register_buffer(attr, t, persistent=False)
            path = f"consts.{attr}"
        node = self.graph.get_attr(path)
        self._materialized[id(t)] = node
        self._keep_alive.append(t)
        return node

    # ------------------------------------------------------------------ initializers

    def _classify(self) -> tuple[set[str], dict[str, str]]:
        """Names of initializers that become parameters, and normalisation roles."""
        inits = {t.name: t for t in self.model.graph.initializer}
        trainable: set[str] = set()
        for node in self.model.graph.node:
            for i, name in enumerate(node.input):
                if name in inits and is_data_input(node.op_type, i):
                    trainable.add(name)
        for o in self.model.graph.output:
            if o.name in inits:
                trainable.add(o.name)
        untrained = untrained_tensors(self.model.graph)
        params = set()
        for name in trainable - untrained:
            t = inits[name]
            dtype = W.torch_dtype(t.data_type)
            if dtype.is_floating_point and len(t.dims) >= 1:
                params.add(name)
        return params, W.roles(self.model.graph)

    def load_initializers(self) -> None:
        params, roles = self._classify()
        used = {n for node in self.model.graph.node for n in node.input}
        used |= {o.name for o in self.model.graph.output}
        for t in self.model.graph.initializer:
            if t.name not in used:
                continue
            dtype = W.torch_dtype(t.data_type)
            shape = tuple(t.dims)
            is_param = t.name in params
            value = None
            randomize = self.weights == "random" and is_param
            if not randomize:
                value = W.load_tensor(t, self.base_dir)
            if value is None:
                role = roles.get(t.name)
                value = W.random_init(t.name, shape, dtype, self.seed, role)
                self._random.append(t.name)
            self.init_values[t.name] = value
            if is_param:
                attr = self._unique_attr("params", t.name)
                self.root.params.register_parameter(attr, nn.Parameter(value))
                self.param_names[t.name] = f"params.{attr}"
            else:
                self.env[t.name] = value
                self._init_of[id(value)] = t.name
        if self._random and self.weights == "auto":
            warnings.warn(
                f"{len(self._random)} initializer(s) have no data (external data file absent); "
                "they get seeded random values",
                stacklevel=3,
            )

    def lookup(self, name: str) -> Value:
        if name in self.env:
            return self.env[name]
        if name in self.param_names:
            node = self.graph.get_attr(self.param_names[name])
            self.env[name] = node
            return node
        raise KeyError(f"ONNX value {name!r} is used before it is produced")

    # ------------------------------------------------------------------ conversion

    def run(self) -> OnnxGraphModule:
        from runners.convert.ops import HANDLERS

        g = self.model.graph
        inits = {t.name for t in g.initializer}
        self.input_names = [i.name for i in g.input if i.name not in inits]
        for name in self.input_names:
            self.env[name] = self.graph.placeholder(py_name(name, "input"))
        self.load_initializers()
        for node in g.node:
            key = (
                node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
            )
            if node.domain not in ("", "ai.onnx") and key not in HANDLERS:
                raise NotImplementedError(
                    f"ONNX op {node.domain}::{node.op_type} (opset {self.opset}) is not "
                    "supported by pipeplan's converter"
                )
            handler = HANDLERS.get(key)
            if handler is None:
                raise NotImplementedError(
                    f"ONNX op {node.op_type} (opset {self.opset}) is not supported by "
                    "pipeplan's converter"
                )
            ctx = NodeCtx(self, node)
            result = handler(ctx)
            outs = [o for o in node.output]
            if not isinstance(result, list | tuple):
                result = [result]
            for name, value in zip(outs, result, strict=False):
                if name:
                    self.env[name] = value
        outputs = []
        self.output_names = [o.name for o in g.output]
        for name in self.output_names:
            v = self.lookup(name)
            if isinstance(v, torch.Tensor):
                v = self.materialize(v, name)
            outputs.append(v)
        self.graph.output(tuple(outputs))
        self.graph.lint()
        gm = OnnxGraphModule(self.root, self.graph, class_name="OnnxModel")
        gm.params = self.root.params
        gm.state = self.root.state
        gm.consts = self.root.consts
        gm.input_names = list(self.input_names)
        gm.output_names = list(self.output_names)
        gm.param_names = dict(self.param_names)
        gm.buffer_names = dict(self.buffer_names)
        gm.opset = self.opset
        return gm


class NodeCtx:
    """What an op handler sees of one ONNX node."""

    def __init__(self, conv: Converter, node: onnx.NodeProto):
        self.conv = conv
        self.node = node
        self.op = node.op_type
        self.opset = conv.opset
        self.attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        self.n_in = len(node.input)
        self.n_out = len([o for o in node.output])

    # -------------------------------------------------------------- inputs

    def has(self, i: int) -> bool:
        return i < len(self.node.input) and self.node.input[i] != ""

    def val(self, i: int) -> Value | None:
        """Input ``i``: a node, a constant tensor, or None when absent."""
        if not self.has(i):
            return None
        return self.conv.lookup(self.node.input[i])

    def vals(self) -> list[Value]:
        return [self.val(i) for i in range(self.n_in) if self.has(i)]

    def const(self, i: int) -> torch.Tensor | None:
        """Input ``i`` if its value is known now (a parameter's current data included)."""
        if not self.has(i):
            return None
        name = self.node.input[i]
        v = self.conv.env.get(name)
        if isinstance(v, torch.Tensor):
            return v
        if name in self.conv.param_names:
            return self.conv.init_values[name].detach()
        return None

    def ints_or_node(self, i: int) -> list[int] | fx.Node | None:
        """A static int list (shapes, axes, pads) if known now, else the run-time node."""
        c = self.const(i)
        if c is not None:
            return [int(x) for x in c.reshape(-1).tolist()]
        return self.val(i)

    def scalar_or_val(self, i: int):
        """A rank-0 constant as a Python number (readable code); else ``val(i)``."""
        c = self.val(i)
        if isinstance(c, torch.Tensor) and c.dim() == 0:
            return c.item()
        return c

    def attr(self, name: str, default=None):
        v = self.attrs.get(name, default)
        if isinstance(v, bytes):
            v = v.decode()
        return v

    def dtype(self, i: int) -> torch.dtype | None:
        v = self.val(i)
        if isinstance(v, torch.Tensor):
            return v.dtype
        name = self.node.input[i]
        if name in self.conv.param_names:
            return self.conv.init_values[name].dtype
        return self.conv.info.get(name, (None, None))[0]

    def shape(self, i: int) -> list[int | None] | None:
        v = self.val(i)
        if isinstance(v, torch.Tensor):
            return list(v.shape)
        name = self.node.input[i]
        if name in self.conv.param_names:
            return list(self.conv.init_values[name].shape)
        return self.conv.info.get(name, (None, None))[1]

    def rank(self, i: int) -> int | None:
        s = self.shape(i)
        return None if s is None else len(s)

    def out_shape(self, j: int = 0) -> list[int | None] | None:
        return self.conv.info.get(self.node.output[j], (None, None))[1]

    # -------------------------------------------------------------- emission

    def _name(self, suffix: str = "") -> str:
        out = next((o for o in self.node.output if o), self.node.name or self.op)
        return py_name(out + suffix, "v")

    def call(self, fn: Callable, *args, n_out: int = 1, **kwargs):
        """``fn(*args, **kwargs)`` now if no argument is a node, else an fx call node.

        With ``n_out > 1`` the result is a list of ``n_out`` values (getitem nodes)."""
        return self._emit("call_function", fn, args, kwargs, n_out)

    def method(self, name: str, *args, n_out: int = 1, **kwargs):
        return self._emit("call_method", name, args, kwargs, n_out)

    def _emit(self, kind: str, target, args, kwargs, n_out: int):
        if not has_node((args, kwargs)):
            with torch.no_grad():
                if kind == "call_function":
                    res = target(*args, **kwargs)
                else:
                    res = getattr(args[0], target)(*args[1:], **kwargs)
            if n_out > 1:
                return list(res)
            return res
        hint = self._name()

        def lift(a):
            if isinstance(a, torch.Tensor):
                return self.conv.materialize(a, hint + "_const")
            return a

        args = fx.node.map_aggregate(args, lift)
        kwargs = fx.node.map_aggregate(kwargs, lift)
        name = self._name() if n_out == 1 else py_name(self.node.name or self._name("_out"))
        node = self.conv.graph.create_node(kind, target, tuple(args), dict(kwargs), name=name)
        if n_out == 1:
            return node
        import operator

        outs = []
        for j in range(n_out):
            oname = self.node.output[j] if j < len(self.node.output) else ""
            outs.append(
                self.conv.graph.create_node(
                    "call_function",
                    operator.getitem,
                    (node, j),
                    {},
                    name=py_name(oname or f"{name}_{j}", "v"),
                )
            )
        return outs

    def unsupported(self, what: str) -> NotImplementedError:
        return NotImplementedError(
            f"ONNX op {self.op} (opset {self.opset}) with {what} is not supported by "
            "pipeplan's converter"
        )


def load_model(model: onnx.ModelProto | str | os.PathLike) -> tuple[onnx.ModelProto, Path | None]:
    if isinstance(model, onnx.ModelProto):
        return model, None
    path = Path(model)
    # external data is read per tensor (a missing data file means random weights)
    return onnx.load(str(path), load_external_data=False), path.parent
