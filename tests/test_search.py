"""`find_split`: the chain programme answers chains, the MILP the rest, and a time limit
returns the best plan known with an honest gap."""

from __future__ import annotations

import random

from cost.timings import recording
from planner.config import PlanConfig
from planner.partition.chain_dp import layer_orders
from planner.partition.objective import evaluate
from planner.partition.search import find_split
from tests.random_problems import exhaustive_best, make_problem

MEMORY = {"A100-80GB": 80, "V100-16GB": 16, "T4": 16}


def _dag(n: int, seed: int, config: PlanConfig, chain: bool = False):
    rng = random.Random(seed)
    edges = {(i, i + 1) for i in range(n - 1)} if chain else set()
    if not chain:
        for v in range(1, n):
            edges.update((u, v) for u in rng.sample(range(max(0, v - 4), v), k=min(2, v)))
    return make_problem(
        work=[rng.uniform(1, 30) for _ in range(n)],
        edges=sorted(edges),
        edge_bytes=[10**7, 5 * 10**7, 10**6],
        node_kinds=[["A100-80GB"] * 4, ["V100-16GB"] * 2, ["T4"] * 2],
        memory_gb=MEMORY,
        state_bytes=[rng.randint(0, 3 * 10**9) for _ in range(n)],
        act_bytes=[rng.randint(0, 10**8) for _ in range(n)],
        config=config,
    )


def test_a_chain_is_answered_by_the_programme_proven_optimal():
    problem = _dag(40, seed=1, config=PlanConfig(memory_headroom=0.0), chain=True)
    with recording() as phases:
        split = find_split(problem)
    assert split.backend == "dp" and split.status == "optimal" and split.gap <= 1e-6
    assert "chain dp" in phases and "milp solve" not in phases
    assert split.evaluation.objective <= min(
        c.evaluation.objective for c in split.baselines if c.evaluation.fits
    )
    assert split.bound <= split.evaluation.objective


def test_the_programme_is_exact_through_find_split():
    problem = make_problem(
        work=[5.0, 1.0, 8.0, 2.0, 6.0, 3.0, 4.0],
        edges=[(i, i + 1) for i in range(6)],
        edge_bytes=[3 * 10**8, 10**5, 2 * 10**8],
        node_kinds=[["A100-80GB", "A100-80GB"], ["T4", "T4"]],
        memory_gb=MEMORY,
        state_bytes=[6 * 10**9] * 7,
        act_bytes=[10**8] * 7,
        config=PlanConfig(microbatches=4, memory_headroom=0.0),
    )
    split = find_split(problem)
    assert split.backend == "dp"
    assert evaluate(problem, split.assignment).objective == exhaustive_best(problem)


def test_time_limit_returns_the_incumbent_with_its_gap():
    """A DAG with too many layer orders for the programme goes to the MILP; cut short, it
    returns the best plan it has (never worse than the baselines) and a gap > 0."""
    problem = _dag(40, seed=3, config=PlanConfig(time_limit_s=0.5, memory_headroom=0.0))
    assert layer_orders(problem) is None
    split = find_split(problem)
    assert split.backend in ("highs", "cbc")
    assert split.status == "time_limit"
    assert split.gap is not None and split.gap > 0
    best_baseline = min(c.evaluation.objective for c in split.baselines if c.evaluation.fits)
    assert split.evaluation.objective <= best_baseline * (1 + 1e-9)
    assert split.bound <= split.evaluation.objective
    assert split.gap == (split.evaluation.objective - split.bound) / split.evaluation.objective
