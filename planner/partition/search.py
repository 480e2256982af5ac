"""Find the split: every baseline, then the exact methods warm-started from the best.

All strategies are priced by one cost model (`planner.partition.objective.evaluate`), so
their figures compare. With `strategy: ilp`:

1. When the layers have few topological orders (chains, chains with side inputs), the
   dynamic programme of `planner.partition.chain_dp` runs first. It usually proves its
   plan optimal (backend `dp`), in well under the time a MILP takes.
2. Otherwise, or when a gap remains, the MILP (`planner.partition.ilp`) starts from the
   best plan known (the programme's or a baseline's) with the programme's bound as a
   cut; when the solver fails outright, the best plan known is returned
   (`baseline_fallback`).

A split that cannot fit raises `DoesNotFitError` with the shortfall and the fewest
devices that would fit (`planner.partition.memory_fit`).
"""

from __future__ import annotations

from dataclasses import dataclass

from cost.errors import DoesNotFitError, PipeplanError
from cost.timings import phase
from planner.partition.baselines import BASELINES
from planner.partition.chain_dp import ChainResult, layer_orders, solve_chain
from planner.partition.ilp.solve import solve_ilp
from planner.partition.memory_fit import explain_does_not_fit
from planner.partition.objective import Assignment, Evaluation, check_assignment, evaluate
from planner.partition.problem import Problem


@dataclass(frozen=True)
class Candidate:
    """One strategy's split and its price."""

    strategy: str
    assignment: Assignment
    evaluation: Evaluation


@dataclass(frozen=True)
class Split:
    """The chosen split, how it was found, and every baseline beside it."""

    assignment: Assignment
    evaluation: Evaluation
    strategy: str
    backend: str = "none"
    #: optimal, near_optimal, time_limit, heuristic (a baseline asked for), baseline_fallback
    status: str = "heuristic"
    bound: float | None = None
    gap: float | None = None
    seconds: float = 0.0
    build_seconds: float = 0.0
    variables: int = 0
    constraints: int = 0
    warm_start: str | None = None
    baselines: tuple[Candidate, ...] = ()


def baselines(problem: Problem) -> list[Candidate]:
    """Every baseline's split, checked and priced."""
    out = []
    for name, baseline in BASELINES.items():
        a = baseline(problem)
        check_assignment(problem, a)
        out.append(Candidate(name, a, evaluate(problem, a)))
    return out


def find_split(problem: Problem) -> Split:
    """The split of `problem.config.strategy` (module docstring)."""
    with phase("baselines"):
        rows = baselines(problem)
    fitting = [c for c in rows if c.evaluation.fits]
    best = min(fitting, key=lambda c: c.evaluation.objective, default=None)
    strategy = problem.config.strategy
    if strategy != "ilp":
        chosen = next(c for c in rows if c.strategy == strategy)
        if not chosen.evaluation.fits:
            raise explain_does_not_fit(problem, chosen.evaluation, strategy=strategy)
        return Split(chosen.assignment, chosen.evaluation, strategy, baselines=tuple(rows))
    chain = _chain_programme(problem, best)
    if chain is not None and chain.status == "infeasible":
        raise _does_not_fit(problem, rows)
    if chain is not None and chain.status == "optimal":
        return _split_of_programme(problem, chain, best, rows)
    warm = best.assignment if best else None
    if chain is not None and chain.assignment is not None:
        warm = chain.assignment
    result = solve_ilp(
        problem,
        warm=warm,
        alternatives=[c.assignment for c in fitting],
        floor=chain.bound if chain is not None else 0.0,
    )
    if result.assignment is None:
        if result.solve.status == "infeasible":
            raise _does_not_fit(problem, rows)
        if best is None:
            raise PipeplanError(
                f"the ILP solver failed ({result.solve.backend}: {result.solve.status}) "
                "and no baseline fits"
            )
        a, ev, status = best.assignment, best.evaluation, "baseline_fallback"
    else:
        a = result.assignment
        check_assignment(problem, a)
        ev = evaluate(problem, a)
        status = result.solve.status
    bound = max(b for b in (result.solve.bound, result.lower_bound) if b is not None)
    gap = max(0.0, (ev.objective - bound) / ev.objective) if ev.objective > 0 else 0.0
    return Split(
        a,
        ev,
        "ilp",
        backend=result.solve.backend,
        status=status,
        bound=bound,
        gap=gap,
        seconds=result.solve.seconds,
        build_seconds=result.build_seconds,
        variables=result.variables,
        constraints=result.constraints,
        warm_start=best.strategy if best else None,
        baselines=tuple(rows),
    )


def _chain_programme(problem: Problem, best: Candidate | None) -> ChainResult | None:
    """The dynamic programme's answer, when the layers allow it (None otherwise)."""
    orders = layer_orders(problem) if problem.config.chain_dp else None
    if orders is None:
        return None
    with phase("chain dp"):
        return solve_chain(problem, best.assignment if best else None, orders)


def _split_of_programme(
    problem: Problem, chain: ChainResult, best: Candidate | None, rows: list[Candidate]
) -> Split:
    a = chain.assignment
    check_assignment(problem, a)
    ev = evaluate(problem, a)
    return Split(
        a,
        ev,
        "ilp",
        backend="dp",
        status="optimal",
        bound=min(chain.bound, ev.objective),
        gap=chain.gap,
        seconds=chain.seconds,
        warm_start=best.strategy if best else None,
        baselines=tuple(rows),
    )


def _does_not_fit(problem: Problem, rows: list[Candidate]) -> DoesNotFitError:
    """Why no split fits, told by the baseline that comes closest."""
    worst = min((c.evaluation for c in rows), key=_deficit)
    return explain_does_not_fit(problem, worst, strategy="ilp")


def _deficit(ev: Evaluation) -> float:
    return max(s.memory_bytes - s.capacity_bytes for s in ev.stages)
