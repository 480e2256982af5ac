"""GPipe: every forward, then every backward.

Huang et al., "GPipe: Efficient Training of Giant Neural Networks using Pipeline
Parallelism", NeurIPS 2019. Each stage runs the forwards of micro-batches 0..m-1, then
their backwards in the same order; a stage holds the activations of all m micro-batches.
"""

from __future__ import annotations

from planner.schedule.actions import ComputeOp, check_sizes


def compute_order(stages: int, microbatches: int) -> dict[int, list[ComputeOp]]:
    """Per-device compute actions `(op, microbatch, stage)`; device i holds stage i.

    GPipe (Huang et al., NeurIPS 2019): F of micro-batches 0..m-1, then B of 0..m-1.
    """
    check_sizes(stages, microbatches)
    return {
        i: [("F", mb, i) for mb in range(microbatches)]
        + [("B", mb, i) for mb in range(microbatches)]
        for i in range(stages)
    }
