"""Serving a bundle on onnxruntime: the pipelined stream against the torch runner and one
whole-model session, with the plan's predictions (issue 19).

    OMP_NUM_THREADS=1 python bench/serving.py --base BASE.yaml [--out DIR] [--runs 3]

On this machine, one thread per process:

1. per model, `pipeplan calibrate --engine onnxruntime --extend BASE --model M`: the
   model's operators timed in onnxruntime (BASE, a torch calibration of this host, gives
   the device figures and the link);
2. per model and N in (2, 4): a cluster of N devices of that profile, `plan --stages N
   --optimizer sgd` (on an onnxruntime profile backward is 0, so the throughput objective
   balances the stages' forwards: a serving split) and export;
3. measured, `--runs` times, alternating: `pipeplan run --engine onnxruntime --stream
   REQ` (the pipelined stream, N processes, one thread each), `pipeplan run --mode infer`
   (the torch runner on the same bundle), and the whole model in one onnxruntime session
   with N intra-op threads (the same threads in total), REQ requests one after another;
4. per cell: throughput and p50/p99 latency of each (median over runs), the plan's
   predicted latency and throughput, and whether it predicts a gain over the single
   session: that session predicted by a one-device plan on a profile timed with N
   intra-op threads (`calibrate --engine onnxruntime --threads N`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fidelity as fid  # noqa: E402

#: model -> (path maker, micro-batch size)
BATCH = {"gpt": 8, "resnet": 16, "inception": 16, "resnet50": 8}
REQUESTS = 48


def model_path(name: str, out: Path) -> Path:
    if name in fid.SAMPLES:
        return fid.MODELS / f"{name}.onnx"
    path = out / f"{name}.onnx"
    if not path.exists():  # a timm model of the exporter corpus (tests/corpus.py)
        sys.path.insert(0, str(fid.ROOT))
        from tests import corpus

        corpus.export(corpus.build(name), "dynamo", path)
    return path


def whole_session(model: Path, batch: int, threads: int, requests: int) -> dict:
    """The whole model in one onnxruntime session, `threads` intra-op threads."""
    import onnxruntime as ort

    from planner.graph.load import load_graph
    from planner.graph.shapes import ShapeBindings
    from runners.calibrate.operators import index_bounds
    from runners.calibrate.ort_ops import bound_model, random_feeds
    from runners.ort.providers import inference_session

    mg = load_graph(model, ShapeBindings(batch=batch))
    session = inference_session(bound_model(str(model), mg), threads)
    feeds = random_feeds(session, index_bounds(mg), np.random.default_rng(0))
    for _ in range(3):
        session.run(None, feeds)
    times = []
    start = time.perf_counter()
    for _ in range(requests):
        t0 = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - t0)
    wall = time.perf_counter() - start
    del ort
    return {
        "throughput": batch * requests / wall,
        "p50_ms": 1e3 * float(np.percentile(times, 50)),
        "p99_ms": 1e3 * float(np.percentile(times, 99)),
    }


def cluster_of(path: Path, profile: Path, n: int) -> Path:
    import yaml

    data = {
        "name": path.stem,
        "nodes": [
            {"name": "n0", "devices": [{"profile": str(profile), "count": n}],
             "link": {"profile": str(profile)}}
        ],
    }  # fmt: skip
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def serve(bundle: Path, out: Path, tag: str) -> dict:
    report = out / f"{tag}_serve.json"
    fid.pipeplan(
        "run", str(bundle), "--engine", "onnxruntime", "--stream", str(REQUESTS),
        "--report", str(report),
    )  # fmt: skip
    s = json.loads(report.read_text())["serving"]
    return {
        "throughput": s["throughput_samples_per_s"],
        "p50_ms": s["latency"]["p50_ms"],
        "p99_ms": s["latency"]["p99_ms"],
        "predicted_latency_ms": s["predicted_latency_ms"],
        "predicted_throughput": s["predicted_throughput_samples_per_s"],
    }


def torch_infer(bundle: Path, out: Path, tag: str) -> dict:
    report = out / f"{tag}_torch.json"
    fid.pipeplan("run", str(bundle), "--mode", "infer", "--steps", "6", "--report", str(report))
    m = json.loads(report.read_text())["measured"]
    return {"throughput": m["throughput_samples_per_s"]}


def median_of(runs: list[dict]) -> dict:
    return {k: round(statistics.median(r[k] for r in runs), 3) for k in runs[0]}


def cell(name: str, n: int, base: Path, out: Path, runs: int) -> dict:
    batch = BATCH[name]
    model = model_path(name, out)
    profile = out / f"ort_{name}.yaml"
    if not profile.exists():
        fid.pipeplan(
            "calibrate", "--engine", "onnxruntime", "--extend", str(base), "--model",
            str(model), "--batch", str(batch), "-o", str(profile), timeout=3600,
        )  # fmt: skip
    session_profile = out / f"ort_{name}_t{n}.yaml"  # one device with n threads
    if not session_profile.exists():
        fid.pipeplan(
            "calibrate", "--engine", "onnxruntime", "--extend", str(base), "--model",
            str(model), "--batch", str(batch), "--threads", str(n), "-o",
            str(session_profile), timeout=3600,
        )  # fmt: skip
    session_plan = out / f"{name}_{n}_session_plan.json"
    fid.pipeplan(
        "plan", str(model), "--cluster", str(session_profile), "--batch", str(batch),
        "--objective", "latency", "--json", "-o", str(session_plan),
    )  # fmt: skip
    session_ms = sum(s["forward_ms"] for s in json.loads(session_plan.read_text())["stages"])
    cluster = cluster_of(out / f"cluster_{name}_{n}.yaml", profile, n)
    plan_file = out / f"{name}_{n}_plan.json"
    bundle = out / f"bundle_{name}_{n}"
    fid.pipeplan(
        "plan", str(model), "--cluster", str(cluster), "--batch", str(batch), "--stages",
        str(n), "--parallel", "pp", "--optimizer", "sgd", "--microbatches", "8",
        "--json", "-o", str(plan_file),
    )  # fmt: skip
    fid.pipeplan("export", str(model), str(plan_file), "-o", str(bundle), "--force")
    plan = json.loads(plan_file.read_text())
    measured: dict[str, list[dict]] = {"pipeline": [], "torch": [], "session": []}
    for r in range(runs):
        measured["pipeline"].append(serve(bundle, out, f"{name}_{n}_{r}"))
        measured["torch"].append(torch_infer(bundle, out, f"{name}_{n}_{r}"))
        measured["session"].append(whole_session(model, batch, n, REQUESTS))
    result = {k: median_of(v) for k, v in measured.items()}
    pipe = result["pipeline"]
    return {
        "model": name,
        "processes": n,
        "batch": batch,
        "split_forward_ms": [round(s["forward_ms"], 3) for s in plan["stages"]],
        **result,
        "predicted_session": {
            "latency_ms": round(session_ms, 3),
            "throughput": round(1e3 * batch / session_ms, 1),
        },
        "predicted_gain_over_session": round(
            pipe["predicted_throughput"] / (1e3 * batch / session_ms), 3
        ),
        "session_latency_error_percent": round(
            100 * abs(session_ms - result["session"]["p50_ms"]) / result["session"]["p50_ms"], 1
        ),
        "pipeline_over_session_throughput": round(
            pipe["throughput"] / result["session"]["throughput"], 3
        ),
        "pipeline_over_torch_throughput": round(
            pipe["throughput"] / result["torch"]["throughput"], 3
        ),
        "latency_error_percent": round(
            100 * abs(pipe["predicted_latency_ms"] - pipe["p50_ms"]) / pipe["p50_ms"], 1
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="a torch calibration of this host")
    parser.add_argument("--out", default="/tmp/pipeplan-serving")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=list(BATCH))
    parser.add_argument("--procs", nargs="+", type=int, default=[2, 4])
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cells = [
        cell(name, n, Path(args.base), out, args.runs) for name in args.models for n in args.procs
    ]
    result = {
        "command": "python bench/serving.py " + " ".join(sys.argv[1:]),
        "requests": REQUESTS,
        "runs": args.runs,
        "cells": cells,
        "machine": "2-core VM, OMP_NUM_THREADS=1 per process",
    }
    text = json.dumps(result, indent=2)
    (out / "serving.json").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
