"""Contiguous splits of a chain: the min-max partition and stage indices from cuts.

A pipeline over a topological order of layers is a set of cut positions. Cutting a
sequence of weights into k contiguous parts so that the heaviest part is as light as
possible is the linear partition problem (Skiena, "The Algorithm Design Manual", 2nd ed.,
section 8.5, solves it by dynamic programming); `min_max_partition` solves it exactly by
binary search over the candidate bottlenecks (every contiguous sum) with a greedy
feasibility test, O(n^2 log n), ample for layer counts.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence


def stages_from_cuts(cuts: Sequence[int], n: int) -> tuple[int, ...]:
    """Stage index per layer from the first layer index of each stage after the first."""
    stage_of = []
    s = 0
    bounds = list(cuts) + [n]
    for i in range(n):
        while i >= bounds[s]:
            s += 1
        stage_of.append(s)
    return tuple(stage_of)


def min_max_partition(weights: Sequence[float], k: int) -> list[int]:
    """Cut `weights` into exactly `k` non-empty contiguous parts minimising the largest sum.

    Binary search over the candidate bottlenecks (all contiguous sums) with a greedy
    feasibility test; returns the cut positions (first index
    of parts 1..k-1).
    """
    n = len(weights)
    k = max(1, min(k, n))
    prefix = list(itertools.accumulate(weights, initial=0.0))
    top = max(weights)
    # Part sums are differences of rounded prefix sums: the part holding the largest weight
    # alone can come out an ulp below that weight, so the weight itself is a candidate.
    candidates = sorted(
        {prefix[j] - prefix[i] for i in range(n) for j in range(i + 1, n + 1)} | {top}
    )

    def cuts_for(limit: float) -> list[int] | None:
        cuts, start = [], 0
        for i in range(n):
            if prefix[i + 1] - prefix[start] > limit + 1e-12:
                if i == start:
                    return None
                cuts.append(i)
                start = i
        return cuts if len(cuts) + 1 <= k else None

    lo = bisect.bisect_left(candidates, top)
    hi = len(candidates) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if cuts_for(candidates[mid]) is not None:
            hi = mid
        else:
            lo = mid + 1
    cuts = cuts_for(candidates[lo]) or []
    # Split further (never raising the maximum) until there are exactly k parts.
    while len(cuts) + 1 < k:
        bounds = [0, *cuts, n]
        widest = max(range(len(bounds) - 1), key=lambda i: bounds[i + 1] - bounds[i])
        a, b = bounds[widest], bounds[widest + 1]
        cuts = sorted([*cuts, (a + b) // 2])
    return cuts
