"""Planning time and solver gap on a grid of clusters nobody tuned for (issue 15).

`bench/bench_plan.py --matrix` runs this. Models: the 1.6 B GPT-XL shape
(`samples/models/gpt_xl.onnx`, 48 blocks), a Llama-3-8B-shaped graph (32 blocks, graph
only, `samples/export_llama8b.py`) and ResNet-152 (timm, random weights, 224x224, exported
with `dynamo=True, optimize=False`). Clusters: `CLUSTERS`, 25 of them: A100-40/80GB,
H100, V100, T4 and mixes; NVLink, PCIe, IB-HDR, IB-NDR, 100GbE, 25GbE; 4 to 128 devices in
1 to 8 nodes. Each cell loads the model once (its load time is reported apart) and plans
it `--repeat` times in this process (bf16, Adam, 8 micro-batches, the default ILP with its
30 s limit): the median planning time, the solver's status and gap, stages and
throughput. A cell whose model cannot fit is reported as such.

    python bench/bench_plan.py --matrix [--repeat 3] [--only SUBSTRING] [--models gpt_xl,...]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cost.cluster import cluster_from_dict  # noqa: E402
from cost.errors import DoesNotFitError, PipeplanError  # noqa: E402
from planner.api import plan_graph  # noqa: E402
from planner.config import PlanConfig  # noqa: E402
from planner.graph.inspect import load_model  # noqa: E402
from planner.graph.shapes import ShapeBindings  # noqa: E402

ETH25 = {"bandwidth_GBps": 3.125, "latency_us": 25}  # 25GbE: 25 Gb/s, RoCE-class latency


def _nodes(count: int, devices: str, link, inter="IB-HDR", name="c") -> dict:
    return {
        "name": name,
        "nodes": [{"devices": devices, "link": link} for _ in range(count)],
        "inter_node_link": inter,
    }


def _mixed(name: str, nodes: list[tuple[str, object]], inter="IB-HDR") -> dict:
    return {
        "name": name,
        "nodes": [{"devices": d, "link": link} for d, link in nodes],
        "inter_node_link": inter,
    }


#: name -> cluster spec (the grid of issue 15)
CLUSTERS: dict[str, dict] = {
    "4x A100-40GB NVLink3": _nodes(1, "4x A100-40GB", "NVLink3"),
    "4x V100-32GB NVLink2": _nodes(1, "4x V100-32GB", "NVLink2"),
    "4x T4 PCIe4": _nodes(1, "4x T4", "PCIe4"),
    "8x A100-80GB NVLink3": _nodes(1, "8x A100-80GB", "NVLink3"),
    "8x H100 NVLink4": _nodes(1, "8x H100-80GB", "NVLink4"),
    "8x V100-16GB NVLink2": _nodes(1, "8x V100-16GB", "NVLink2"),
    "8x T4 PCIe4": _nodes(1, "8x T4", "PCIe4"),
    "2x4 A100-40GB PCIe4 / 100GbE": _nodes(2, "4x A100-40GB", "PCIe4", "100GbE"),
    "2x8 A100-80GB NVLink3 / IB-HDR": _nodes(2, "8x A100-80GB", "NVLink3", "IB-HDR"),
    "2x8 H100 NVLink4 / IB-NDR": _nodes(2, "8x H100-80GB", "NVLink4", "IB-NDR"),
    "4x4 V100-32GB NVLink2 / 25GbE": _nodes(4, "4x V100-32GB", "NVLink2", ETH25),
    "2x8 T4 PCIe4 / 100GbE": _nodes(2, "8x T4", "PCIe4", "100GbE"),
    "8 A100-80GB + 8 V100-32GB / IB-HDR": _mixed(
        "m16", [("8x A100-80GB", "NVLink3"), ("8x V100-32GB", "NVLink2")]
    ),
    "4 H100 + 4 A100-40GB / IB-NDR": _mixed(
        "m8", [("4x H100-80GB", "NVLink4"), ("4x A100-40GB", "NVLink3")], "IB-NDR"
    ),
    "4 A100-80GB + 2 V100-32GB + 2 T4 / 100GbE": _mixed(
        "m8b",
        [("4x A100-80GB", "NVLink3"), ("2x V100-32GB", "NVLink2"), ("2x T4", "PCIe4")],
        "100GbE",
    ),
    "4x8 A100-80GB NVLink3 / IB-HDR": _nodes(4, "8x A100-80GB", "NVLink3", "IB-HDR"),
    "4x8 H100 NVLink4 / IB-NDR": _nodes(4, "8x H100-80GB", "NVLink4", "IB-NDR"),
    "8x4 V100-32GB PCIe4 / IB-HDR": _nodes(8, "4x V100-32GB", "PCIe4", "IB-HDR"),
    "16 H100 + 16 A100-80GB / IB-NDR": _mixed(
        "m32", [("8x H100-80GB", "NVLink4")] * 2 + [("8x A100-80GB", "NVLink3")] * 2, "IB-NDR"
    ),
    "8x8 H100 NVLink4 / IB-NDR": _nodes(8, "8x H100-80GB", "NVLink4", "IB-NDR"),
    "8x8 A100-80GB NVLink3 / IB-HDR": _nodes(8, "8x A100-80GB", "NVLink3", "IB-HDR"),
    "8x8 A100-40GB NVLink3 / 100GbE": _nodes(8, "8x A100-40GB", "NVLink3", "100GbE"),
    "32 A100-80GB + 32 V100-32GB / IB-HDR": _mixed(
        "m64", [("8x A100-80GB", "NVLink3")] * 4 + [("8x V100-32GB", "NVLink2")] * 4
    ),
    "8x16 H100 NVLink4 / IB-NDR": _nodes(8, "16x H100-80GB", "NVLink4", "IB-NDR"),
    "8x16 A100-80GB NVLink3 / IB-HDR": _nodes(8, "16x A100-80GB", "NVLink3", "IB-HDR"),
}

#: model -> (how to bind its inputs)
BINDINGS = {
    "gpt_xl": ShapeBindings(batch=1),
    "llama8b": ShapeBindings(),
    "resnet152": ShapeBindings(batch=32),
}


def model_files(folder: Path, wanted: list[str]) -> dict[str, Path]:
    """The matrix's models, exported into `folder` where they are not samples."""
    import warnings

    files = {}
    if "gpt_xl" in wanted:
        files["gpt_xl"] = ROOT / "samples/models/gpt_xl.onnx"
    if "llama8b" in wanted:
        from samples.export_llama8b import main as export_8b

        files["llama8b"] = folder / "llama8b.onnx"
        export_8b([str(files["llama8b"])])
    if "resnet152" in wanted:
        import torch

        from exporters.from_torch import export_for_training
        from tests.corpus import timm_importable

        timm_importable()
        import timm

        model = timm.create_model("resnet152", pretrained=False).eval()
        files["resnet152"] = folder / "resnet152.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            export_for_training(model, (torch.randn(2, 3, 224, 224),), files["resnet152"],
                                input_names=["x"], batch_range=(1, 1024))  # fmt: skip
    return files


