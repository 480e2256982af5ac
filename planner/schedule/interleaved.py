"""Interleaved 1F1B: each device holds v model chunks (virtual stages).

Narayanan et al., "Efficient Large-Scale Language Model Training on GPU Clusters Using
Megatron-LM", SC 2021, section 2.2.2. With p devices and v chunks per device the model has
S = p * v virtual stages and virtual stage k lives on device k mod p. The ordering is the
one of Megatron-LM's `forward_backward_pipelining_with_interleaving`:

* micro-batches are taken in groups of N (N = p in the paper): the device runs the
  forward of chunk 0 for the N micro-batches of a group, then chunk 1 for the same N, ...,
  chunk v - 1, then moves to the next group; backwards follow the same table with the
  chunks reversed (chunk v - 1 first);
* device d runs (p - d - 1) * 2 + (v - 1) * N warm-up forwards (capped at m * v), then
  alternates one forward and one backward, then drains the remaining backwards.

The paper and older Megatron-LM require m to be a multiple of p. Current Megatron-LM
generalises the group size (`microbatch_group_size_per_vp_stage`: N in [p, m], the last
group holds the remainder m mod N, which must be 0 or at least p); this module does the
same and picks the smallest valid N, which is p whenever p divides m. For m < p, which
Megatron rejects because it leaves dependency bubbles, it uses a single group of all m
micro-batches (N = m), as `torch.distributed.pipelining.ScheduleInterleaved1F1B` does; the
order is still valid (every dependency can be met, which `build` verifies), just less
efficient.
"""

from __future__ import annotations

from planner.schedule.actions import ComputeOp, check_sizes


def default_group_size(stages: int, microbatches: int) -> int:
    """The smallest valid micro-batch group size N: p if p divides m, else the least N in
    (p, m] whose remainder m mod N is 0 or at least p (N = m always qualifies); m if m < p."""
    p, m = stages, microbatches
    for n in range(min(p, m), m + 1):
        if m % n == 0 or m % n >= p:
            return n
    raise AssertionError("unreachable: N = m always qualifies")


def schedule_table(
    microbatches: int, virtual_stages: int, group_size: int
) -> list[tuple[int, int]]:
    """Megatron-LM's lookup table: the k-th forward of a device is (microbatch, chunk)."""
    m, v, n = microbatches, virtual_stages, group_size
    table: list[tuple[int, int]] = []
    for first in range(0, m, n):
        group = range(first, min(first + n, m))
        table.extend((mb, chunk) for chunk in range(v) for mb in group)
    return table


def compute_order(
    stages: int, microbatches: int, virtual_stages: int = 2, group_size: int | None = None
) -> dict[int, list[ComputeOp]]:
    """Per-device compute actions `(op, microbatch, virtual stage)`.

    Interleaved 1F1B (Narayanan et al., "Efficient Large-Scale Language Model Training on
    GPU Clusters Using Megatron-LM", SC 2021), in the order of Megatron-LM's
    `forward_backward_pipelining_with_interleaving`. `stages` is the number of devices p
    (physical pipeline stages); device d holds virtual stages d, d + p, ..., d + (v - 1)p.
    `group_size` is Megatron's `microbatch_group_size_per_vp_stage` (default: p when p
    divides m, see `default_group_size`). Raises ValueError for an invalid group size.
    """
    check_sizes(stages, microbatches)
    p, m, v = stages, microbatches, virtual_stages
    if v < 1:
        raise ValueError(f"interleaved 1F1B needs at least 1 chunk per device, got {v}")
    n = default_group_size(p, m) if group_size is None else group_size
    if not min(p, m) <= n <= m:
        raise ValueError(
            f"micro-batch group size must lie in [min(p, m), m] = [{min(p, m)}, {m}], got {n}"
        )
    if 0 < m % n < p:
        raise ValueError(
            f"the last micro-batch group would hold {m % n} micro-batches "
            f"(m = {m} mod N = {n}); it must hold 0 or at least p = {p}"
        )
    table = schedule_table(m, v, n)
    total = m * v
    orders: dict[int, list[ComputeOp]] = {}
    for d in range(p):
        forwards: list[ComputeOp] = [("F", mb, chunk * p + d) for mb, chunk in table]
        backwards: list[ComputeOp] = [("B", mb, (v - 1 - chunk) * p + d) for mb, chunk in table]
        warmup = min((p - d - 1) * 2 + (v - 1) * n, total)
        order = forwards[:warmup]
        for k in range(total - warmup):
            order.append(forwards[warmup + k])
            order.append(backwards[k])
        order.extend(backwards[total - warmup :])
        orders[d] = order
    return orders
