"""pipeplan's runner against torch.distributed.pipelining (issue 6).

The same torch model (`samples.zoo.MLP`, width 1024, 8 Linear layers), the same 2-stage
split, the same schedule (1F1B, 8 micro-batches of 64), Adam, gloo on two local
processes with OMP_NUM_THREADS=1 each:

* pipeplan: the model is exported with `torch.onnx.export`, planned on
  `samples/clusters/cpu2.yaml` with `--stages 2 --schedule 1f1b`, exported to a bundle and
  run by `pipeplan run` (our ONNX-to-torch converter, our schedule executor);
* peer: `bench/pipelining_worker.py`, torch's own `PipelineStage` + `Schedule1F1B`, with the
  split at the same module boundary as pipeplan's plan.

Runs alternate (pipeplan, peer) `--repeat` times; each run does `--steps` iterations and
reports the median step after the first. Printed: both medians, the throughput ratio
(pipeplan / torch; goal >= 1.0) and pipeplan's measured against predicted iteration time.

    python bench/bench_runner.py [--repeat 5] [--steps 10]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def export_model(path: Path, width: int, depth: int, batch: int) -> None:
    import torch

    from samples import zoo

    torch.manual_seed(0)
    model = zoo.MLP(d_in=width, d_hidden=width, d_out=10, n_layers=depth).eval()
    torch.onnx.export(
        model,
        (torch.randn(batch, width),),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["x"],
        output_names=["logits"],
        dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--microbatches", type=int, default=8)
    args = parser.parse_args()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cli = [sys.executable, "-m", "runners.cli"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = tmp / "mlp.onnx"
        export_model(model, args.width, args.depth, args.batch)
        plan_file, bundle = tmp / "plan.json", tmp / "bundle"
        subprocess.run(
            [
                *cli,
                "plan",
                str(model),
                "--cluster",
                str(ROOT / "samples/clusters/cpu2.yaml"),
                "--batch",
                str(args.batch),
                "--stages",
                "2",
                "--schedule",
                "1f1b",
                "-m",
                str(args.microbatches),
                "-o",
                str(plan_file),
            ],
            check=True,
            env=env,
            capture_output=True,
            cwd=ROOT,
        )
        plan = json.loads(plan_file.read_text())
        split = len(
            plan["stages"][0]["layers"]
        )  # MLP layers are one module each: layers.i / acts.i
        subprocess.run(
            [*cli, "export", str(model), str(plan_file), "-o", str(bundle)],
            check=True,
            env=env,
            capture_output=True,
            cwd=ROOT,
        )
        ours, theirs, predicted = [], [], plan["predicted"]["iteration_ms"]
        for _ in range(args.repeat):
            report = tmp / "r.json"
            subprocess.run(
                [*cli, "run", str(bundle), "--steps", str(args.steps), "--report", str(report)],
                check=True,
                env=env,
                capture_output=True,
                cwd=ROOT,
            )
            ours.append(json.loads(report.read_text())["measured"]["iteration_ms"])
            times = tmp / "t.json"
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "torch.distributed.run",
                    "--standalone",
                    "--nproc-per-node",
                    "2",
                    str(ROOT / "bench" / "pipelining_worker.py"),
                    "--split",
                    str(split),
                    "--width",
                    str(args.width),
                    "--depth",
                    str(args.depth),
                    "--batch",
                    str(args.batch),
                    "--microbatches",
                    str(args.microbatches),
                    "--steps",
                    str(args.steps),
                    "--out",
                    str(times),
                ],
                check=True,
                env=env,
                capture_output=True,
                cwd=ROOT,
            )
            theirs.append(statistics.median(json.loads(times.read_text())["step_ms"][1:]))
    ours_ms, theirs_ms = statistics.median(ours), statistics.median(theirs)
    print(
        json.dumps(
            {
                "model": f"MLP width {args.width}, {args.depth} Linear layers",
                "split": f"stage 0 = first {split} modules",
                "microbatch_size": args.batch,
                "microbatches": args.microbatches,
                "runs": args.repeat,
                "pipeplan_iteration_ms_runs": [round(x, 2) for x in ours],
                "torch_pipelining_iteration_ms_runs": [round(x, 2) for x in theirs],
                "pipeplan_iteration_ms_median": round(ours_ms, 2),
                "torch_pipelining_iteration_ms_median": round(theirs_ms, 2),
                "throughput_ratio_pipeplan_over_torch": round(theirs_ms / ours_ms, 3),
                "goal": ">= 1.0",
                "pipeplan_predicted_iteration_ms": round(predicted, 2),
                "measured_over_predicted": round(ours_ms / predicted, 3),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
