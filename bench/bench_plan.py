"""Planner benchmarks (issue 3).

1. Quality: on the heterogeneous sample cluster (2x A100 + 2x V100 + T4, two nodes on
   InfiniBand) and the GPT sample, the ILP's predicted throughput against the `params`
   (DeepSpeed) and `greedy` (torchgpipe) baselines, for several micro-batch sizes (small
   ones are launch-overhead bound, where every device looks alike; large ones compute
   bound, where device speed matters). Two bases: the closed form the ILP minimises (the
   same formula prices the baselines), and the simulator on each strategy's own plan
   (1F1B schedule), where a baseline can come out slightly ahead.
2. Speed: wall time of `pipeplan plan` (a fresh process: load, price, baselines, ILP) on
   the 1.6 B-parameter, 48-block GPT graph over 16 H100s (two nodes of 8, NVLink4 inside,
   InfiniBand NDR between) and 64 (eight nodes), median of `--repeat` runs, with the
   solver's status and gap. The `pipedream` baseline's wall time is the peer measured alongside.

    python bench/bench_plan.py [--repeat 3]
    python bench/bench_plan.py --matrix [--repeat 3] [--only NAME] [--models gpt_xl,llama8b,resnet152] [--no-chain-dp]

`--matrix`: planning time and gap on a grid of 25 clusters x 3 models (bench/plan_matrix.py).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "samples" / "models"
CLUSTERS = ROOT / "samples" / "clusters"


def quality() -> list[dict]:
    from planner.api import plan
    from planner.config import PlanConfig
    from planner.graph.shapes import ShapeBindings

    rows = []
    for batch in (8, 64, 256, 1024, 4096):
        bindings = ShapeBindings(batch=batch)
        p = plan(MODELS / "gpt.onnx", CLUSTERS / "hetero.yaml", PlanConfig(), bindings)
        by = {b.strategy: b for b in p.baselines}
        # Closed form (the objective the ILP minimises), for the ILP and the baselines alike.
        ilp_analytic = p.predicted.global_batch / (p.predicted.analytic_iteration_ms / 1e3)
        # Simulated (1F1B schedule), each strategy's own plan.
        sim = {
            s: plan(
                MODELS / "gpt.onnx", CLUSTERS / "hetero.yaml", PlanConfig(strategy=s), bindings
            ).predicted.throughput_samples_per_s
            for s in ("params", "greedy")
        }
        rows.append(
            {
                "microbatch_size": batch,
                "ilp_samples_per_s": round(ilp_analytic, 1),
                "params_samples_per_s": round(by["params"].throughput_samples_per_s, 1),
                "greedy_samples_per_s": round(by["greedy"].throughput_samples_per_s, 1),
                "ilp_over_params": round(ilp_analytic / by["params"].throughput_samples_per_s, 3),
                "ilp_over_greedy": round(ilp_analytic / by["greedy"].throughput_samples_per_s, 3),
                "simulated_ilp_over_params": round(
                    p.predicted.throughput_samples_per_s / sim["params"], 3
                ),
                "simulated_ilp_over_greedy": round(
                    p.predicted.throughput_samples_per_s / sim["greedy"], 3
                ),
                "ilp_stages": len(p.stages),
                "status": p.solver.status,
            }
        )
    return rows


def timed_plan(cluster: str, strategy: str) -> tuple[float, dict]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "plan.json"
        start = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "runners.cli",
                "plan",
                str(MODELS / "gpt_xl.onnx"),
                "--cluster",
                str(CLUSTERS / cluster),
                "--batch",
                "1",
                "--strategy",
                strategy,
                "--time-limit",
                "60",
                "-o",
                str(out),
            ],
            check=True,
            capture_output=True,
            cwd=ROOT,
        )
        seconds = time.perf_counter() - start
        return seconds, json.loads(out.read_text())


def speed(repeat: int) -> list[dict]:
    rows = []
    for cluster, goal in (("h100x16.yaml", 10.0), ("h100x64.yaml", 60.0)):
        ilp_times, pipedream_times, last = [], [], None
        for _ in range(repeat):
            seconds, last = timed_plan(cluster, "ilp")
            ilp_times.append(seconds)
            pipedream_times.append(timed_plan(cluster, "pipedream")[0])
        wall = statistics.median(ilp_times)
        rows.append(
            {
                "cluster": cluster,
                "devices": sum(len(n["devices"]) for n in last["cluster"]["nodes"]),
                "ilp_wall_s_median": round(wall, 2),
                "pipedream_wall_s_median": round(statistics.median(pipedream_times), 2),
                "ilp_over_pipedream_wall": round(wall / statistics.median(pipedream_times), 2),
                "solver_s": round(last["solver"]["seconds"], 2),
                "status": last["solver"]["status"],
                "gap": last["solver"]["gap"],
                "variables": last["solver"]["variables"],
                "constraints": last["solver"]["constraints"],
                "stages": len(last["stages"]),
                "iteration_ms": round(last["predicted"]["iteration_ms"], 3),
                "goal_s": goal,
                "met": wall <= goal,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--matrix", action="store_true", help="the cluster grid (plan_matrix.py)")
    parser.add_argument("--only", default=None, help="--matrix: clusters whose name has this")
    parser.add_argument("--models", default="gpt_xl,llama8b,resnet152", help="--matrix: models")
    parser.add_argument(
        "--no-chain-dp", action="store_true", help="--matrix: the MILP alone (the peer)"
    )
    args = parser.parse_args()
    if args.matrix:
        sys.path.insert(0, str(ROOT / "bench"))
        from plan_matrix import HEADER, run_matrix, summary

        print(HEADER, flush=True)
        rows = run_matrix(args.repeat, args.only, args.models.split(","), not args.no_chain_dp)
        print("\n" + summary(rows))
        return
    print(
        json.dumps({"quality_hetero_gpt": quality(), "speed_gpt_xl": speed(args.repeat)}, indent=2)
    )


if __name__ == "__main__":
    main()
