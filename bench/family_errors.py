"""Where does an uncalibrated prediction go wrong? Operator family by family (issue 18).

For each sample model (micro-batch sizes of `bench/fidelity.py`), every distinct operator
(signature) is timed in torch eager on this host, one thread, forward and backward, as the
calibrator times operators (`runners.calibrate.operators.OpTimer`: the converted
single-node module, call overheads subtracted), and priced by the cost model with the
device figures of a profile *without* its operator table (what a model the calibration
never saw gets: `--profile`, default `samples/clusters/cpu_profile.yaml`), and, when the
profile has family fits (`cost.families`), with them. Per family (`cost.families.family_of`)
and model: the measured and predicted time of all its operators (each signature times the
number of nodes that share it), their ratio, and the family's share of the measured time.

    python bench/family_errors.py [--models inception,resnet,gpt,mlp] [--profile P] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SAMPLES = {"mlp": 256, "gpt": 8, "resnet": 16, "inception": 16}


def held_out_device(profile_path: Path, families: bool):
    """The profile's device without its measured operators (and, unless `families`,
    without its family fits): how the cost model sees a model it never calibrated on."""
    import yaml

    from cost.cluster import cluster_from_dict
    from cost.files import write_text_atomic

    data = yaml.safe_load(profile_path.read_text())
    data["ops"] = {}
    if not families:
        data.pop("families", None)
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"held_out_{os.getpid()}_{int(families)}.yaml"
    write_text_atomic(tmp, yaml.safe_dump(data))
    cluster = cluster_from_dict(
        {"name": "one", "nodes": [{"name": "n0", "devices": [{"profile": str(tmp)}]}]}
    )
    return cluster.device("n0.0")


def measure(model: str, devices: dict) -> dict:
    import torch

    from cost.families import family_of
    from cost.roofline import backward_seconds, forward_seconds
    from planner.graph.load import load_graph
    from planner.graph.shapes import ShapeBindings
    from runners.calibrate.operators import OpTimer
    from runners.calibrate.timing import Sizes, Timer

    torch.set_num_threads(1)
    mg = load_graph(
        ROOT / "samples" / "models" / f"{model}.onnx", ShapeBindings(batch=SAMPLES[model])
    )
    timer = OpTimer(Timer(torch.device("cpu"), Sizes.full()))
    timer.measure_overhead()
    first: dict[str, str] = {}
    count: Counter = Counter()
    for n in mg.op_nodes:
        if mg.cost(n).kind == "free":
            continue
        sig = mg.graph.nodes[n]["signature"]
        first.setdefault(sig, n)
        count[sig] += 1
    rows: dict[str, dict] = defaultdict(lambda: defaultdict(float))
    for sig, node in first.items():
        fam = family_of(sig) or "other"
        try:
            fwd, bwd = timer.time_node(mg, node)
        except Exception as exc:  # noqa: BLE001 - an op the converter cannot time alone
            print(f"  skipped {sig[:60]}: {type(exc).__name__}", file=sys.stderr)
            continue
        k = count[sig]
        r = rows[fam]
        r["ops"] += k
        r["measured_fwd_ms"] += 1e3 * k * fwd
        r["measured_bwd_ms"] += 1e3 * k * bwd
        cost = mg.cost(node)
        for label, device in devices.items():
            r[f"{label}_fwd_ms"] += 1e3 * k * forward_seconds(cost, device, "fp32", sig)
            r[f"{label}_bwd_ms"] += 1e3 * k * backward_seconds(cost, device, "fp32", sig)
    return {fam: dict(v) for fam, v in rows.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="inception,resnet,gpt,mlp")
    ap.add_argument("--profile", type=Path, default=ROOT / "samples/clusters/cpu_profile.yaml")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    import yaml

    has_families = "families" in (yaml.safe_load(args.profile.read_text()) or {})
    devices = {"roofline": held_out_device(args.profile, families=False)}
    if has_families:
        devices["families"] = held_out_device(args.profile, families=True)
    out = {}
    labels = list(devices)
    head = " | ".join(f"{x} fwd / bwd (ratio)" for x in labels)
    print(f"| model | family | ops | measured fwd / bwd ms | {head} | share |")
    print("|---|---|---|---|" + "---|" * len(labels) + "---|")
    for model in args.models.split(","):
        rows = measure(model, devices)
        out[model] = rows
        total = sum(r["measured_fwd_ms"] + r["measured_bwd_ms"] for r in rows.values())
        for fam, r in sorted(
            rows.items(), key=lambda kv: -(kv[1]["measured_fwd_ms"] + kv[1]["measured_bwd_ms"])
        ):
            measured = r["measured_fwd_ms"] + r["measured_bwd_ms"]
            cells = []
            for x in labels:
                pred = r[f"{x}_fwd_ms"] + r[f"{x}_bwd_ms"]
                cells.append(
                    f"{r[f'{x}_fwd_ms']:.3f} / {r[f'{x}_bwd_ms']:.3f} ({pred / measured:.2f})"
                    if measured
                    else "-"
                )
            print(
                f"| {model} | {fam} | {int(r['ops'])} | {r['measured_fwd_ms']:.3f} / "
                f"{r['measured_bwd_ms']:.3f} | {' | '.join(cells)} | {measured / total:.0%} |",
                flush=True,
            )
        for x in labels:
            pred = sum(r[f"{x}_fwd_ms"] + r[f"{x}_bwd_ms"] for r in rows.values())
            print(f"| {model} | **all** | | {total:.3f} | {x}: {pred:.3f} ({pred / total:.2f}) |")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
