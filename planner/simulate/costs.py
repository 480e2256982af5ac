"""What the simulator needs to time a schedule, from a split or from a saved plan.

`SimCosts` holds per-stage durations (the roofline cost model's forward, backward and
weight-gradient times), per-message bytes and tensor counts, the links between devices,
the bytes each device holds all iteration and per micro-batch in flight, and each
device's step tail (its optimizer step). `sim_costs` derives them from a split priced by
`planner.partition.objective`; `make_costs` from per-stage figures, which is how a saved
plan is replayed (`planner.simulate.replay`), so both paths give the same simulation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from cost.links import LinkSpec
from planner.partition.objective import Assignment, Evaluation, boundary_routes
from planner.partition.problem import Problem

MessageKey = tuple[str, int, int]  # (direction, src_stage, dst_stage)
#: One tensor crossing one stage boundary: (tensor, src stage, dst stage, bytes, whether
#: its gradient travels back)
Route = tuple[str, int, int, int, bool]


@dataclass
class SimCosts:
    """Everything the simulator needs to time a schedule (seconds, bytes)."""

    #: Per stage: forward of one micro-batch.
    forward_s: list[float]
    #: Per stage: backward of one micro-batch (input gradient + weight gradient).
    backward_s: list[float]
    #: Per device id -> device id: the directed link used for a transfer.
    link: Callable[[str, str], LinkSpec]
    #: Per stage: share of `backward_s` that is the weight gradient (only used when the
    #: schedule splits backward into B and W).
    weight_grad_fraction: list[float] | None = None
    #: (direction, src_stage, dst_stage) -> bytes of one micro-batch's message; missing -> 0.
    message_bytes: dict[MessageKey, int] = field(default_factory=dict)
    #: Same keys: number of tensors in the message, each paying the link latency; default 1.
    message_count: dict[MessageKey, int] = field(default_factory=dict)
    #: Per device: bytes held all iteration (weights, gradients, optimizer state).
    static_bytes: dict[str, int] = field(default_factory=dict)
    #: Per stage: activation bytes saved per micro-batch (see the module docstring).
    activation_bytes: list[int] | None = None
    #: With split backward: share of a micro-batch's activations still held between B and W.
    weight_grad_keep_fraction: float = 1.0
    #: Per device: work after its program, once per iteration (optimizer step), seconds.
    step_tail_s: dict[str, float] = field(default_factory=dict)


def stage_memory(problem: Problem, a: Assignment, ev: Evaluation) -> list[tuple[int, int]]:
    """Per stage: (bytes held all iteration, activation bytes per micro-batch in flight)."""
    flows = problem.flows
    routes = boundary_routes(problem, a)
    out = []
    for st in ev.stages:
        static = st.params_state_bytes
        per_mb = st.activation_bytes // max(st.in_flight, 1)
        if problem.config.recompute and problem.training:
            inputs = sum(flows[i].nbytes for i in routes[st.index - 1]) if st.index > 0 else 0
            static += (
                st.activation_bytes - st.in_flight * inputs
            )  # one micro-batch being recomputed
            per_mb = inputs
        out.append((static, per_mb))
    return out


def messages(routes: list[Route]) -> tuple[dict, dict]:
    """Message bytes and tensor counts per (direction, src, dst) from routes (tensor, src, dst, bytes, float)."""
    message_bytes: dict[tuple[str, int, int], int] = {}
    message_count: dict[tuple[str, int, int], int] = {}
    for _, src, dst, nbytes, is_float in routes:
        keys = [("fwd", src, dst)] + ([("bwd", dst, src)] if is_float else [])
        for key in keys:
            message_bytes[key] = message_bytes.get(key, 0) + nbytes
            message_count[key] = message_count.get(key, 0) + 1
    return message_bytes, message_count


def make_costs(
    *,
    forward_s,
    backward_s,
    weight_grad_s,
    memory: list[tuple[int, int]],
    stage_device: list[str],
    routes: list[Route],
    link,
    optimizer_s=None,
) -> SimCosts:
    """SimCosts from per-stage figures: one function for plans made now and plans read back.
    `optimizer_s` (per stage) becomes each device's step tail."""
    static: dict[str, int] = {}
    for (held, _), device in zip(memory, stage_device, strict=True):
        static[device] = static.get(device, 0) + held
    tail: dict[str, float] = {}
    for step, device in zip(optimizer_s or [0.0] * len(stage_device), stage_device, strict=True):
        tail[device] = tail.get(device, 0.0) + step
    message_bytes, message_count = messages(routes)
    return SimCosts(
        forward_s=list(forward_s),
        backward_s=list(backward_s),
        weight_grad_fraction=[
            w / b if b > 0 else 0.0 for w, b in zip(weight_grad_s, backward_s, strict=True)
        ],
        link=link,
        message_bytes=message_bytes,
        message_count=message_count,
        static_bytes=static,
        activation_bytes=[per_mb for _, per_mb in memory],
        step_tail_s=tail,
    )


def sim_costs(problem: Problem, a: Assignment, ev: Evaluation) -> SimCosts:
    flows = problem.flows
    routes = [
        (flows[i].tensor, s, s + 1, flows[i].nbytes, flows[i].is_float and problem.training)
        for s, idx in enumerate(boundary_routes(problem, a))
        for i in idx
    ]
    return make_costs(
        forward_s=[st.forward_s for st in ev.stages],
        backward_s=[st.backward_s for st in ev.stages],
        weight_grad_s=[st.weight_grad_s for st in ev.stages],
        memory=stage_memory(problem, a, ev),
        stage_device=list(a.devices),
        routes=routes,
        link=problem.cluster.link_between,
        optimizer_s=[st.optimizer_s for st in ev.stages] if problem.training else None,
    )
