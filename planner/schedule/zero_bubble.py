"""ZB-H1: 1F1B with the backward split into input gradient (B) and weight gradient (W).

Qi et al., "Zero Bubble Pipeline Parallelism", ICLR 2024, section 3.1 and Figure 3 (top),
"ZB-H1". B computes the gradient of a stage's input, which the previous stage is waiting
for; W computes the weight gradient, which nobody downstream needs, so it can be deferred
into what would otherwise be bubbles. ZB-H1 keeps 1F1B's warm-up (min(p - i - 1, m)
forwards on stage i) and steady F/B alternation, and adjusts where the W's start: stage i
postpones its first i W's, running them one after each later B, and the last i at the end.
Every stage therefore holds up to min(p, m) micro-batches in flight (forward done, W not
done; activations are only freed after W), which is what 1F1B's first stage holds, so the
peak over stages is the same as 1F1B's. With T_F = T_B = T_W the bubble drops from
3(p - 1) time units (1F1B, whose backward costs T_B + T_W) to p - 1: one third.

This is the order `torch.distributed.pipelining.ScheduleInterleavedZeroBubble` generates
for one stage per rank (its "ZB1P"), written out for general p and m (m < p included).
"""

from __future__ import annotations

from collections import deque

from planner.schedule.actions import ComputeOp, check_sizes


def compute_order(stages: int, microbatches: int) -> dict[int, list[ComputeOp]]:
    """Per-device compute actions `(op, microbatch, stage)`; device i holds stage i.

    ZB-H1 (Qi et al., "Zero Bubble Pipeline Parallelism", ICLR 2024): warm-up of
    min(p - i - 1, m) forwards; then F(k + warm-up), B(k) for each k, the B followed by
    the oldest pending W once k >= i; the remaining B's, likewise each followed by a W once
    k >= i; then the W's still pending.
    """
    check_sizes(stages, microbatches)
    return {i: _stage_order(stages, microbatches, i) for i in range(stages)}


def _stage_order(p: int, m: int, i: int) -> list[ComputeOp]:
    warmup = min(p - i - 1, m)
    order: list[ComputeOp] = [("F", mb, i) for mb in range(warmup)]
    pending: deque[int] = deque()
    for k in range(m):
        if k < m - warmup:
            order.append(("F", warmup + k, i))
        order.append(("B", k, i))
        pending.append(k)
        if k >= i:
            order.append(("W", pending.popleft(), i))
    order.extend(("W", mb, i) for mb in pending)
    return order
