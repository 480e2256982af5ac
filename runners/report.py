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


class Latency(BaseModel):
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float


class Serving(BaseModel):
    """A streamed inference run (`--engine onnxruntime`): per-request latency and
    throughput, next to the plan's predictions (`runners.ort.serving`)."""

    requests: int = Field(description="requests measured (after the warm-up ones)")
    warmup: int
    in_flight: int = Field(description="requests in each pipeline at once")
    providers: dict[str, list[str]] = Field(description="stage -> its session's providers")
    latency: Latency = Field(description="first stage's start to last stage's end of each request")
    throughput_samples_per_s: float = Field(
        description="samples completed per second over the measured requests"
    )
    requests_per_s: float
    predicted_latency_ms: float = Field(
        description="the plan: its stages' forward times and forward transfers, summed"
    )
    predicted_throughput_samples_per_s: float = Field(
        description="the plan: micro-batch size x replicas / its slowest stage or link"
    )
    latency_measured_over_predicted: float = Field(description="p50 latency / predicted")
    throughput_measured_over_predicted: float


class RunReport(BaseModel):
    bundle: str
    engine: str = Field("torch", description="torch (the converted graphs) or onnxruntime")
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
    serving: Serving | None = Field(None, description="--engine onnxruntime: the stream")
