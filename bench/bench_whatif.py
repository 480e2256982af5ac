"""What-if benchmark (issue 7): a 1-to-16-device sweep, cold and from the plan cache.

The sweep: the 1.6 B-parameter, 48-block GPT graph (`samples/models/gpt_xl.onnx`,
micro-batch 1, 8 micro-batches, fp32, Adam, 1F1B, ILP) on one H100-80GB, then 2, 3, ...
16 (`--add H100-80GB:1,2,...,15`: nodes of 8 on NVLink4, InfiniBand HDR between them),
with data parallelism (every replica layout of every scenario planned). Each run is a
fresh `whatif` call in this process (model load included): *cold* with an empty cache
folder, *cached* with the folder the cold run filled. Median of `--repeat` runs each.

    python bench/bench_whatif.py [--repeat 3]
    python bench/bench_whatif.py --two-node [--repeat 3] [--no-chain-dp]

`--two-node` (issue 15): the default sweep (the cluster, x2 and x4 of its kind, with
data parallelism) on 2 x 8 A100-80GB (NVLink3 inside, InfiniBand HDR between), GPT-XL
shape `--batch 1 --dtype bf16`.

Prints one JSON object: timings, plans solved and served, and the sweep's rows.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "samples" / "models" / "gpt_xl.onnx"


TWO_NODE = {
    "name": "a100x16",
    "nodes": [{"devices": "8x A100-80GB", "link": "NVLink3"}] * 2,
    "inter_node_link": "IB-HDR",
}


def sweep(cache_dir: Path, two_node: bool = False, chain_dp: bool = True):
    from cost.cluster import cluster_from_dict
    from planner.config import PlanConfig
    from planner.graph.shapes import ShapeBindings
    from planner.whatif.analysis import whatif
    from planner.whatif.cache import PlanCache

    if two_node:
        t0 = time.perf_counter()
        report = whatif(
            MODEL,
            cluster_from_dict(TWO_NODE),
            PlanConfig(dtype="bf16", chain_dp=chain_dp),
            ShapeBindings(batch=1),
            cache=PlanCache(cache_dir),
        )
        return time.perf_counter() - t0, report
    base = cluster_from_dict(
        {"name": "h100x1", "nodes": [{"devices": "1x H100-80GB", "link": "NVLink4"}]}
    )
    t0 = time.perf_counter()
    report = whatif(
        MODEL,
        base,
        PlanConfig(),
        ShapeBindings(batch=1),
        adds=["H100-80GB:" + ",".join(str(n) for n in range(1, 16))],
        cache=PlanCache(cache_dir),
    )
    return time.perf_counter() - t0, report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--two-node", action="store_true", help="the default sweep on 2x8 A100")
    parser.add_argument(
        "--no-chain-dp", action="store_true", help="--two-node with the MILP alone (the peer)"
    )
    args = parser.parse_args()
    cold, warm = [], []
    solved = served = 0
    report = None
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="pipeplan-bench-") as tmp:
            seconds, report = sweep(Path(tmp), args.two_node, not args.no_chain_dp)
            cold.append(seconds)
            solved = report.cache_misses
            seconds, cached = sweep(Path(tmp), args.two_node, not args.no_chain_dp)
            warm.append(seconds)
            served = cached.cache_hits
            assert cached.cache_misses == 0
    assert report is not None
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    out = {
        "benchmark": (
            "whatif default sweep on 2x8 A100-80GB / IB-HDR, gpt_xl.onnx --batch 1 bf16"
            if args.two_node
            else "whatif sweep 1..16 H100-80GB, gpt_xl.onnx --batch 1 (ILP, PP x DP)"
        ),
        "command": f"python bench/bench_whatif.py --repeat {args.repeat}"
        + (" --two-node" if args.two_node else "")
        + (" --no-chain-dp" if args.no_chain_dp else ""),
        "commit": commit,
        "python": platform.python_version(),
        "scenarios": len(report.rows),
        "cold_seconds_median": round(statistics.median(cold), 2),
        "cold_seconds": [round(x, 2) for x in cold],
        "cached_seconds_median": round(statistics.median(warm), 2),
        "cached_seconds": [round(x, 2) for x in warm],
        "cached_over_cold": round(statistics.median(warm) / statistics.median(cold), 3),
        "plans_solved_cold": solved,
        "plans_served_cached": served,
        "rows": [
            {
                "devices": r.devices,
                "stages_x_replicas": f"{r.stages}x{r.replicas}",
                "samples_per_s": round(r.throughput_samples_per_s, 2),
                "speedup": round(r.speedup, 3) if r.speedup is not None else None,
                "allreduce_ms": round(r.allreduce_ms, 2) if r.allreduce_ms is not None else None,
                "peak_memory_GB": round(r.peak_memory_bytes / 1e9, 1)
                if r.peak_memory_bytes
                else None,
            }
            for r in report.rows
        ],
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
