"""Load time and peak memory of the 1.6 B-parameter GPT graph (issue 2).

Each measurement runs in a fresh process (so peak RSS is the load's own), five times;
the medians are reported next to the floor every loader pays: `onnx.load` plus ONNX
shape inference alone, measured in the same run (the ratio is what to compare across
machines, the noisy shared box included).

    python bench/bench_load.py [--model samples/models/gpt_xl.onnx] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PIPEPLAN = """
import json, resource, sys, time
t = time.perf_counter()
from planner.graph.inspect import load_model
from planner.graph.shapes import ShapeBindings
mg, lg = load_model(sys.argv[1], ShapeBindings(batch=1))
seconds = time.perf_counter() - t
print(json.dumps({"seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "nodes": mg.graph.number_of_nodes(), "params": mg.param_count, "layers": len(lg.layers),
                  "unknown_shapes": sum(1 for t in mg.tensors.values() if t.shape is None)}))
"""

FLOOR = """
import json, resource, sys, time
t = time.perf_counter()
import onnx
m = onnx.load(sys.argv[1], load_external_data=False)
for vi in m.graph.input:
    d = vi.type.tensor_type.shape.dim[0]
    if d.HasField("dim_param"): d.dim_value = 1
onnx.shape_inference.infer_shapes(m, data_prop=True)
seconds = time.perf_counter() - t
print(json.dumps({"seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run(code: str, model: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", code, model], capture_output=True, text=True, cwd=ROOT, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "samples/models/gpt_xl.onnx"))
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    ours, floor = [], []
    for _ in range(args.repeat):  # interleaved, so drift on a shared machine hits both
        ours.append(run(PIPEPLAN, args.model))
        floor.append(run(FLOOR, args.model))
    med = lambda rows, key: statistics.median(r[key] for r in rows)  # noqa: E731
    result = {
        "model": args.model,
        "nodes": ours[0]["nodes"],
        "params": ours[0]["params"],
        "layers": ours[0]["layers"],
        "unknown_shapes": ours[0]["unknown_shapes"],
        "load_seconds_median": round(med(ours, "seconds"), 3),
        "peak_rss_mb_median": round(med(ours, "peak_rss_mb"), 1),
        "floor_seconds_median": round(med(floor, "seconds"), 3),
        "floor_peak_rss_mb_median": round(med(floor, "peak_rss_mb"), 1),
        "ratio_to_floor": round(med(ours, "seconds") / med(floor, "seconds"), 2),
        "goal": "load + all shapes < 3 s and < 500 MB",
        "met": med(ours, "seconds") < 3 and med(ours, "peak_rss_mb") < 500,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
