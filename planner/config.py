"""Planning settings, as data (pydantic): what the user asks the planner for."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Schedule = Literal["1f1b", "gpipe", "interleaved", "zb", "auto"]
Strategy = Literal["ilp", "uniform", "params", "greedy", "dp"]
Objective = Literal["throughput", "latency"]
Dtype = Literal["fp32", "bf16", "fp16"]
Optimizer = Literal["sgd", "momentum", "adam"]


class PlanConfig(BaseModel):
    """Everything that shapes a plan besides the model and the cluster.

    The ONNX graph describes one micro-batch (its batch dimension is the micro-batch
    size); the global batch is micro-batch size x `microbatches`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    microbatches: int = Field(8, description="micro-batches per iteration (m)")
    schedule: Schedule = Field(
        "1f1b", description="pipeline schedule; auto: the fastest that fits memory"
    )
    virtual_stages: int = Field(
        2, description="model chunks per device for the interleaved schedule"
    )
    auto_microbatches: bool = Field(
        False,
        description="choose the micro-batch count: bubble <= 10% (m >= 9(p - 1)), at most 64, fitting memory",
    )
    dtype: Dtype = Field("fp32", description="compute and activation precision")
    optimizer: Optimizer = Field("adam", description="optimizer whose state each stage holds")
    recompute: bool = Field(False, description="full activation recomputation per stage")
    objective: Objective = Field(
        "throughput", description="training throughput, or one-sample inference latency"
    )
    strategy: Strategy = Field("ilp", description="ilp, or a baseline: uniform, params, greedy, dp")
    time_limit_s: float = Field(30.0, description="ILP solver time limit, seconds")
    tail_gap: float = Field(
        0.005,
        ge=0.0,
        description="keep the ILP's split solved without the optimizer-step tail when, tail "
        "included, it is proven within this fraction of the optimum (0: always solve with it)",
    )
    memory_headroom: float = Field(0.1, description="fraction of each device's memory kept free")
    stages: int | None = Field(
        None, description="fix the number of pipeline stages (default: the planner picks)"
    )
    solver: Literal["highs", "cbc"] = Field(
        "highs", description="MILP backend; CBC is also the fallback"
    )

    @field_validator("microbatches")
    @classmethod
    def _positive_microbatches(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"microbatches must be at least 1 (got {v})")
        return v

    @field_validator("virtual_stages")
    @classmethod
    def _virtual(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"virtual stages must be at least 1 (got {v})")
        return v

    @property
    def pricing_schedule(self) -> str:
        """The schedule the partitioner prices memory for (auto and interleaved: 1F1B)."""
        return "1f1b" if self.schedule in ("auto", "interleaved") else self.schedule

    @field_validator("time_limit_s")
    @classmethod
    def _positive_time(cls, v: float) -> float:
        if not v > 0:
            raise ValueError(f"time limit must be > 0 seconds (got {v})")
        return v

    @field_validator("memory_headroom")
    @classmethod
    def _headroom(cls, v: float) -> float:
        if not 0 <= v < 1:
            raise ValueError(f"memory headroom must be in [0, 1) (got {v})")
        return v

    @field_validator("stages")
    @classmethod
    def _stages(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError(f"stages must be at least 1 (got {v})")
        return v

    @property
    def training(self) -> bool:
        """The latency objective plans inference (forward only); throughput plans training."""
        return self.objective == "throughput"