def run_matrix(
    repeat: int, only: str | None, models: list[str], chain_dp: bool = True
) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="pipeplan-matrix-") as tmp:
        files = model_files(Path(tmp), models)
        for model, path in files.items():
            started = time.perf_counter()
            mg, lg = load_model(path, BINDINGS[model])
            load_s = time.perf_counter() - started
            for name, spec in CLUSTERS.items():
                if only and only not in name:
                    continue
                rows.append(_cell(model, name, spec, mg, lg, load_s, repeat, chain_dp))
                print(_line(rows[-1]), flush=True)
    return rows


def _cell(model, name, spec, mg, lg, load_s, repeat, chain_dp=True) -> dict:
    cluster = cluster_from_dict(spec, source=name)
    # one pipeline: the matrix measures the split (data x pipeline: bench/bench_parallel.py)
    config = PlanConfig(dtype="bf16", microbatches=8, chain_dp=chain_dp, parallel="pp")
    times, p, error = [], None, ""
    for _ in range(repeat):
        started = time.perf_counter()
        try:
            p = plan_graph(mg, lg, cluster, config, BINDINGS[model])
        except DoesNotFitError:
            error = "does not fit"
        except PipeplanError as exc:
            error = str(exc)[:80]
        times.append(time.perf_counter() - started)
        if error:
            break
    row = {
        "model": model,
        "cluster": name,
        "devices": cluster.num_devices,
        "layers": len(lg.layers),
        "load_s": round(load_s, 2),
        "plan_s": round(statistics.median(times), 2),
        "error": error,
        "objective_s": p.solver.objective if p is not None and not error else None,
    }
    if p is not None and not error:
        row |= {
            "status": p.solver.status,
            "gap": p.solver.gap or 0.0,
            "stages": len(p.stages),
            "samples_per_s": round(p.predicted.throughput_samples_per_s, 2),
            "best_baseline": min(
                (b for b in p.baselines if b.fits), key=lambda b: b.iteration_ms
            ).strategy,
            # closed form against closed form (the baselines' figures are closed-form)
            "over_best_baseline": round(
                min(b.iteration_ms for b in p.baselines if b.fits)
                / p.predicted.analytic_iteration_ms,
                3,
            ),
        }
    return row


