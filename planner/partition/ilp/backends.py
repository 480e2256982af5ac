"""MILP backends for PuLP: HiGHS (through highspy) first, CBC as the fallback.

PuLP's `HiGHS` class neither takes a starting solution nor reports the dual bound, and
both matter here: a warm start from the best baseline gives the solver an incumbent at
once (so a time limit always returns a plan at least as good as the baselines), and the
bound gives the optimality gap. `WarmHiGHS` adds both; `solve` picks the backend and
falls back to CBC when HiGHS fails.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from dataclasses import dataclass

import pulp


@dataclass(frozen=True)
class SolveResult:
    backend: str
    status: str  # "optimal", "time_limit" (feasible, not proven), "infeasible", "error"
    objective: float | None
    bound: float | None
    seconds: float


class WarmHiGHS(pulp.HiGHS):
    """PuLP's highspy interface plus a warm start (variables' initial values) and the bound."""

    def __init__(self, *args, warm_start: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.warm_start = warm_start
        self.info = None
        self.model_status = None

    def callSolver(self, lp):
        import highspy

        if self.warm_start:
            variables = lp.variables()
            values = [0.0] * len(variables)
            complete = True
            for var in variables:
                if var.varValue is None:
                    complete = False
                    break
                values[var.index] = float(var.varValue)
            if complete:
                solution = highspy.HighsSolution()
                solution.col_value = values
                solution.value_valid = True
                lp.solverModel.setSolution(solution)
        lp.solverModel.run()
        self.info = lp.solverModel.getInfo()
        self.model_status = lp.solverModel.getModelStatus()


@contextlib.contextmanager
def _native_stdout_silenced():
    """Send what native code writes to file descriptor 1 to /dev/null meanwhile: HiGHS
    prints its banner there when the first `Highs` object is made, whatever its options,
    which would corrupt `pipeplan plan --json` on stdout."""
    try:
        sys.stdout.flush()
        saved = os.dup(1)
    except (OSError, ValueError):  # no real stdout (embedded, closed): nothing to guard
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def solve(
    problem: pulp.LpProblem, *, backend: str = "highs", time_limit: float = 30.0, gap: float = 1e-6
) -> SolveResult:
    """Solve `problem` (warm-started from its variables' initial values when all are set)."""
    order = ["highs", "cbc"] if backend == "highs" else ["cbc"]
    last_error = None
    for name in order:
        start = time.perf_counter()
        try:
            if name == "highs":
                # presolve off: on small instances of this model HiGHS 1.15's presolve was
                # seen to prune the optimum and still report "optimal" (found by the
                # exhaustive-search tests); without it results match exhaustive search.
                # MIP feasibility 1e-9, not 1e-6: a binary at 1 - 1e-6 leaves a big-M row
                # slack by 1e-6 of the costliest layer (times are scaled to it), and the
                # objective then disagrees with the cost model (seen: 2e-6 relative).
                solver = WarmHiGHS(
                    msg=False,
                    timeLimit=time_limit,
                    gapRel=gap,
                    threads=1,
                    presolve="off",
                    mip_feasibility_tolerance=1e-9,
                )
                with _native_stdout_silenced():
                    problem.solve(solver)
                import highspy

                status_map = {
                    highspy.HighsModelStatus.kOptimal: "optimal",
                    highspy.HighsModelStatus.kTimeLimit: "time_limit",
                    highspy.HighsModelStatus.kInfeasible: "infeasible",
                    highspy.HighsModelStatus.kUnboundedOrInfeasible: "infeasible",
                }
                status = status_map.get(solver.model_status, "error")
                objective = pulp.value(problem.objective)
                bound = solver.info.mip_dual_bound if solver.info is not None else None
                if status == "time_limit" and (objective is None or not math.isfinite(objective)):
                    status = "error"
                if status == "error":
                    raise RuntimeError(f"HiGHS ended with {solver.model_status}")
            else:
                solver = pulp.PULP_CBC_CMD(
                    msg=False,
                    timeLimit=max(1, int(math.ceil(time_limit))),
                    gapRel=gap,
                    warmStart=True,
                )
                code = problem.solve(solver)
                pulp_status = pulp.LpStatus[code]
                objective = pulp.value(problem.objective)
                if pulp_status == "Optimal":
                    proven = problem.sol_status == pulp.LpSolutionOptimal
                    status = "optimal" if proven else "time_limit"
                elif pulp_status == "Infeasible":
                    status = "infeasible"
                else:
                    raise RuntimeError(f"CBC ended with {pulp_status}")
                bound = objective if status == "optimal" else None
            seconds = time.perf_counter() - start
            if bound is not None and not math.isfinite(bound):
                bound = None
            return SolveResult(
                name, status, objective if status != "infeasible" else None, bound, seconds
            )
        except Exception as exc:  # a broken backend must not stop planning: try the next
            last_error = exc
            continue
    return (
        SolveResult("none", "error", None, None, 0.0)
        if last_error
        else SolveResult("none", "error", None, None, 0.0)
    )
