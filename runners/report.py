"""R.json: what a run measured, next to what the plan predicted (pydantic)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class StageTiming(BaseModel):
    stage: int
    device: str
    rank: int
    forward_ms: float = Field(description="mean per micro-batch")
    backward_ms: float = Field(description="mean per micro-batch, B and W together")
    comm_ms: float = Field(description="per iteration: time blocked receiving or finishing sends")
    idle_ms: float = Field(
        description="per iteration: rank time neither computing nor communicating"
    )


class Measured(BaseModel):
    iteration_ms: float = Field(
        description="median over measured steps (the first step is warm-up)"
    )
    throughput_samples_per_s: float
    per_stage: list[StageTiming]
    step_ms: list[float]


class CheckResult(BaseModel):
    kind: str = Field(
        description="outputs (inference vs onnxruntime) or gradients (vs one process)"
    )
    max_abs_diff: float
    max_rel_diff: float
    tolerance: float
    passed: bool
    detail: str = ""


class RunReport(BaseModel):
    bundle: str
    mode: str
    backend: str
    world_size: int
    data_parallel: int = Field(1, description="replicas of the pipeline")
    tensor_parallel: int = Field(1, description="ranks per stage (its tensor-parallel group)")
    zero: int = Field(0, description="1: optimizer state sharded across replicas (ZeRO-1)")
    schedule: str
    microbatches: int = Field(description="per replica per step")
    microbatch_size: int
    steps: int
    losses: list[float] = Field(default_factory=list, description="mean loss per step (training)")
    measured: Measured
    predicted_iteration_ms: float
    measured_over_predicted: float
    check: CheckResult | None = None
