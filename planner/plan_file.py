"""PLAN.json: the plan as data (pydantic, `schema_version` 1).

`pipeplan schema plan` prints this model's JSON Schema. Times are per micro-batch in
milliseconds unless named otherwise; bytes are per micro-batch for routes and peak bytes
for memory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from cost.cluster import Cluster
from cost.errors import PipeplanError
from planner.config import PlanConfig
from planner.graph.shapes import ShapeBindings
from planner.schedule.actions import Schedule

SCHEMA_VERSION = 1


class TensorRef(BaseModel):
    name: str
    shape: list[int] | None
    dtype: str


class ModelInfo(BaseModel):
    path: str
    graph_hash: str = Field(description="SHA-256 prefix of the graph structure (weights excluded)")
    producer: str
    opset: int
    symbols: dict[str, int] = Field(description="symbolic dimensions as bound for this plan")
    microbatch_size: int = Field(description="the graph's batch dimension (one micro-batch)")
    inputs: list[TensorRef]
    outputs: list[TensorRef]
    params: int
    param_bytes: int
    has_weights: bool
    merged_weights: int = Field(0, description="weights the exporter had merged with equal ones")
    keep_merged_weights: bool = Field(
        False,
        description="true: those merges were kept as shared weights (--keep-merged-weights); "
        "false: separated into their own parameters (export does the same)",
    )


class StagePlan(BaseModel):
    index: int
    device: str = Field(description="device id, <node>.<index>")
    device_kind: str
    node: str
    layers: list[str]
    nodes: list[str] = Field(
        description="ONNX node names run by this stage, folded shape nodes excluded"
    )
    graph_inputs: list[str] = Field(description="graph inputs this stage reads")
    graph_outputs: list[str] = Field(description="graph outputs this stage writes")
    forward_ms: float
    backward_ms: float
    weight_grad_ms: float = Field(
        0.0, description="part of backward_ms computing weight gradients (W of zero-bubble)"
    )
    compute_ms: float
    optimizer_ms: float = Field(
        0.0,
        description="the step tail, once per iteration: optimizer step over the stage's "
        "parameters plus sync_ms",
    )
    sync_ms: float = Field(
        0.0,
        description="of optimizer_ms: the ring all-reduce of the stage's gradients across "
        "data-parallel replicas (and with ZeRO-1 the all-gather of its parameters)",
    )
    send_blocking_ms: float = Field(
        0.0,
        description="per micro-batch: the stage held by its sends over host-driven links",
    )
    tensor_parallel: int = Field(
        1, description="devices of the stage's tensor-parallel group (its weights split t ways)"
    )
    tensor_devices: list[str] = Field(
        default_factory=list,
        description="the group's device ids, tensor-parallel rank order (`device` is the "
        "first); empty for t = 1",
    )
    tensor_comm_ms: float = Field(
        0.0,
        description="per micro-batch, part of compute_ms: the group's all-reduces (forward "
        "after each row-parallel linear, backward before each column-parallel input gradient)",
    )
    send_ms: float = Field(description="activations to the next stage per micro-batch")
    grad_send_ms: float = Field(description="gradients back from the next stage per micro-batch")
    param_bytes: int = Field(
        description="bytes of the weights this stage holds (shared weights once)"
    )
    params_state_bytes: int = Field(description="weights, gradients, optimizer state and buffers")
    activation_bytes: int = Field(
        description="saved activations at the peak, all in-flight micro-batches"
    )
    in_flight_microbatches: int
    static_memory_bytes: int = Field(0, description="held all iteration (simulator input)")
    activation_bytes_per_microbatch: int = Field(
        0, description="allocated per micro-batch in flight (simulator input)"
    )
    peak_memory_bytes: int
    memory_capacity_bytes: int = Field(description="usable capacity: device memory minus headroom")
    device_memory_bytes: int
    binds: str = Field(description="what limits this stage: compute, link, memory or nothing")
    bottleneck: bool


class Route(BaseModel):
    tensor: str
    src_stage: int
    dst_stage: int
    bytes: int = Field(description="per micro-batch, at the plan's dtype")
    origin_stage: int = Field(description="stage that produces the tensor (relays keep it)")
    consumer_stages: list[int]
    shape: list[int] | None = None
    dtype: str = ""


class Routing(BaseModel):
    forward: list[Route] = Field(description="activations, hop by hop from stage s to s + 1")
    backward: list[Route] = Field(
        description="gradients of floating-point activations, from s + 1 to s"
    )


class Predicted(BaseModel):
    """From the discrete-event simulator, for the chosen schedule."""

    schedule: str = Field("", description="the schedule these figures are for")
    iteration_ms: float
    throughput_samples_per_s: float
    bottleneck_ms: float = Field(description="slowest stage or link per micro-batch (closed form)")
    bottleneck: str
    bubble_fraction: float = Field(description="1 - busy device time / (devices x iteration time)")
    global_batch: int
    analytic_iteration_ms: float = Field(
        0.0,
        description="the partitioner's closed-form iteration time for the same split (1F1B/GPipe form)",
    )


class DeviceTimeline(BaseModel):
    device: str
    busy_ms: float
    idle_ms: float
    peak_memory_bytes: int
    memory_capacity_bytes: int
    send_blocking_ms: float = Field(0.0, description="stream held issuing host-driven sends")
    optimizer_ms: float = Field(0.0, description="the step tail: optimizer after the program")


def device_timelines(sim, capacity: dict[str, int]) -> list[DeviceTimeline]:
    """Per-device figures of a simulation (`planner.simulate.engine.SimResult`), in `capacity` order."""
    return [
        DeviceTimeline(
            device=d,
            busy_ms=sim.per_device[d].busy_s * 1e3,
            idle_ms=sim.per_device[d].idle_s * 1e3,
            peak_memory_bytes=sim.peak_memory.get(d, 0),
            memory_capacity_bytes=capacity[d],
            send_blocking_ms=sim.per_device[d].send_blocking_s * 1e3,
            optimizer_ms=sim.per_device[d].tail_s * 1e3,
        )
        for d in capacity
    ]


class ScheduleTrial(BaseModel):
    kind: str
    virtual_stages: int
    iteration_ms: float
    fits: bool


class Simulation(BaseModel):
    per_device: list[DeviceTimeline]
    tried: list[ScheduleTrial] = Field(
        description="schedules simulated for this split (several with --schedule auto)"
    )


class SolverReport(BaseModel):
    strategy: str
    backend: str = Field(
        description="dp (the chain dynamic programme, planner.partition.chain_dp), highs, "
        "cbc, or none (a baseline)"
    )
    status: str = Field(
        description="optimal, near_optimal (proven within `gap`, at most the config's "
        "tail_gap: solved without the optimizer-step tail), time_limit (best found, not "
        "proven optimal), heuristic, baseline_fallback"
    )
    optimal: bool
    objective: float | None = Field(description="seconds per iteration (or per sample for latency)")
    bound: float | None = Field(description="proven lower bound on the objective, seconds")
    gap: float | None = Field(description="(objective - bound) / objective")
    seconds: float
    build_seconds: float = 0.0
    variables: int = 0
    constraints: int = 0
    warm_start: str | None = None


class Layout(BaseModel):
    """How the devices are used: data-parallel replicas of one pipeline."""

    data_parallel: int = Field(1, description="replicas, each running the whole pipeline")
    pipeline_stages: int = Field(
        1,
        description="devices in each replica's pipeline (interleaved schedules put several "
        "model chunks on each)",
    )
    zero: int = Field(0, description="1: optimizer state sharded across replicas (ZeRO-1)")
    global_batch: int = Field(0, description="samples per iteration over all replicas")
    batch: str = Field(
        "per-replica",
        description="per-replica: each replica runs --microbatches micro-batches (the global "
        "batch grows with replicas); fixed-global: --global-batch fixed it and it is split",
    )
    microbatches_per_replica: int = 0
    devices_used: int = 0
    devices_idle: list[str] = Field(default_factory=list)
    shape: str = Field("", description="one replica's devices, e.g. '2x A100-80GB'")
    tensor_parallel: int = Field(
        1, description="devices per stage: every stage runs on a tensor-parallel group of t"
    )


class LayoutTrial(BaseModel):
    """One layout the search priced (best split for it): replicas x stages x t."""

    data_parallel: int
    tensor_parallel: int = 1
    pipeline_stages: int = 0
    shape: str = ""
    replica_devices: int = 0
    fits: bool
    iteration_ms: float | None = Field(None, description="closed form, all-reduce included")
    throughput_samples_per_s: float = Field(0.0, description="closed form, all replicas")
    allreduce_ms: float = Field(0.0, description="slowest stage's step-tail collectives")
    chosen: bool = False
    pruned: bool = Field(
        False, description="not solved: its bound could not beat a layout already found"
    )
    bound_samples_per_s: float | None = Field(
        None, description="throughput no split of this layout can exceed (closed form)"
    )
    note: str = ""


class BaselineRow(BaseModel):
    strategy: str
    stages: int
    iteration_ms: float
    throughput_samples_per_s: float
    fits: bool


class Plan(BaseModel):
    schema_version: int = SCHEMA_VERSION
    model: ModelInfo
    config: PlanConfig
    bindings: dict[str, Any] = Field(default_factory=dict)
    cluster: Cluster
    stages: list[StagePlan]
    routing: Routing
    predicted: Predicted
    solver: SolverReport
    layout: Layout = Field(default_factory=Layout)
    replicas: list[list[str]] = Field(
        default_factory=list,
        description="per data-parallel replica: the device of each stage (replica 0 is "
        "`stages[*].device`)",
    )
    tensor_groups: dict[str, list[str]] = Field(
        default_factory=dict,
        description="each tensor-parallel group in use, keyed by its first device (the id "
        "`stages` and `replicas` name): its devices in tensor-parallel rank order",
    )
    layouts_tried: list[LayoutTrial] = Field(default_factory=list)
    simulation: Simulation | None = None
    schedule: Schedule | None = None
    baselines: list[BaselineRow] = Field(default_factory=list)
    explanation: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    pricing: dict = Field(
        default_factory=dict,
        description="where the predicted operator times come from (`planner.sources`): "
        "operators and share of predicted compute per source (measured, family, roofline), "
        "and the families a profiled device had no fit for",
    )


def plan_bindings(plan: Plan) -> ShapeBindings:
    """The shape bindings a plan was made with."""
    return ShapeBindings.from_dict(plan.bindings)


def load_plan(path: str | os.PathLike[str]) -> Plan:
    """Read and validate PLAN.json; one-line `PipeplanError` when missing or invalid."""
    p = Path(path)
    if not p.exists():
        raise PipeplanError(f"plan file not found: {p}")
    try:
        return Plan.model_validate_json(p.read_text())
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(x) for x in first["loc"])
        raise PipeplanError(f"invalid plan {p}: {where}: {first['msg']}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise PipeplanError(f"invalid plan {p}: {str(exc).splitlines()[0]}") from None
