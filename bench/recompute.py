"""What recomputation costs and saves, predicted on an 8B model and measured on this CPU.

1. Llama-3-8B (graph only, `samples/export_llama8b.py`), bf16, Adam, 8 micro-batches of 1
   x 2048 tokens, on 8 H100 (one NVLink node) and on 16 H100 (two nodes, IB-NDR): the
   plan with and without `--recompute` (stages, predicted iteration, largest stage
   memory, bubble, solver status), and the layer grouping chosen automatically against
   `--layer-depth` 1 to 4 by hand.
2. The GPT sample on this host, 2 processes (`cpu2.yaml`), with and without
   `--recompute`: predicted and measured iteration and backward per micro-batch.

    python bench/recompute.py [--time-limit 10] [--skip-8b] [--skip-cpu]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cost.cluster import cluster_from_dict, load_cluster  # noqa: E402
from planner.api import plan_graph  # noqa: E402
from planner.config import PlanConfig  # noqa: E402
from planner.graph.inspect import load_model  # noqa: E402
from planner.graph.shapes import ShapeBindings  # noqa: E402

H100X8 = {"name": "h100x8", "nodes": [{"devices": "8x H100-80GB", "link": "NVLink4"}]}


def _row(label: str, p, seconds: float, layers: int) -> str:
    peak = max(s.peak_memory_bytes for s in p.stages) / 1e9
    bwd = max(s.backward_ms for s in p.stages)
    return (
        f"| {label} | {layers} | {len(p.stages)} | {p.predicted.iteration_ms:,.1f} "
        f"| {p.predicted.throughput_samples_per_s:.2f} | {peak:.1f} | {bwd:.2f} "
        f"| {p.predicted.bubble_fraction:.1%} | {p.solver.status} ({p.solver.gap:.1%}) "
        f"| {seconds:.1f} |"
    )


def llama8b(time_limit: float) -> None:
    from samples.export_llama8b import main as export_8b

    with tempfile.TemporaryDirectory(prefix="pipeplan-8b-") as tmp:
        path = Path(tmp) / "llama8b.onnx"
        export_8b([str(path)])
        clusters = {
            "8x H100": cluster_from_dict(H100X8),
            "16x H100": load_cluster(ROOT / "samples/clusters/h100x16.yaml"),
        }
        print(
            "\n| cluster, recompute | layers | stages | iteration ms | samples/s "
            "| largest stage GB | largest bwd ms | bubble | solver | plan s |"
        )
        print("|" + "---|" * 10)
        graphs = {None: load_model(path, ShapeBindings())}
        for name, cluster in clusters.items():
            for recompute in (False, True):
                cfg = PlanConfig(dtype="bf16", recompute=recompute, time_limit_s=time_limit)
                mg, lg = graphs[None]
                started = time.perf_counter()
                try:
                    p = plan_graph(mg, lg, cluster, cfg, ShapeBindings())
                except Exception as exc:  # a row, not the end of the table
                    print(f"| {name}, {recompute} | {len(lg.layers)} | {type(exc).__name__}: "
                          f"{str(exc)[:120]} |")  # fmt: skip
                    continue
                print(_row(f"{name}, {recompute}", p, time.perf_counter() - started,
                           len(lg.layers)), flush=True)  # fmt: skip
        print("\n| grouping (8x H100, no recompute) | layers | stages | iteration ms "
              "| samples/s | largest stage GB | largest bwd ms | bubble | solver | plan s |")  # fmt: skip
        print("|" + "---|" * 10)
        cluster = clusters["8x H100"]
        cfg = PlanConfig(dtype="bf16", time_limit_s=time_limit)
        for depth in (None, 1, 2, 3, 4):
            started = time.perf_counter()
            mg, lg = load_model(path, ShapeBindings(), layer_depth=depth)
            try:
                p = plan_graph(mg, lg, cluster, cfg, ShapeBindings())
            except Exception as exc:
                print(f"| depth {depth} | {len(lg.layers)} | {type(exc).__name__}: "
                      f"{str(exc)[:120]} |")  # fmt: skip
                continue
            label = "automatic" if depth is None else f"--layer-depth {depth}"
            print(_row(label, p, time.perf_counter() - started, len(lg.layers)), flush=True)


def cpu(steps: int) -> None:
    from exporters.bundle import export
    from planner.api import plan
    from runners.launch import run

    gpt = ROOT / "samples/models/gpt.onnx"
    print("\n| GPT on cpu2, recompute | predicted ms | measured ms | measured / predicted "
          "| predicted bwd ms (stage 0, 1) | measured bwd ms (stage 0, 1) |")  # fmt: skip
    print("|" + "---|" * 6)
    with tempfile.TemporaryDirectory(prefix="pipeplan-rc-") as tmp:
        for recompute in (False, True):
            cfg = PlanConfig(stages=2, microbatches=4, strategy="greedy", recompute=recompute)
            p = plan(gpt, ROOT / "samples/clusters/cpu2.yaml", cfg, ShapeBindings(batch=8))
            bundle = Path(tmp) / f"b{recompute}"
            export(gpt, p, bundle)
            r = run(bundle, steps=steps)
            measured = statistics.median(r.measured.step_ms[1:])
            pb = ", ".join(f"{s.backward_ms:.2f}" for s in p.stages)
            mb = ", ".join(f"{s.backward_ms:.2f}" for s in r.measured.per_stage)
            print(f"| {recompute} | {r.predicted_iteration_ms:.1f} | {measured:.1f} "
                  f"| {measured / r.predicted_iteration_ms:.2f} | {pb} | {mb} |", flush=True)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time-limit", type=float, default=10.0)
    parser.add_argument("--steps", type=int, default=11)
    parser.add_argument("--skip-8b", action="store_true")
    parser.add_argument("--skip-cpu", action="store_true")
    args = parser.parse_args(argv)
    if not args.skip_8b:
        llama8b(args.time_limit)
    if not args.skip_cpu:
        cpu(args.steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
