"""The ILP is exact: on random small problems it matches exhaustive search."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from planner.config import PlanConfig
from planner.ilp import solve_ilp
from planner.objective import check_assignment, evaluate
from tests.random_problems import KINDS, exhaustive_best, make_problem


@st.composite
def problems(draw, chain: bool, solver: str = "highs"):
    n = draw(st.integers(2, 9 if chain else 6))
    if chain:
        edges = [(i, i + 1) for i in range(n - 1)]
    else:
        edges = set()
        for v in range(1, n):
            preds = draw(st.sets(st.integers(0, v - 1), min_size=1, max_size=min(2, v)))
            edges.update((u, v) for u in preds)
        edges = sorted(edges)
    devices = draw(st.integers(1, 4 if chain else 3))
    kinds = draw(st.lists(st.sampled_from(KINDS), min_size=devices, max_size=devices))
    split = draw(st.integers(0, devices - 1))
    node_kinds = [kinds[:split], kinds[split:]] if split else [kinds]
    node_kinds = [k for k in node_kinds if k]
    schedule = draw(st.sampled_from(["1f1b", "gpipe"]))
    objective = draw(st.sampled_from(["throughput", "throughput", "latency"]))
    config = PlanConfig(
        microbatches=draw(st.integers(1, 8)),
        schedule=schedule,
        objective=objective,
        recompute=draw(st.booleans()),
        memory_headroom=0.0,
        time_limit_s=60,
        solver=solver,
    )
    return make_problem(
        work=draw(st.lists(st.floats(0.001, 50), min_size=n, max_size=n)),
        edges=edges,
        edge_bytes=draw(st.lists(st.integers(0, 4 * 10**8), min_size=1, max_size=4)),
        node_kinds=node_kinds,
        memory_gb={"A100-80GB": draw(st.sampled_from([80, 20])), "V100-16GB": 16, "T4": 16},
        state_bytes=draw(st.lists(st.integers(0, 6 * 10**9), min_size=n, max_size=n)),
        act_bytes=draw(st.lists(st.integers(0, 10**9), min_size=n, max_size=n)),
        config=config,
        shared=[(0, n - 1)] if draw(st.booleans()) and n > 2 else [],
    )


def _check(problem):
    expected = exhaustive_best(problem)
    result = solve_ilp(problem)
    if expected is not None:
        assert result.lower_bound <= expected * (1 + 1e-9), (result.lower_bound, expected)
    if expected is None:
        assert result.assignment is None and result.solve.status == "infeasible", result.solve
        return
    assert result.assignment is not None, result.solve
    assert result.solve.status == "optimal", result.solve
    check_assignment(problem, result.assignment)
    ev = evaluate(problem, result.assignment)
    assert ev.fits
    assert ev.objective == pytest.approx(expected, rel=1e-6), (ev.objective, expected)
    assert result.solve.objective == pytest.approx(ev.objective, rel=1e-6)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems(chain=True))
def test_ilp_matches_exhaustive_search_on_chains(problem):
    _check(problem)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems(chain=False))
def test_ilp_matches_exhaustive_search_on_dags(problem):
    _check(problem)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems(chain=False, solver="cbc"))
def test_cbc_fallback_is_exact_too(problem):
    _check(problem)
