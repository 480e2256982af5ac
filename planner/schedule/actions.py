"""What a device does, in order: the data model every schedule produces.

A `Schedule` gives each device an ordered list of `Action`s:

* `F` forward of one micro-batch on one (virtual) stage;
* `B` backward: the input gradient, and also the weight gradient when the schedule does
  not split them;
* `W` weight gradient alone (zero-bubble schedules split backward into B and W);
* `SEND` / `RECV` of named tensors to or from the device holding a peer stage:
  `direction="fwd"` carries activations from stage s to s + 1, `direction="bwd"` carries
  the gradients of those activations from s + 1 back to s.

A message is identified by `(direction, microbatch, src_stage, dst_stage)`; a SEND and
its RECV carry the same key. Stages are virtual stages: with interleaving, device d holds
stages d, d + p, d + 2p, ... (Megatron-LM, Narayanan et al., SC 2021).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Op = Literal["F", "B", "W", "SEND", "RECV"]
#: What a schedule module orders per device: (op, microbatch, stage), op F, B or W.
ComputeOp = tuple[Literal["F", "B", "W"], int, int]
Kind = Literal["gpipe", "1f1b", "interleaved", "zb"]


class Action(BaseModel):
    model_config = ConfigDict(frozen=True)

    op: Op
    microbatch: int
    stage: int = Field(description="the (virtual) stage this action belongs to")
    peer_stage: int | None = Field(None, description="SEND/RECV: the stage at the other end")
    direction: Literal["fwd", "bwd"] | None = Field(
        None, description="SEND/RECV: activations or gradients"
    )
    tensors: tuple[str, ...] = Field((), description="SEND/RECV: tensor names carried")

    @property
    def is_compute(self) -> bool:
        return self.op in ("F", "B", "W")

    def message_key(self) -> tuple[str, int, int, int]:
        """(direction, microbatch, src_stage, dst_stage) of a SEND or RECV."""
        if self.op == "SEND":
            return (self.direction, self.microbatch, self.stage, self.peer_stage)
        if self.op == "RECV":
            return (self.direction, self.microbatch, self.peer_stage, self.stage)
        raise ValueError(f"{self.op} is not a message")

    def label(self) -> str:
        if self.is_compute:
            return f"{self.op}{self.microbatch}@{self.stage}"
        arrow = "->" if self.op == "SEND" else "<-"
        return (
            f"{self.op} {self.direction} mb{self.microbatch} {self.stage}{arrow}{self.peer_stage}"
        )


class Schedule(BaseModel):
    """Per-device programs for one iteration of `microbatches` micro-batches."""

    kind: Kind
    microbatches: int
    virtual_stages: int = Field(1, description="model chunks per device (interleaved), else 1")
    stages: int = Field(description="pipeline stages, virtual stages counted")
    stage_device: list[str] = Field(description="device id of each (virtual) stage")
    split_backward: bool = Field(False, description="B and W are separate actions (zero-bubble)")
    actions: dict[str, list[Action]] = Field(description="device id -> its actions, in order")

    def devices(self) -> list[str]:
        seen: list[str] = []
        for d in self.stage_device:
            if d not in seen:
                seen.append(d)
        return seen


def check_sizes(stages: int, microbatches: int) -> None:
    """Raise ValueError unless a pipeline has at least one stage and one micro-batch."""
    if stages < 1:
        raise ValueError(f"a pipeline needs at least 1 stage, got {stages}")
    if microbatches < 1:
        raise ValueError(f"a pipeline needs at least 1 micro-batch, got {microbatches}")
