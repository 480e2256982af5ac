"""Data x pipeline: what `plan --parallel auto` chooses, against one pipeline and pure data
parallelism, and (on this CPU) whether the runner's measured ranking follows the prediction.

`--planner`: the GPT-XL shape (`samples/models/gpt_xl.onnx`, 1.56 B parameters, bf16,
Adam, micro-batch 1, 8 micro-batches per replica) on 16 and 64 A100 and H100 devices and
on mixed clusters. Per cluster: the auto layout (replicas x stages, simulated and
closed-form samples/s, planning time, median of `--repeat`), auto with ZeRO-1, one
pipeline (`--parallel pp`), and pure data parallelism (`--dp N --stages 1`, one device per
replica) where it fits; ratios in the same run.

`--cpu`: four local processes (gloo) on the calibrated CPU profile
(`samples/clusters/cpu4_profile.yaml`), the gpt and resnet samples, a fixed global batch
split three ways: 2 replicas x 2 stages, 1 x 4 (one pipeline) and 4 x 1 (pure data
parallelism), and a one-process peer (1 x 1, the same batch on one rank) that measures how
far the host is from its profile today with no two ranks sharing a core. Each layout is planned, exported and run `--runs` times (interleaved, so
the machine's noise falls on every layout alike); the 2 x 2 run checks its gradients
against one process. Reported: predicted and measured iteration time (medians), their
ratio, that ratio over the peer's (what four ranks on two cores add), and the predicted
and measured ranking of the three four-process layouts.

    python bench/bench_parallel.py --planner [--repeat 3]
    python bench/bench_parallel.py --cpu [--runs 3] [--steps 6]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from plan_matrix import CLUSTERS  # noqa: E402

from cost.cluster import cluster_from_dict, load_cluster  # noqa: E402
from cost.errors import DoesNotFitError, PipeplanError  # noqa: E402
from planner.api import plan_graph  # noqa: E402
from planner.config import PlanConfig  # noqa: E402
from planner.graph.inspect import load_model  # noqa: E402
from planner.graph.shapes import ShapeBindings  # noqa: E402

PLANNER_CLUSTERS = [
    "2x8 A100-80GB NVLink3 / IB-HDR",
    "8x8 A100-80GB NVLink3 / IB-HDR",
    "2x8 H100 NVLink4 / IB-NDR",
    "8x8 H100 NVLink4 / IB-NDR",
    "8 A100-80GB + 8 V100-32GB / IB-HDR",
    "16 H100 + 16 A100-80GB / IB-NDR",
    "32 A100-80GB + 32 V100-32GB / IB-HDR",
]


def _planned(mg, lg, cluster, config, repeat: int) -> tuple[object | None, float, str]:
    times, p, error = [], None, ""
    for _ in range(repeat):
        started = time.perf_counter()
        try:
            p = plan_graph(mg, lg, cluster, config, ShapeBindings(batch=1))
        except DoesNotFitError as exc:
            error = "does not fit: " + str(exc).splitlines()[0][:70]
        except PipeplanError as exc:
            error = str(exc).splitlines()[0][:80]
        times.append(time.perf_counter() - started)
        if error:
            break
    return p, statistics.median(times), error


def _summary(p) -> dict:
    chosen = next((t for t in p.layouts_tried if t.chosen), None)
    return {
        "layout": f"{p.layout.data_parallel} x {p.layout.pipeline_stages}",
        "shape": p.layout.shape,
        "samples_per_s": round(p.predicted.throughput_samples_per_s, 2),
        "closed_form_samples_per_s": round(chosen.throughput_samples_per_s, 2) if chosen else None,
        "iteration_ms": round(p.predicted.iteration_ms, 1),
        "allreduce_ms": round(max(s.sync_ms for s in p.stages), 1),
        "bubble": round(p.predicted.bubble_fraction, 3),
        "peak_memory_fraction": round(
            max(s.peak_memory_bytes / s.memory_capacity_bytes for s in p.stages), 3
        ),
        "layouts_priced": len(p.layouts_tried),
    }


def planner_bench(repeat: int) -> list[dict]:
    mg, lg = load_model(ROOT / "samples/models/gpt_xl.onnx", ShapeBindings(batch=1))
    base = PlanConfig(dtype="bf16", microbatches=8)
    rows = []
    for name in PLANNER_CLUSTERS:
        cluster = cluster_from_dict(CLUSTERS[name], source=name)
        n = cluster.num_devices
        row: dict = {"cluster": name, "devices": n}
        for label, config, reps in (
            ("auto", base, repeat),
            ("auto_zero1", base.model_copy(update={"zero": 1}), 1),
            ("pipeline_only", base.model_copy(update={"parallel": "pp"}), repeat),
            ("pure_dp", base.model_copy(update={"data_parallel": n, "stages": 1}), 1),
        ):
            p, seconds, error = _planned(mg, lg, cluster, config, reps)
            row[label] = {"plan_s": round(seconds, 2), "error": error}
            if p is not None and not error:
                row[label] |= _summary(p)
        auto = row["auto"].get("samples_per_s")
        for other in ("pipeline_only", "pure_dp"):
            t = row[other].get("samples_per_s")
            row[f"auto_over_{other}"] = round(auto / t, 2) if auto and t else None
        print(_planner_line(row), flush=True)
        rows.append(row)
    return rows


def _planner_line(row: dict) -> str:
    def cell(d: dict) -> str:
        if d.get("error"):
            return d["error"][:40]
        return f"{d['layout']} {d['samples_per_s']:.1f}/s"

    return (
        f"| {row['cluster']} | {row['devices']} | {cell(row['auto'])} "
        f"({row['auto'].get('plan_s')} s) | {cell(row['auto_zero1'])} | "
        f"{cell(row['pipeline_only'])} (bubble {row['pipeline_only'].get('bubble')}) | "
        f"{cell(row['pure_dp'])} | {row['auto_over_pipeline_only']} | {row['auto_over_pure_dp']} |"
    )


# ------------------------------------------------------------------ CPU, four processes

#: micro-batch size (the ones cpu_profile.yaml timed the operators at), global batch
CPU_MODELS = {"gpt": (8, 64), "resnet": (16, 128)}
CPU_LAYOUTS = {"2x2": {"data_parallel": 2, "stages": 2}, "1x4": {"parallel": "pp", "stages": 4},
               "4x1": {"data_parallel": 4, "stages": 1},
               "1x1": {"parallel": "pp", "stages": 1}}  # fmt: skip
#: the one-process peer: how far this host is from its profile today, with no rank sharing
PEER = "1x1"


def cpu_bench(runs: int, steps: int) -> list[dict]:
    from exporters.bundle import export
    from planner.api import plan
    from runners.launch import run

    cluster = load_cluster(ROOT / "samples/clusters/cpu4_profile.yaml")
    work = Path(tempfile.mkdtemp(prefix="pipeplan-bench-parallel-"))
    rows = []
    for model, (mb, global_batch) in CPU_MODELS.items():
        source = ROOT / "samples" / "models" / f"{model}.onnx"
        bundles, predicted, checks = {}, {}, {}
        for label, flags in CPU_LAYOUTS.items():
            config = PlanConfig(global_batch=global_batch, **flags)
            p = plan(source, cluster, config, ShapeBindings(batch=mb))
            bundle = work / f"{model}-{label}"
            export(source, p, bundle)
            bundles[label] = bundle
            predicted[label] = p.predicted.iteration_ms
        measured: dict[str, list[float]] = {label: [] for label in CPU_LAYOUTS}
        for i in range(runs):
            for label, bundle in bundles.items():
                result = run(bundle, steps=steps, check=(i == 0 and label == "2x2"))
                measured[label].append(result.measured.iteration_ms)
                if result.check is not None:
                    checks[label] = result.check
        host = statistics.median(measured[PEER]) / predicted[PEER]
        for label in CPU_LAYOUTS:
            med = statistics.median(measured[label])
            row = {
                "model": model,
                "layout": label,
                "global_batch": global_batch,
                "predicted_ms": round(predicted[label], 1),
                "measured_ms": round(med, 1),
                "measured_runs_ms": [round(x, 1) for x in measured[label]],
                "measured_over_predicted": round(med / predicted[label], 2),
                # the same ratio over the one-process peer's: what sharing cores adds
                "over_peer_ratio": round(med / predicted[label] / host, 2),
                "measured_samples_per_s": round(global_batch / (med / 1e3), 1),
                "predicted_samples_per_s": round(global_batch / (predicted[label] / 1e3), 1),
            }
            if label in checks:
                c = checks[label]
                row["check"] = (
                    f"{'passed' if c.passed else 'FAILED'} (max rel {c.max_rel_diff:.1e})"
                )
            rows.append(row)
        ours = [r for r in rows if r["model"] == model and r["layout"] != PEER]
        pred_rank = [r["layout"] for r in sorted(ours, key=lambda r: r["predicted_ms"])]
        meas_rank = [r["layout"] for r in sorted(ours, key=lambda r: r["measured_ms"])]
        for r in ours:
            r["predicted_ranking"] = " < ".join(pred_rank)
            r["measured_ranking"] = " < ".join(meas_rank)
            print(_cpu_line(r), flush=True)
        peer = next(r for r in rows if r["model"] == model and r["layout"] == PEER)
        peer["predicted_ranking"] = peer["measured_ranking"] = "(one process: the peer)"
        print(_cpu_line(peer), flush=True)
    return rows


def _cpu_line(r: dict) -> str:
    return (
        f"| {r['model']} | {r['layout']} | {r['predicted_ms']} | {r['measured_ms']} | "
        f"{r['measured_over_predicted']} | {r['over_peer_ratio']} | {r['measured_samples_per_s']} | "
        f"{r.get('check', '')} | {r['predicted_ranking']} | {r['measured_ranking']} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--planner", action="store_true")
    parser.add_argument("--cpu", action="store_true")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--json", default=None, help="write the rows here too")
    args = parser.parse_args()
    if not (args.planner or args.cpu):
        parser.error("give --planner and/or --cpu")
    out: dict = {}
    if args.planner:
        out["planner"] = planner_bench(args.repeat)
    if args.cpu:
        out["cpu"] = cpu_bench(args.runs, args.steps)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
