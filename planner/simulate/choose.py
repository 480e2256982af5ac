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

from cost.errors import DoesNotFitError, PipeplanError
from planner.fmt import nbytes
from planner.partition.chain import min_max_partition
from planner.partition.objective import Assignment, Evaluation, boundary_routes, evaluate
from planner.partition.problem import Problem
from planner.schedule.actions import Schedule
from planner.schedule.build import build_schedule, forward_only, hoist_sends
from planner.schedule.check import check_schedule
from planner.simulate.costs import sim_costs
from planner.simulate.engine import SimResult, simulate


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
    routes = boundary_routes(problem, a)
    names = [
        (
            tuple(problem.flows[i].tensor for i in idx),
            tuple(problem.flows[i].tensor for i in idx if problem.flows[i].is_float and training),
        )
        for idx in routes
    ]
    schedule = build_schedule(
        kind,
        stage_device=list(a.devices),
        microbatches=problem.config.microbatches,
        virtual_stages=virtual_stages,
        routes=names,
    )
    if training:
        check_schedule(schedule, semantics="rendezvous")
        schedule = hoist_sends(schedule)
        check_schedule(schedule, semantics="eager")
    else:
        schedule = hoist_sends(forward_only(schedule))
    costs = sim_costs(problem, a, ev)
    sim = simulate(schedule, costs)
    capacity = {}
    for d in dict.fromkeys(a.devices):
        capacity[d] = int(problem.capacity(problem.group_of_device[d]))
    fits = all(sim.peak_memory.get(d, 0) <= capacity[d] for d in capacity)
    return TimedPipeline(
        kind, virtual_stages, a, ev, schedule, sim, fits, dict(sim.peak_memory), capacity
    )


def choose_schedule(problem: Problem, a: Assignment) -> tuple[TimedPipeline, list[TimedPipeline]]:
    """Simulate the schedule(s) the config asks for on split `a` (every kind for `auto`);
    the fastest that fits wins. Returns it and every one tried."""
    cfg = problem.config
    kinds = ["1f1b", "zb", "interleaved", "gpipe"] if cfg.schedule == "auto" else [cfg.schedule]
    if cfg.recompute and problem.training and cfg.schedule == "auto":
        kinds.remove("zb")  # its split backward would recompute twice (planner.api)
    tried: list[TimedPipeline] = []
    for kind in kinds:
        try:
            tried.append(schedule_plan(problem, a, kind, cfg.virtual_stages))
        except ValueError as exc:
            if len(kinds) == 1:
                raise PipeplanError(
                    f"cannot build a {kind} schedule for this plan: {exc}"
                ) from None
    fitting = [t for t in tried if t.fits]
    if not fitting:
        t = min(tried, key=lambda t: max(t.peak_memory[d] - t.capacity[d] for d in t.capacity))
        d = max(t.capacity, key=lambda d: t.peak_memory[d] - t.capacity[d])
        short = t.peak_memory[d] - t.capacity[d]
        raise DoesNotFitError(
            f"model does not fit with the {t.kind} schedule: device {d} peaks at {nbytes(t.peak_memory[d])} "
            f"of {nbytes(t.capacity[d])} usable, short by {nbytes(short)} ({short} bytes); "
            "try --schedule 1f1b, --recompute or fewer micro-batches"
        )
    return min(fitting, key=lambda t: t.sim.iteration_s), tried
