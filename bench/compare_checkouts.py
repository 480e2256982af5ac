"""Planning time of two checkouts of pipeplan, interleaved in one run (for refactors).

Each run is a fresh process in the checkout's folder (its own code imported), timing
`planner.api.plan` in-process (imports included, interpreter start excluded) on the
1.6 B-parameter GPT graph over 16 H100s, for the ILP and for the `greedy` baseline (whose
time is almost all loading and pricing). Runs alternate between the checkouts; medians
and the after/before ratio are printed.

    python bench/compare_checkouts.py --before ../old-checkout [--after .] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SNIPPET = """
import sys, time
t = time.perf_counter()
from planner.api import plan
from planner.config import PlanConfig
try:
    from planner.graph.shapes import ShapeBindings
except ImportError:  # the layout before issue 12
    from planner.shapes import ShapeBindings
p = plan("samples/models/gpt_xl.onnx", "samples/clusters/h100x16.yaml",
         PlanConfig(strategy=sys.argv[1]), ShapeBindings(batch=1))
print(time.perf_counter() - t)
"""


def _once(checkout: Path, strategy: str) -> float:
    env = os.environ | {"PYTHONPATH": str(checkout), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", SNIPPET, strategy],
        cwd=checkout, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, type=Path)
    parser.add_argument("--after", default=ROOT, type=Path)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    sides = {"before": args.before.resolve(), "after": args.after.resolve()}
    times = {(side, s): [] for side in sides for s in ("ilp", "greedy")}
    for _ in range(args.repeat):
        for side, path in sides.items():
            for strategy in ("ilp", "greedy"):
                times[side, strategy].append(_once(path, strategy))
    medians = {f"{side}_{s}_s": round(statistics.median(t), 3) for (side, s), t in times.items()}
    ratios = {
        f"after_over_before_{s}": round(medians[f"after_{s}_s"] / medians[f"before_{s}_s"], 3)
        for s in ("ilp", "greedy")
    }
    print(json.dumps({"repeat": args.repeat, **medians, **ratios}, indent=2))


if __name__ == "__main__":
    main()
