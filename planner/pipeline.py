"""From a partition to a timed pipeline: schedule it, simulate it, choose the schedule.

`schedule_plan` turns an `Assignment` (layers -> stages -> devices) into a `Schedule` of
the requested kind and runs the discrete-event simulator on it with durations from the
cost model. The simulator is the single source of the plan's predicted figures; the
partitioner's closed-form objective is kept beside it for comparison.

Interleaved 1F1B (Megatron-LM, Narayanan et al., SC 2021) needs p x v stages, v model
chunks per device placed round-robin: the p-stage partition's devices are kept and the
layers are re-cut into p x v contiguous chunks of balanced time (a min-max partition of
each layer's mean time over those devices), chunk k on device k mod p.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from planner.baselines import min_max_partition
from planner.objective import Assignment, Evaluation, crossing_tensors, evaluate
from planner.problem import Problem
from planner.schedule.actions import Schedule
from planner.schedule.build import build_schedule, hoist_sends
from planner.schedule.check import check_schedule
from planner.simulator import SimCosts, SimResult, simulate


@dataclass(frozen=True)
class TimedPipeline:
    kind: str
    virtual_stages: int
    assignment: Assignment  # over (virtual) stages; devices repeat when interleaved
    evaluation: Evaluation  # closed-form, per (virtual) stage
    schedule: Schedule
    sim: SimResult
    fits: bool
    peak_memory: dict[str, int]
    capacity: dict[str, int]


def interleave(problem: Problem, a: Assignment, v: int) -> Assignment:
    """Re-cut `a`'s layers into p x v chunks, chunk k on `a`'s device k mod p."""
    p = a.num_stages
    n = len(problem.layers)
    if p * v > n:
        raise ValueError(
            f"interleaving {p} devices x {v} chunks needs {p * v} layers; the model has {n}"
        )
    groups = [problem.group_of_device[d] for d in a.devices]
    weights = [
        sum(layer.compute_s(g, problem.training) for g in groups) / p + 1e-12
        for layer in problem.layers
    ]
    cuts = min_max_partition(weights, p * v)
    stage_of, s = [], 0
    bounds = [*cuts, n]
    for i in range(n):
        while i >= bounds[s]:
            s += 1
        stage_of.append(s)
    return Assignment(tuple(stage_of), tuple(a.devices[k % p] for k in range(p * v)))


def stage_memory(problem: Problem, a: Assignment, ev: Evaluation) -> list[tuple[int, int]]:
    """Per stage: (bytes held all iteration, activation bytes per micro-batch in flight)."""
    flows = problem.flows
    crossing = crossing_tensors(problem, a)
    out = []
    for st in ev.stages:
        static = st.params_state_bytes
        per_mb = st.activation_bytes // max(st.in_flight, 1)
        if problem.config.recompute and problem.training:
            inputs = sum(flows[i].nbytes for i in crossing[st.index - 1]) if st.index > 0 else 0
            static += (
                st.activation_bytes - st.in_flight * inputs
            )  # one micro-batch being recomputed
            per_mb = inputs
        out.append((static, per_mb))
    return out


def messages(routes: list[tuple[str, int, int, int, bool]]) -> tuple[dict, dict]:
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
    routes: list[tuple[str, int, int, int, bool]],
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
        for s, idx in enumerate(crossing_tensors(problem, a))
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


def schedule_plan(
    problem: Problem, a: Assignment, kind: str, virtual_stages: int = 1
) -> TimedPipeline:
    """Schedule `a` as `kind`, check the programs, and simulate one iteration."""
    training = problem.training
    if not training:
        kind, virtual_stages = "gpipe", 1  # inference: forwards only, streamed
    if kind == "interleaved":
        a = interleave(problem, a, virtual_stages)
    else:
        virtual_stages = 1
    problem = replace(problem, config=problem.config.model_copy(update={"schedule": kind}))
    ev = evaluate(problem, a)
    crossing = crossing_tensors(problem, a)
    names = [
        (
            tuple(problem.flows[i].tensor for i in idx),
            tuple(problem.flows[i].tensor for i in idx if problem.flows[i].is_float and training),
        )
        for idx in crossing
    ]
    schedule = build_schedule(
        kind,
        stage_device=list(a.devices),
        microbatches=problem.config.microbatches,
        virtual_stages=virtual_stages,
        crossing=names,
    )
    if training:
        check_schedule(schedule, semantics="rendezvous")
        schedule = hoist_sends(schedule)
        check_schedule(schedule, semantics="eager")
    else:
        schedule = hoist_sends(_forward_only(schedule))
    costs = sim_costs(problem, a, ev)
    sim = simulate(schedule, costs)
    capacity = {}
    for d in dict.fromkeys(a.devices):
        capacity[d] = int(problem.capacity(problem.group_of_device[d]))
    fits = all(sim.peak_memory.get(d, 0) <= capacity[d] for d in capacity)
    return TimedPipeline(
        kind, virtual_stages, a, ev, schedule, sim, fits, dict(sim.peak_memory), capacity
    )


def _forward_only(schedule: Schedule) -> Schedule:
    """Drop backward work and gradient messages (inference)."""
    actions = {
        d: [x for x in acts if x.op == "F" or (x.op in ("SEND", "RECV") and x.direction == "fwd")]
        for d, acts in schedule.actions.items()
    }
    return schedule.model_copy(update={"actions": actions})
