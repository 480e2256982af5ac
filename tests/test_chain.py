"""planner.partition.chain: the min-max partition is exact, float rounding included."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from planner.partition.chain import min_max_partition, stages_from_cuts


def _largest_part(weights, cuts) -> float:
    edges = [0, *cuts, len(weights)]
    return max(sum(weights[a:b]) for a, b in zip(edges, edges[1:], strict=False))


def _best(weights, k) -> float:
    n = len(weights)
    return min(_largest_part(weights, cuts) for cuts in itertools.combinations(range(1, n), k - 1))


def test_a_part_holding_the_largest_weight_alone_is_found():
    # A chain from a failing ILP case: prefix[2] - prefix[1] rounds an ulp below w[1], and
    # the search used to start above it, returning [0], [1, 2], [3] (max w1 + w2): a lower
    # bound above the true optimum, which the ILP then took as a cut.
    f = [0.00015652014652014652, 0.0012554212454212454, 8.326007326007326e-05] + [
        8.326007326007326e-05
    ]
    weights = [x + 2 * x for x in f]
    cuts = min_max_partition(weights, 3)
    assert _largest_part(weights, cuts) == max(weights)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.floats(1e-6, 1e3, allow_nan=False), min_size=1, max_size=8),
    st.integers(1, 8),
)
def test_min_max_partition_matches_exhaustive_search(weights, k):
    k = min(k, len(weights))
    cuts = min_max_partition(weights, k)
    assert len(cuts) == k - 1 and cuts == sorted(set(cuts))
    assert all(0 < c < len(weights) for c in cuts)
    best = _best(weights, k)
    assert _largest_part(weights, cuts) <= best * (1 + 1e-9)


def test_stages_from_cuts():
    assert stages_from_cuts([2, 3], 5) == (0, 0, 1, 2, 2)
    assert stages_from_cuts([], 3) == (0, 0, 0)
