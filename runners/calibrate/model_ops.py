"""The operator part of a calibration, per model: which operators to time, in which order,
and the whole-model context correction (`ModelOps`).

*Context correction*: an operator alone runs warmer than inside its model. The whole
converted model is timed the same way as its operators (`runners.calibrate.operators`),
three times (before, amid and after its operators, since a shared machine's speed drifts);
the excess of its median time over the sum of its operators' isolated times is spread over
the operators in proportion to the bytes each allocates (forward: its outputs; backward:
the gradients of its inputs and parameters); the fitted rate is
`models.<model>.forward_GBps` / `backward_GBps`, and a negative excess is taken as 0 (where
the excess comes from on CPUs: docs/calibration.md). Both figures are kept: `ops:
{signature: {op_type, forward_s, backward_s, isolated_forward_s, isolated_backward_s,
dtype, model}}`.

With `concurrency` N > 1, N - 1 other processes run the model meanwhile
(`runners.calibrate.load`). A pipeline probe (`apply_probe`, `runners.calibrate.probe`)
scales the operators this calibration owns for a model by one forward and one backward
factor.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cost.profile import OpTiming, Profile
from planner.graph.shapes import ShapeBindings
from runners.calibrate.load import BackgroundLoad
from runners.calibrate.operators import OpTimer, time_whole_model
from runners.calibrate.probe import context_factors, replay_record, run_probe


@dataclass(frozen=True)
class ModelRequest:
    """A model whose operators to time, with the shapes to bind."""

    path: str
    bindings: ShapeBindings = field(default_factory=ShapeBindings)


def model_key(req: ModelRequest) -> str:
    b = req.bindings
    parts = [Path(req.path).name]
    if b.batch is not None:
        parts.append(f"batch={b.batch}")
    parts += [f"{k}={v}" for k, v in sorted(b.dims.items())]
    parts += [f"{k}={'x'.join(map(str, v))}" for k, v in sorted(b.input_shapes.items())]
    return " ".join(parts)


class ModelOps:
    """The operator part of a calibration: per-signature timings, whole-model scales."""

    def __init__(
        self,
        op_timer: OpTimer,
        extend: Profile | None,
        context: bool,
        concurrency: int = 1,
        threads: int = 1,
    ):
        self.op_timer = op_timer
        self.context = context
        self.concurrency = concurrency
        self.threads = threads
        self.overheads: dict[str, dict[str, float]] = {}
        self.loads: list[BackgroundLoad] = []
        self.ops: dict[str, OpTiming] = dict(extend.ops) if extend is not None else {}
        self.reports: dict[str, dict] = dict(extend.models) if extend is not None else {}
        self.isolated: dict[str, tuple[float, float]] = {}
        self.owner: dict[str, str] = {}
        self.failures: list[str] = []
        self.runs: list[tuple[ModelRequest, object, dict]] = []

    def plan_steps(self, requests: Sequence[ModelRequest]) -> list[tuple[str, Callable[[], None]]]:
        from planner.graph.load import load_graph

        steps: list[tuple[str, Callable[[], None]]] = []
        for req in requests:
            mg = load_graph(req.path, req.bindings)
            key = model_key(req)
            whole: dict = {}
            self.runs.append((req, mg, whole))
            first = len(steps)
            op_steps = []
            for name, data in mg.graph.nodes(data=True):
                sig = data["signature"]
                if data["folded"] or sig in self.ops or sig in self.owner:
                    continue
                self.owner[sig] = key
                op_steps.append(
                    (f"{data['op_type']} of {Path(req.path).name}", self._op_step(mg, name, sig))
                )
            if self.context:
                # the whole model before, amid and after its operators: the machine's speed
                # drifts, and the ratio must compare like with like
                whole_step = (f"whole {Path(req.path).name}", self._whole_step(mg, req, whole))
                half = len(op_steps) // 2
                op_steps = [whole_step, *op_steps[:half], whole_step, *op_steps[half:], whole_step]
            steps += op_steps
            if self.concurrency > 1:  # the other processes run this model meanwhile
                load = BackgroundLoad(req, self.concurrency - 1, self.threads)
                self.loads.append(load)
                steps[first:] = [
                    (
                        f"{self.concurrency - 1} loaded core(s) for {Path(req.path).name}",
                        load.start,
                    ),
                    (f"operator call overhead, {Path(req.path).name}", self._overhead_step(key)),
                    *steps[first:],
                    ("stopping the load", load.stop),
                ]
            else:
                steps.insert(first, ("operator call overhead", self._overhead_step(key)))
        return steps

    def _overhead_step(self, key: str) -> Callable[[], None]:
        def run() -> None:
            self.overheads[key] = dict(self.op_timer.measure_overhead())

        return run

    def _op_step(self, mg, name: str, sig: str) -> Callable[[], None]:
        def run() -> None:
            try:
                self.isolated[sig] = self.op_timer.time_node(mg, name)
            except Exception as exc:  # an op the converter or torch cannot run: roofline
                text = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
                op = mg.graph.nodes[name]["op_type"]
                self.failures.append(f"{op} in {Path(mg.path).name}: {type(exc).__name__} {text}")

        return run

    def _whole_step(self, mg, req: ModelRequest, whole: dict) -> Callable[[], None]:
        def run() -> None:
            if "error" in whole:
                return
            try:
                fwd, bwd = time_whole_model(self.op_timer, mg, str(req.path), whole)
                whole.setdefault("forward", []).append(fwd)
                whole.setdefault("backward", []).append(bwd)
            except Exception as exc:
                text = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
                whole["error"] = f"{type(exc).__name__} {text}"

        return run

    def _isolated_of(self, sig: str) -> tuple[float, float] | None:
        if sig in self.isolated:
            return self.isolated[sig]
        known = self.ops.get(sig)
        if known is None:
            return None
        return (
            known.isolated_forward_s if known.isolated_forward_s is not None else known.forward_s,
            known.isolated_backward_s
            if known.isolated_backward_s is not None
            else known.backward_s,
        )

    def apply_probe(self, req: ModelRequest, mg, profile: Profile, stages: int) -> bool:
        """Run `req` as a pipeline (`runners.calibrate.probe`) and scale the operators this
        calibration owns for it by the measured forward and backward factors."""
        key = model_key(req)
        report = self.reports.setdefault(key, {})
        try:
            probe = run_probe(profile, req.path, req.bindings, stages=stages)
        except Exception as exc:  # the model cannot be split or run: keep the op times
            text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            report["pipeline"] = {"error": f"{type(exc).__name__} {text}"}
            return False
        owned_sigs = {sig for sig, owner in self.owner.items() if owner == key and sig in self.ops}
        owned = {
            name: (self.ops[d["signature"]].forward_s, self.ops[d["signature"]].backward_s)
            for name, d in mg.graph.nodes(data=True)
            if d["signature"] in owned_sigs
        }
        factors = context_factors(probe["stages"], owned)
        for sig in owned_sigs:
            op = self.ops[sig]
            self.ops[sig] = op.model_copy(
                update={
                    "forward_s": op.forward_s * factors["forward_factor"],
                    "backward_s": op.backward_s * factors["backward_factor"],
                }
            )
        report["pipeline"] = {
            "stages": stages,
            "split": [f"{s.layers[0]} .. {s.layers[-1]}" for s in probe["plan"].stages],
            "forward_factor": round(factors["forward_factor"], 4),
            "backward_factor": round(factors["backward_factor"], 4),
            "per_stage_ms": [
                {
                    (k[:-2] + "_ms" if k.endswith("_s") else k): (
                        round(v * 1e3, 4) if k.endswith("_s") else v
                    )
                    for k, v in st.items()
                    if k != "nodes"
                }
                for st in probe["stages"]
            ],
            "predicted_iteration_ms_before": round(probe["predicted_iteration_s"] * 1e3, 3),
            "measured_iteration_ms": round(probe["measured_iteration_s"] * 1e3, 3),
            "replay": replay_record(probe),
        }
        return True

    def finish(self) -> None:
        """Spread each model's context excess over its new operators by bytes allocated."""
        for req, mg, whole in self.runs:
            key = model_key(req)
            call = self.overheads.get(key, self.op_timer.overhead)
            nodes = [d for _, d in mg.graph.nodes(data=True) if not d["folded"]]
            times = [self._isolated_of(d["signature"]) for d in nodes]
            timed = [(d, t) for d, t in zip(nodes, times, strict=True) if t is not None]
            sum_f = sum(t[0] for _, t in timed)
            sum_b = sum(t[1] for _, t in timed)
            out_bytes = sum(_allocated_bytes(mg, d)[0] for d, _ in timed)
            grad_bytes = sum(_allocated_bytes(mg, d)[1] for d, t in timed if t[1] > 0)
            per_byte_f = per_byte_b = 0.0
            report: dict = {
                "concurrency": self.concurrency,
                "call_overhead_s": call,
                "operators": len(nodes),
                "timed_operators": len(timed),
                "sum_isolated_forward_s": sum_f,
                "sum_isolated_backward_s": sum_b,
                "forward_output_bytes": out_bytes,
                "backward_gradient_bytes": grad_bytes,
            }
            if whole.get("forward") and timed:
                whole_f = statistics.median(whole["forward"])
                whole_b = statistics.median(whole["backward"])
                excess_f = whole_f - call["forward_call_s"] - sum_f
                excess_b = whole_b - call["backward_call_s"] - sum_b
                per_byte_f = max(0.0, excess_f) / out_bytes if out_bytes else 0.0
                per_byte_b = max(0.0, excess_b) / grad_bytes if grad_bytes else 0.0
                report |= {
                    "whole_forward_s": whole_f,
                    "whole_backward_s": whole_b,
                    "whole_rounds_ms": [
                        [round(1e3 * f, 3), round(1e3 * b, 3)]
                        for f, b in zip(whole["forward"], whole["backward"], strict=True)
                    ],
                    "forward_excess_s": excess_f,
                    "backward_excess_s": excess_b,
                    "forward_GBps": round(1e-9 / per_byte_f, 3) if per_byte_f else None,
                    "backward_GBps": round(1e-9 / per_byte_b, 3) if per_byte_b else None,
                }
            elif "error" in whole:
                report["whole_error"] = whole["error"]
            self.reports[key] = report
            whole.pop("module", None)  # free the converted model
            whole.pop("args", None)
            for _, data in mg.graph.nodes(data=True):
                sig = data["signature"]
                if data["folded"] or self.owner.get(sig) != key or sig not in self.isolated:
                    continue
                f, b = self.isolated[sig]
                out_b, grad_b = _allocated_bytes(mg, data)
                self.ops[sig] = OpTiming(
                    op_type=data["op_type"],
                    forward_s=f + per_byte_f * out_b,
                    backward_s=b + per_byte_b * grad_b if b > 0 else 0.0,
                    isolated_forward_s=f,
                    isolated_backward_s=b,
                    dtype=_op_dtype(mg, data),
                    model=Path(req.path).name,
                )


def _allocated_bytes(mg, data: dict) -> tuple[int, int]:
    """(bytes of the outputs, bytes of the gradients backward makes: inputs that carry one
    and parameters) of an operator."""
    outs = sum(
        mg.tensors[t].nbytes for t in data["outputs"] if t in mg.tensors and mg.tensors[t].is_float
    )
    grads = sum(
        mg.tensors[t].nbytes
        for t, role in zip(data["inputs"], data["input_roles"], strict=True)
        if role in ("g", "w") and t in mg.tensors and mg.tensors[t].is_float
    )
    return outs, grads


def _op_dtype(mg, data: dict) -> str:
    for tensor in (*data["outputs"], *data["inputs"]):
        info = mg.tensors.get(tensor)
        if info is not None and info.is_float:
            return _float_dtype_name(info.dtype)
    return "fp32"


def _float_dtype_name(elem_type: int) -> str:
    import onnx

    return {
        onnx.TensorProto.FLOAT16: "fp16",
        onnx.TensorProto.BFLOAT16: "bf16",
    }.get(elem_type, "fp32")
