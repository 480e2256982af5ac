"""Bytes a pipeline stage holds: weights, gradients, optimizer state, activations.

Per-parameter bytes for training (ZeRO paper, Rajbhandari et al., SC 2020, section 3.1;
see shared/context.md "Memory per device for training"):

=========  =====  =====  ===============  =====
dtype      param  grad   optimizer        total
=========  =====  =====  ===============  =====
fp32 SGD   4      4      0                8
fp32 mom.  4      4      4 (momentum)     12
fp32 Adam  4      4      8 (m, v)         16
mixed SGD  2      2      4 (fp32 master)  8
mixed mom. 2      2      8 (master, mom.) 12
mixed Adam 2      2      12 (master,m,v)  16
=========  =====  =====  ===============  =====

Activations: each stage keeps, per micro-batch in flight, the tensors its operators saved
for backward. How many micro-batches are in flight is the schedule's business:
GPipe keeps all `m`; 1F1B (PipeDream-Flush, Narayanan et al., SPAA 2021) keeps
`min(p - i, m)` on stage `i` of `p`; ZB-H1 (Qi et al., ICLR 2024) keeps `min(p, m)` on every
stage (1F1B's peak: activations live until the deferred weight gradient). With full recomputation (Chen et al., "Training Deep
Nets with Sublinear Memory Cost", 2016) a stage keeps only its input per micro-batch in
flight, plus one micro-batch's full activations while it recomputes.
"""

from __future__ import annotations

from dataclasses import dataclass

from cost.roofline import dtype_bytes_scale

OPTIMIZER_STATE_SLOTS = {"sgd": 0, "momentum": 1, "adam": 2}


def optimizer_state_bytes_per_param(dtype: str, optimizer: str) -> float:
    """Optimizer state per parameter: fp32 master weights (mixed precision) and the
    optimizer's slots; what ZeRO stage 1 shards across replicas."""
    if optimizer not in OPTIMIZER_STATE_SLOTS:
        raise ValueError(f"unknown optimizer {optimizer!r}")
    master = 0 if dtype in ("fp32", "tf32") else 4
    return float(master + 4 * OPTIMIZER_STATE_SLOTS[optimizer])


def bytes_per_param(
    dtype: str, optimizer: str, training: bool = True, zero_shards: int = 1
) -> float:
    """Weights + gradients + optimizer state per parameter (table in the module docstring).

    `zero_shards`: replicas the optimizer state is sharded over (ZeRO stage 1,
    Rajbhandari et al. SC 2020: Adam in mixed precision keeps 2 + 2 + 12 / n bytes)."""
    if optimizer not in OPTIMIZER_STATE_SLOTS:
        raise ValueError(f"unknown optimizer {optimizer!r}")
    if zero_shards < 1:
        raise ValueError(f"zero_shards must be >= 1 (got {zero_shards})")
    weight = 4 if dtype in ("fp32", "tf32") else 2
    if not training:
        return float(weight)
    return float(weight + weight + optimizer_state_bytes_per_param(dtype, optimizer) / zero_shards)


def in_flight_microbatches(schedule: str, stage: int, stages: int, microbatches: int) -> int:
    """Micro-batches whose activations a stage holds at its peak."""
    if schedule == "gpipe":
        return microbatches
    if schedule in ("1f1b", "interleaved"):
        return min(stages - stage, microbatches)
    if schedule == "zb":
        # ZB-H1 keeps every stage at the first stage's 1F1B level: activations live until W.
        return min(stages, microbatches)
    if schedule == "infer":
        return 1
    raise ValueError(f"unknown schedule {schedule!r}")


def in_flight_from_end(schedule: str, from_end: int, microbatches: int, max_stages: int) -> int:
    """In-flight micro-batches of the stage `from_end` places before the last (0 = last).

    Counted from the end, 1F1B's min(p - s, m) is min(from_end + 1, m) whatever p is,
    which lets a planner price stages before it knows p. ZB-H1's min(p, m) does depend
    on p: `max_stages` bounds it from above (safe for memory).
    """
    if schedule == "zb":
        return min(max_stages, microbatches)
    return in_flight_microbatches(schedule, 0, from_end + 1, microbatches)


@dataclass(frozen=True)
class StageMemory:
    """Peak memory of one stage, by kind, in bytes."""

    params_and_state: int
    buffers: int
    activations: int
    in_flight: int

    @property
    def total(self) -> int:
        return self.params_and_state + self.buffers + self.activations


def stage_memory(
    *,
    param_count: int,
    buffer_bytes: int,
    activation_bytes: int,
    input_bytes: int,
    max_layer_activation_bytes: int,
    stage: int,
    stages: int,
    microbatches: int,
    schedule: str = "1f1b",
    dtype: str = "fp32",
    optimizer: str = "adam",
    recompute: bool = False,
    training: bool = True,
) -> StageMemory:
    """Peak bytes of a stage (activation figures per micro-batch, counted in fp32).

    `activation_bytes`: what the stage's operators save for backward per micro-batch;
    `input_bytes`: the stage's inputs per micro-batch (all recomputation keeps);
    `max_layer_activation_bytes`: the largest single layer's saved bytes (the working set
    while one layer is recomputed).
    """
    scale = dtype_bytes_scale(dtype)
    params = int(param_count * bytes_per_param(dtype, optimizer, training))
    buffers = int(buffer_bytes * scale)
    if not training:
        return StageMemory(params, buffers, int(max_layer_activation_bytes * scale), 1)
    flight = in_flight_microbatches(schedule, stage, stages, microbatches)
    acts = flight * input_bytes + activation_bytes if recompute else flight * activation_bytes
    return StageMemory(params, buffers, int(acts * scale), flight)
