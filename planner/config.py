"""Planning settings, as data (pydantic): what the user asks the planner for.

`PlanConfig` is the single source of every planning option: its field names, defaults
and descriptions. The command line generates its options from these fields
(`runners.cli.options`): a field's flag is `--<name with dashes>` unless `CLI_FLAGS`
names it otherwise, and its help is the field's description.
"""

from __future__ import annotations

import warnings
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

Schedule = Literal["1f1b", "gpipe", "interleaved", "zb", "auto"]
Strategy = Literal["ilp", "uniform", "params", "greedy", "pipedream"]
Objective = Literal["throughput", "latency"]
Dtype = Literal["fp32", "bf16", "fp16"]
Optimizer = Literal["sgd", "momentum", "adam"]
Solver = Literal["highs", "cbc"]
Parallel = Literal["auto", "pp"]

#: Module groups heavier than this share of the model's work are split into their
#: children when layers are grouped (`planner.graph.layers`; `--max-layer-share`).
DEFAULT_MAX_LAYER_SHARE = 1 / 16

#: Old strategy names still accepted (with a DeprecationWarning) -> their new names.
DEPRECATED_STRATEGIES = {"dp": "pipedream"}

#: Counts that must be at least 1 (None allowed where the field is optional) -> their name
#: in the error.
AT_LEAST_ONE = {
    "microbatches": "microbatches",
    "virtual_stages": "virtual stages",
    "stages": "stages",
    "data_parallel": "the data-parallel degree",
    "global_batch": "the global batch",
}

#: Command-line flags of the fields whose flag is not `--<field-name>`; an empty tuple:
#: no option of its own (`auto_microbatches` is `--microbatches auto`).
CLI_FLAGS: dict[str, tuple[str, ...]] = {
    "microbatches": ("--microbatches", "-m"),
    "auto_microbatches": (),
    "time_limit_s": ("--time-limit",),
    "memory_headroom": ("--headroom",),
    "chain_dp": ("--chain-dp/--no-chain-dp",),
    "data_parallel": ("--dp",),
    "tensor_parallel": ("--tp",),
}

#: Fields the command line takes as text (a count or `auto`).
TEXT_OPTIONS = ("microbatches", "tensor_parallel")


class PlanConfig(BaseModel):
    """Everything that shapes a plan besides the model and the cluster.

    The ONNX graph describes one micro-batch (its batch dimension is the micro-batch
    size); the global batch is micro-batch size x `microbatches`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    microbatches: int = Field(
        8,
        description="Micro-batches per iteration (m), or auto: the bubble at most 10% "
        "(m >= 9(p - 1)), at most 64, halved until it fits memory.",
    )
    schedule: Schedule = Field(
        "1f1b", description="Pipeline schedule; auto: the fastest that fits memory."
    )
    virtual_stages: int = Field(
        2, description="Model chunks per device for the interleaved schedule."
    )
    auto_microbatches: bool = Field(
        False, description="Choose the micro-batch count (set by --microbatches auto)."
    )
    dtype: Dtype = Field("fp32", description="Compute and activation precision.")
    optimizer: Optimizer = Field("adam", description="Optimizer whose state each stage holds.")
    recompute: bool = Field(False, description="Full activation recomputation per stage.")
    objective: Objective = Field(
        "throughput",
        description="Training throughput, or one-micro-batch inference latency.",
    )
    strategy: Strategy = Field(
        "ilp",
        description="The exact ILP, or a baseline: uniform (torchtitan), params (DeepSpeed), "
        "greedy (torchgpipe), pipedream (PipeDream's dynamic program; 'dp' is its old name).",
    )
    time_limit_s: float = Field(30.0, description="ILP solver time limit, seconds.")
    tail_gap: float = Field(
        0.005,
        ge=0.0,
        description="Keep the ILP's split solved without the optimizer-step tail when, tail "
        "included, it is proven within this fraction of the optimum (0: always solve with it).",
    )
    memory_headroom: float = Field(0.1, description="Fraction of each device's memory kept free.")
    stages: int | None = Field(
        None, description="Fix the number of pipeline stages (default: the planner picks)."
    )
    solver: Solver = Field("highs", description="MILP backend; CBC is also the fallback.")
    chain_dp: bool = Field(
        True,
        description="Split chains (layers with few topological orders) with the exact dynamic "
        "programme first; the MILP only where it leaves a gap (off: always the MILP).",
    )
    parallel: Parallel = Field(
        "auto",
        description="auto: choose data-parallel replicas and the pipeline split together; "
        "pp: one pipeline over the cluster.",
    )
    data_parallel: int | None = Field(
        None,
        description="Fix the data-parallel degree (replicas; must divide the devices). "
        "Default: the planner picks.",
    )
    tensor_parallel: Literal["auto"] | int = Field(
        "auto",
        description="Tensor-parallel degree t of every stage (Megatron-style sharding of "
        "attention and MLP blocks over t devices of one node); auto: search t in 1, 2, 4, 8 "
        "with the split and the replicas (1 with --parallel pp).",
    )
    zero: int = Field(
        0,
        description="1: shard optimizer state across replicas (ZeRO-1; its all-gather "
        "priced); 0: replicate it.",
    )
    global_batch: int | None = Field(
        None,
        description="Fix the global batch (samples per iteration over all replicas; strong "
        "scaling): each layout runs global batch / (replicas x micro-batch size) "
        "micro-batches per replica. Default: --microbatches per replica.",
    )

    @field_validator(*AT_LEAST_ONE)
    @classmethod
    def _at_least_one(cls, v: int | None, info: ValidationInfo) -> int | None:
        if v is not None and v < 1:
            raise ValueError(f"{AT_LEAST_ONE[info.field_name]} must be at least 1 (got {v})")
        return v

    @field_validator("tensor_parallel")
    @classmethod
    def _tensor_degree(cls, v: str | int) -> str | int:
        if isinstance(v, int) and v < 1:
            raise ValueError(f"the tensor-parallel degree must be at least 1 (got {v})")
        return v

    @property
    def tensor_degrees(self) -> tuple[int, ...]:
        """The tensor-parallel degrees to try: --tp N, or auto's (1 alone with --parallel
        pp or for inference latency)."""
        if isinstance(self.tensor_parallel, int):
            return (self.tensor_parallel,)
        if self.parallel == "pp":
            return (1,)
        return (1, 2, 4, 8)

    @field_validator("strategy", mode="before")
    @classmethod
    def _renamed_strategy(cls, v: object) -> object:
        if isinstance(v, str) and v in DEPRECATED_STRATEGIES:
            new = DEPRECATED_STRATEGIES[v]
            warnings.warn(
                f"strategy {v!r} is deprecated: use {new!r} (the same baseline)",
                DeprecationWarning,
                stacklevel=2,
            )
            return new
        return v

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

    @field_validator("zero")
    @classmethod
    def _zero(cls, v: int) -> int:
        if v not in (0, 1):
            raise ValueError(f"zero must be 0 or 1 (got {v})")
        return v

    @property
    def pricing_schedule(self) -> str:
        """The schedule the partitioner prices memory for (auto and interleaved: 1F1B)."""
        return "1f1b" if self.schedule in ("auto", "interleaved") else self.schedule

    @property
    def training(self) -> bool:
        """The latency objective plans inference (forward only); throughput plans training."""
        return self.objective == "throughput"
