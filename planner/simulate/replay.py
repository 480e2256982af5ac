"""`simulate_plan`: replay a saved plan's schedule in the simulator; trace and timeline.

Everything comes from PLAN.json (per-stage times and memory, routing, schedule, cluster),
so a plan can be re-simulated, traced and drawn without the model.
"""

from __future__ import annotations

import json
import os

from pydantic import BaseModel, Field

from cost.errors import PipeplanError
from cost.files import check_output_file, write_text_atomic
from planner.plan_file import DeviceTimeline, Plan, device_timelines, load_plan
from planner.schedule.build import forward_only
from planner.simulate.costs import make_costs
from planner.simulate.engine import SimResult, simulate
from planner.simulate.timeline import chrome_trace, plot_timeline


class SimulationReport(BaseModel):
    """`pipeplan simulate --json`."""

    schedule: str
    microbatches: int
    virtual_stages: int
    iteration_ms: float
    throughput_samples_per_s: float
    bubble_fraction: float
    global_batch: int = Field(description="samples per iteration over all replicas")
    data_parallel: int = Field(1, description="replicas: each runs the simulated pipeline")
    per_device: list[DeviceTimeline]
    planned_iteration_ms: float = Field(description="the plan's own prediction, for comparison")


def replay(plan: Plan, *, inference: bool = False) -> SimResult:
    """Simulate the plan's schedule from its per-stage figures; `inference`: its forward
    part only (`schedule.build.forward_only`), as `pipeplan run --mode infer` executes it."""
    if plan.schedule is None:
        raise PipeplanError("the plan has no schedule (made by an older pipeplan?): plan it again")
    training = plan.config.training and not inference
    routes = [
        (
            r.tensor,
            r.src_stage,
            r.dst_stage,
            r.bytes,
            training and r.dtype.startswith(("float", "bfloat")),
        )
        for r in plan.routing.forward
    ]
    costs = make_costs(
        forward_s=[s.forward_ms / 1e3 for s in plan.stages],
        backward_s=[s.backward_ms / 1e3 for s in plan.stages],
        weight_grad_s=[s.weight_grad_ms / 1e3 for s in plan.stages],
        memory=[(s.static_memory_bytes, s.activation_bytes_per_microbatch) for s in plan.stages],
        stage_device=[s.device for s in plan.stages],
        routes=routes,
        link=plan.cluster.link_between,
        optimizer_s=[s.optimizer_ms / 1e3 for s in plan.stages] if training else None,
    )
    return simulate(plan.schedule if training else forward_only(plan.schedule), costs)


def simulate_plan(
    plan: Plan | str | os.PathLike[str],
    *,
    trace: str | os.PathLike[str] | None = None,
    png: str | os.PathLike[str] | None = None,
) -> SimulationReport:
    """Simulate `plan`'s schedule; optionally write a Chrome trace and a PNG timeline."""
    check_output_file(trace, "trace")
    check_output_file(png, "png")
    plan = plan if isinstance(plan, Plan) else load_plan(plan)
    sim = replay(plan)
    title = f"{os.path.basename(plan.model.path)} on {plan.cluster.name}: {plan.schedule.kind}, m={plan.schedule.microbatches}"
    if trace is not None:
        write_text_atomic(trace, json.dumps(chrome_trace(sim, plan.schedule, title=title)))
    if png is not None:
        plot_timeline(sim, plan.schedule, png, title=title)
    capacity = {s.device: s.memory_capacity_bytes for s in plan.stages}
    samples = plan.predicted.global_batch
    return SimulationReport(
        schedule=plan.schedule.kind,
        microbatches=plan.schedule.microbatches,
        virtual_stages=plan.schedule.virtual_stages,
        iteration_ms=sim.iteration_s * 1e3,
        throughput_samples_per_s=samples / sim.iteration_s if sim.iteration_s > 0 else 0.0,
        bubble_fraction=sim.bubble_fraction,
        global_batch=samples,
        data_parallel=plan.layout.data_parallel,
        per_device=device_timelines(
            sim, {d: capacity[d] for d in dict.fromkeys(s.device for s in plan.stages)}
        ),
        planned_iteration_ms=plan.predicted.iteration_ms,
    )
