"""Tensor x pipeline x data: what `plan --tp auto` chooses, against the layouts without it.

Models (bf16, Adam, micro-batch 1, 8 micro-batches per replica): the GPT-XL shape
(`samples/models/gpt_xl.onnx`, 1.56 B parameters, 25 heads), a Llama-3-8B-shaped graph
(32 heads over 8 KV heads, SwiGLU, sequence 2048) and a Llama-3-70B-shaped graph (64 heads
over 8, 80 layers), the last two exported without weights by `samples/export_llama8b.py`
(`--size 70b`) into `--cache`. Per model and cluster, each planned with the same cost model:

* `auto`: `--tp auto` (t in 1, 2, 4, 8 searched with the replicas and the split);
* `pp`: one pipeline (`--parallel pp`);
* `dp x pp`: data x pipeline without tensor parallelism (`--tp 1`);
* `megatron`: the practitioners' layout (Narayanan et al. SC 2021): TP 8 inside each node,
  the pipeline across the nodes, one replica (`--tp 8 --dp 1 --stages <nodes>`);
* `tp8 best`: TP 8 with the replicas and split the planner picks (`--tp 8`).

Reported: the layout (replicas x stages x t), simulated samples/s, peak memory per device
(the fullest stage, GB), planning time (median of `--repeat`), and auto's ratio over each
other in the same run. Auto's closed form is checked to be >= every fixed layout's.

    python bench/bench_tensor.py [--repeat 3] [--cache DIR] [--models gpt_xl,llama8b,llama70b]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_parallel import _planned  # noqa: E402  (median planning time, one-line errors)
from plan_matrix import CLUSTERS  # noqa: E402

from cost.cluster import cluster_from_dict  # noqa: E402
from planner.config import PlanConfig  # noqa: E402
from planner.graph.inspect import load_model  # noqa: E402
from planner.graph.shapes import ShapeBindings  # noqa: E402

MATRIX = {
    "gpt_xl": ["8x A100-80GB NVLink3", "8x H100 NVLink4", "2x8 A100-80GB NVLink3 / IB-HDR",
               "2x8 H100 NVLink4 / IB-NDR"],
    "llama8b": ["8x A100-80GB NVLink3", "8x H100 NVLink4", "2x8 A100-80GB NVLink3 / IB-HDR",
                "2x8 H100 NVLink4 / IB-NDR"],
    "llama70b": ["8x8 H100 NVLink4 / IB-NDR", "8x8 A100-80GB NVLink3 / IB-HDR"],
}  # fmt: skip


def model_path(name: str, cache: Path) -> Path:
    if name == "gpt_xl":
        return ROOT / "samples/models/gpt_xl.onnx"
    path = cache / name / f"{name}.onnx"
    if not path.exists():
        size = ["--size", "70b"] if name == "llama70b" else []
        subprocess.run(
            [sys.executable, str(ROOT / "samples/export_llama8b.py"), str(path), *size],
            check=True,
            cwd=ROOT,
        )
    return path


def _summary(p) -> dict:
    chosen = next(t for t in p.layouts_tried if t.chosen)
    return {
        "layout": f"{p.layout.data_parallel}x{p.layout.pipeline_stages}x{p.layout.tensor_parallel}",
        "samples_per_s": round(p.predicted.throughput_samples_per_s, 2),
        "closed_form": round(chosen.throughput_samples_per_s, 3),
        "peak_gb": round(max(s.peak_memory_bytes for s in p.stages) / 1e9, 1),
        "tensor_comm_ms": round(max(s.tensor_comm_ms for s in p.stages), 2),
        "layouts_priced": len(p.layouts_tried),
    }


def bench(models: list[str], cache: Path, repeat: int) -> list[dict]:
    base = PlanConfig(dtype="bf16", microbatches=8)
    rows = []
    for name in models:
        mg, lg = load_model(model_path(name, cache), ShapeBindings(batch=1))
        for cluster_name in MATRIX[name]:
            cluster = cluster_from_dict(CLUSTERS[cluster_name], source=cluster_name)
            nodes = len(cluster.nodes)
            row: dict = {"model": name, "cluster": cluster_name, "devices": cluster.num_devices}
            for label, update, reps in (
                ("auto", {}, repeat),
                ("pp", {"parallel": "pp"}, 1),
                ("dp x pp", {"tensor_parallel": 1}, 1),
                ("megatron", {"tensor_parallel": 8, "data_parallel": 1, "stages": nodes}, 1),
                ("tp8 best", {"tensor_parallel": 8}, 1),
            ):
                p, seconds, error = _planned(mg, lg, cluster, base.model_copy(update=update), reps)
                row[label] = {"plan_s": round(seconds, 2), "error": error}
                if p is not None and not error:
                    row[label] |= _summary(p)
            auto = row["auto"].get("closed_form", 0.0)
            others = [
                row[k].get("closed_form", 0.0) for k in ("pp", "dp x pp", "megatron", "tp8 best")
            ]
            row["auto_never_below"] = all(auto >= o * (1 - 1e-9) for o in others)
            for k in ("pp", "dp x pp", "megatron", "tp8 best"):
                a, o = row["auto"].get("samples_per_s"), row[k].get("samples_per_s")
                row[f"auto/{k}"] = round(a / o, 2) if a and o else None
            print(_line(row), flush=True)
            rows.append(row)
    return rows


def _cell(d: dict) -> str:
    if d.get("error"):
        return d["error"][:38]
    return f"{d['layout']} {d['samples_per_s']:.1f}/s {d['peak_gb']} GB"


def _line(row: dict) -> str:
    ratios = " / ".join(str(row[f"auto/{k}"]) for k in ("pp", "dp x pp", "megatron", "tp8 best"))
    return (
        f"| {row['model']} | {row['cluster']} | {_cell(row['auto'])} ({row['auto']['plan_s']} s) | "
        f"{_cell(row['pp'])} | {_cell(row['dp x pp'])} | {_cell(row['megatron'])} | "
        f"{_cell(row['tp8 best'])} | {ratios} | {row['auto_never_below']} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cache", type=Path, default=ROOT / "bench" / ".models")
    ap.add_argument("--models", default="gpt_xl,llama8b,llama70b")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = ap.parse_args()
    print(
        "| model | cluster | auto (plan s) | pp | dp x pp (tp 1) | megatron (tp8, pp nodes) | "
        "tp8 best | auto over pp / dp x pp / megatron / tp8 | auto >= all |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    rows = bench(args.models.split(","), args.cache, args.repeat)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
