"""1F1B (PipeDream-Flush): one forward, one backward.

Narayanan et al., "Memory-Efficient Pipeline-Parallel DNN Training", ICML 2021
(PipeDream-2BW / PipeDream-Flush). Stage i runs min(p - i - 1, m) warm-up forwards,
then alternates one forward and one backward, then drains the remaining backwards. At
most min(p - i, m) micro-batches are in flight on stage i (their forward done, their
backward not), against m for GPipe, at the same bubble (p - 1) / (m + p - 1).
"""

from __future__ import annotations

from planner.schedule.actions import ComputeOp, check_sizes


def compute_order(stages: int, microbatches: int) -> dict[int, list[ComputeOp]]:
    """Per-device compute actions `(op, microbatch, stage)`; device i holds stage i.

    PipeDream-Flush / 1F1B (Narayanan et al., ICML 2021): warm-up of min(p - i - 1, m)
    forwards, steady state F(k + warm-up), B(k), then the remaining backwards.
    """
    check_sizes(stages, microbatches)
    p, m = stages, microbatches
    orders: dict[int, list[ComputeOp]] = {}
    for i in range(p):
        warmup = min(p - i - 1, m)
        order: list[ComputeOp] = [("F", mb, i) for mb in range(warmup)]
        for k in range(m - warmup):
            order.append(("F", warmup + k, i))
            order.append(("B", k, i))
        order.extend(("B", mb, i) for mb in range(m - warmup, m))
        orders[i] = order
    return orders