def _line(row: dict) -> str:
    if row["error"]:
        return (f"| {row['model']} | {row['cluster']} | {row['devices']} | {row['layers']} "
                f"| {row['plan_s']:.2f} | {row['error']} | | | |")  # fmt: skip
    return (
        f"| {row['model']} | {row['cluster']} | {row['devices']} | {row['layers']} "
        f"| {row['plan_s']:.2f} | {row['status']} | {row['gap']:.2%} | {row['stages']} "
        f"| {row['samples_per_s']:,.2f} ({row['over_best_baseline']:.2f}x {row['best_baseline']}) |"
    )


HEADER = (
    "| model | cluster | devices | layers | plan s (median) | status | gap | stages "
    "| samples/s simulated (closed form over the best baseline's) |\n"
    "|---|---|---|---|---|---|---|---|---|"
)


def summary(rows: list[dict]) -> str:
    """Goals of issue 15 per size band, and the worst cells by time and by gap."""
    ok = [r for r in rows if not r["error"]]
    lines = []
    bands = (("<= 16", 0, 16, 10.0), ("17-64", 17, 64, 60.0), ("128", 65, 10**9, None))
    for label, lo, hi, goal_s in bands:
        band = [r for r in ok if lo <= r["devices"] <= hi]
        if not band:
            continue
        met_time = sum(1 for r in band if goal_s is None or r["plan_s"] <= goal_s)
        met_gap = sum(1 for r in band if r["gap"] <= 0.01)
        lines.append(
            f"- {label} devices: {len(band)} cells, median "
            f"{statistics.median(r['plan_s'] for r in band):.1f} s, max "
            f"{max(r['plan_s'] for r in band):.1f} s"
            + (f"; {met_time} within {goal_s:.0f} s" if goal_s else "")
            + f"; {met_gap} with gap <= 1%"
        )
    slow = sorted(ok, key=lambda r: -r["plan_s"])[:5]
    wide = sorted(ok, key=lambda r: -r["gap"])[:5]
    lines.append(
        "- slowest: "
        + "; ".join(f"{r['model']} on {r['cluster']} {r['plan_s']:.1f} s" for r in slow)
    )
    lines.append(
        "- widest gap: " + "; ".join(f"{r['model']} on {r['cluster']} {r['gap']:.1%}" for r in wide)
    )
    unfit = [r for r in rows if r["error"]]
    if unfit:
        lines.append(
            f"- {len(unfit)} cells do not fit: "
            + "; ".join(f"{r['model']} on {r['cluster']}" for r in unfit)
        )
    return "\n".join(lines)
