"""manifest.json: what a runner needs besides the stage models (pydantic, versioned).

`pipeplan schema manifest` prints its JSON Schema. Shapes are per micro-batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from cost.cluster import Cluster
from cost.errors import PipeplanError
from planner.plan_file import Routing
from planner.schedule.actions import Schedule

MANIFEST_VERSION = 3
#: Versions this pipeplan reads (1: one pipeline, before data parallelism; 2: before
#: tensor parallelism).
READABLE_VERSIONS = (1, 2, 3)


class TensorSpec(BaseModel):
    name: str
    shape: list[int] | None
    dtype: str
    source: str = Field("", description="inputs: 'graph' or 'stage <k>'")
    destinations: list[str] = Field(
        default_factory=list, description="outputs: 'graph' and/or 'stage <k>'"
    )


class Relay(BaseModel):
    """A tensor this stage receives and forwards untouched (a skip connection crossing it)."""

    tensor: str
    from_stage: int
    to_stage: int
    shape: list[int] | None
    dtype: str


class TensorRankFile(BaseModel):
    """A stage's model for one tensor-parallel rank (its shard of the stage's weights)."""

    tensor_rank: int
    device: str
    file: str
    data_file: str | None = None
    sha256: str


class ParameterShard(BaseModel):
    """How a parameter is split over the tensor-parallel group: along `axis`, each of
    `parts` (consecutive sizes summing to that axis' length: the parts of a fused QKV
    projection, or the whole axis) cut into t equal slices; rank k holds the k-th slice of
    every part, concatenated (`exporters.shard.shard_array`)."""

    axis: int
    parts: list[int]


class StageFile(BaseModel):
    index: int
    file: str = Field(description="ONNX file of this stage, relative to the bundle")
    data_file: str | None = Field(
        None, description="its external weight file, when weights are external"
    )
    sha256: str = Field(description="hash of the stage file, checked by the runner")
    device: str
    device_kind: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    relays: list[Relay] = Field(default_factory=list)
    parameters: list[str] = Field(description="trainable weights held by this stage")
    param_count: int
    nodes: int
    ranks: list[int] = Field(
        default_factory=list,
        description="the rank running this stage in each data-parallel replica (replica "
        "order); with tensor parallelism, the rank of its tensor-parallel rank 0 (rank k "
        "is that + k)",
    )
    tensor_files: list[TensorRankFile] = Field(
        default_factory=list,
        description="with tensor parallelism: one model per tensor-parallel rank (`file` is "
        "rank 0's); the models' `pipeplan` operators (domain version 1) join the ranks: "
        "AllReduce(x) sums x over the group in forward (identity backward), CopyToGroup(x) "
        "is identity in forward and sums the gradient over the group in backward",
    )
    sharded_parameters: dict[str, ParameterShard] = Field(
        default_factory=dict,
        description="parameters split over the tensor-parallel group (the others are whole "
        "on every rank)",
    )


class ReplicaRanks(BaseModel):
    """One data-parallel replica: the device and the rank of each stage."""

    replica: int
    devices: list[str] = Field(description="device id of each stage, in stage order")
    ranks: list[int] = Field(description="rank of each stage, in stage order")


class RankEntry(BaseModel):
    """What one rank of the job runs: its replica, its tensor-parallel rank, its device
    and its stages (several with an interleaved schedule)."""

    rank: int
    replica: int
    tensor_rank: int = 0
    device: str
    stages: list[int]


class SharedWeight(BaseModel):
    name: str
    stages: list[int] = Field(
        description="stages holding a copy; their gradients must be all-reduced"
    )


class Manifest(BaseModel):
    manifest_version: int = MANIFEST_VERSION
    pipeplan_version: str
    model_path: str = Field(
        description="the source model, absolute (the reference of `run --check`); older bundles: "
        "relative to where export ran"
    )
    graph_hash: str
    microbatch_size: int
    microbatches: int
    weights: Literal["present", "absent"] = Field(
        description="absent: the source model had no weight data; stage files reference weight files that do not exist"
    )
    cluster: Cluster
    graph_inputs: list[TensorSpec]
    graph_outputs: list[TensorSpec]
    stages: list[StageFile]
    routing: Routing
    shared_weights: list[SharedWeight]
    schedule: Schedule | None = Field(
        None, description="the plan's schedule: kind, microbatches, actions per device"
    )
    plan_config: dict[str, Any]
    data_parallel: int = Field(
        1, description="replicas of the pipeline; each runs `microbatches` micro-batches per step"
    )
    zero: int = Field(0, description="1: optimizer state sharded across replicas (ZeRO-1)")
    tensor_parallel: int = Field(
        1, description="ranks per stage: each stage's weights split over a group of t"
    )
    replicas: list[ReplicaRanks] = Field(
        default_factory=list,
        description="per replica, each stage's device and rank (rank = replica x devices per "
        "pipeline + the device's position); the schedule's actions are keyed by replica 0's "
        "devices and every replica runs them",
    )

    rank_map: list[RankEntry] = Field(
        default_factory=list,
        description="every rank of the job (world size entries, rank order): replica, "
        "tensor rank, device, stages",
    )

    @property
    def pipeline_devices(self) -> list[str]:
        """Replica 0's devices, in order of their first stage (rank order within a replica)."""
        return list(dict.fromkeys(st.device for st in self.stages))

    @property
    def world_size(self) -> int:
        return self.data_parallel * len(self.pipeline_devices) * self.tensor_parallel

    def stage_file(self, stage: StageFile, tensor_rank: int) -> str:
        """The model file a stage's tensor-parallel rank runs."""
        if not stage.tensor_files:
            return stage.file
        return stage.tensor_files[tensor_rank].file

    def source_model(self, root: Path) -> Path:
        """The source model (`run --check`'s reference): absolute in new bundles; older
        ones are tried relative to the bundle's parent and the working folder. Raises
        `PipeplanError` naming it when it is not there."""
        p = Path(self.model_path)
        candidates = [p] if p.is_absolute() else [root.parent / p, Path.cwd() / p, root / p]
        for candidate in candidates:
            if candidate.is_file():
                return candidate
        raise PipeplanError(
            f"--check needs the source model as its reference, and {self.model_path} is "
            "not there (moved? export the bundle again, or run without --check)"
        )
