"""When a model cannot fit: by how much, and how many devices would.

`min_stages_to_fit` plans memory only: it packs layers (in topological order) into
contiguous stages from the last stage backwards, each as full as its memory allows. The
last stages hold the fewest micro-batches in flight under 1F1B (min(p - s, m)), so
filling them first and leaving the tighter early stages the least work is optimal for
contiguous splits (an exchange argument, as in Baechi's memory-constrained placement,
Jeon et al., SoCC 2020).
"""

from __future__ import annotations

from cost.errors import DoesNotFitError
from cost.memory import in_flight_from_end
from planner.fmt import nbytes
from planner.partition.objective import Evaluation
from planner.partition.problem import Problem

MAX_DEVICES_SEARCHED = 100_000


def _cut_bytes(problem: Problem) -> list[int]:
    """Bytes crossing the cut before layer i (topological order)."""
    n = len(problem.layers)
    cut = [0] * (n + 1)
    for flow in problem.flows:
        for i in range(flow.producer + 1, max(flow.consumers) + 1):
            cut[i] += flow.nbytes
    return cut


def min_stages_to_fit(problem: Problem, group: int) -> int | None:
    """Fewest stages on devices like `group`'s that hold the model, or None if none can."""
    cfg = problem.config
    training = problem.training
    schedule = cfg.pricing_schedule if training else "infer"
    capacity = problem.capacity(group)
    layers = problem.layers
    cut = _cut_bytes(problem)
    shared_of = {}
    for sp in problem.shared:
        for layer in sp.layers:
            shared_of.setdefault(layer, []).append(sp)

    def stage_bytes(i: int, j: int, rev: int) -> float:
        flight = in_flight_from_end(schedule, rev, cfg.microbatches, len(layers)) if training else 1
        state = sum(layer.state_bytes + layer.buffer_bytes for layer in layers[i:j])
        shared = {
            sp.name: sp.state_bytes for layer in range(i, j) for sp in shared_of.get(layer, [])
        }
        acts = sum(layer.activation_bytes for layer in layers[i:j])
        act_total = flight * cut[i] + acts if training and cfg.recompute else flight * acts
        return state + sum(shared.values()) + act_total

    end, rev = len(layers), 0
    while end > 0:
        start = end - 1
        if stage_bytes(start, end, rev) > capacity:
            return None
        while start > 0 and stage_bytes(start - 1, end, rev) <= capacity:
            start -= 1
        end, rev = start, rev + 1
        if rev > MAX_DEVICES_SEARCHED:
            return None
    return rev


def explain_does_not_fit(problem: Problem, ev: Evaluation, *, strategy: str) -> DoesNotFitError:
    """One line: the worst stage's shortfall and the fewest devices of the largest kind."""
    worst = max(ev.stages, key=lambda s: s.memory_bytes - s.capacity_bytes)
    spec = problem.cluster.device(worst.device)
    short = worst.memory_bytes - worst.capacity_bytes
    head = (
        f"model does not fit ({strategy}): stage {worst.index} on {worst.device} ({spec.name}) needs "
        f"{nbytes(worst.memory_bytes)} of {nbytes(worst.capacity_bytes)} usable, short by {nbytes(short)} "
        f"({short} bytes)"
    )
    biggest = max(problem.groups, key=lambda g: g.spec.memory_bytes)
    have = sum(len(g.devices) for g in problem.groups if g.spec == biggest.spec)
    need = min_stages_to_fit(problem, biggest.index)
    if need is None:
        tail = (
            f"; no number of {biggest.spec.name} devices fits: some layer alone exceeds one device"
        )
    elif need <= problem.num_devices and strategy != "ilp":
        tail = f"; {need} {biggest.spec.name} devices would fit this model: try --strategy ilp"
    else:
        tail = (
            f"; the fewest {biggest.spec.name} devices that fit: {need} (this cluster has {have})"
        )
    return DoesNotFitError(head + tail)
