"""pipeplan's demo on the bundled GPT sample: each step is a real `pipeplan` command.

    bash demo.sh            # sets up .venv, then runs this
    python -m samples.demo  # inside the venv

Steps: inspect the model; plan it on a heterogeneous GPU cluster and simulate that plan;
plan it on 16 H100s, where replicas of a short pipeline beat one long pipeline;
plan it for two local CPU processes, export the stage models, run them with torchrun
(training, gradients checked against one process) and compare measured with predicted;
ask what more GPUs would buy. Outputs go to `out/demo/`.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "out" / "demo"
MODEL = "samples/models/gpt.onnx"


def step(title: str, *args: str) -> None:
    print(f"\n=== {title}\n$ pipeplan {shlex.join(args)}", flush=True)
    result = subprocess.run([sys.executable, "-m", "runners.cli", *args], cwd=ROOT)
    if result.returncode != 0:
        sys.exit(f"demo step failed ({title}): exit {result.returncode}")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    rel = OUT.relative_to(ROOT)
    step("1. inspect: layers, FLOPs, parameters, activations", "inspect", MODEL, "--batch", "8")
    step("2. the cluster: two nodes, three GPU kinds", "cluster", "samples/clusters/hetero.yaml")
    step(
        "3. plan for the heterogeneous GPUs (ILP, proven optimal under the cost model)",
        "plan",
        MODEL,
        "--cluster",
        "samples/clusters/hetero.yaml",
        "--batch",
        "1024",
        "-o",
        str(rel / "plan_hetero.json"),
    )
    step(
        "4. simulate it: timeline and Chrome trace",
        "simulate",
        str(rel / "plan_hetero.json"),
        "--png",
        str(rel / "timeline_hetero.png"),
        "--trace",
        str(rel / "trace_hetero.json"),
    )
    step(
        "5. plan it on 16 H100s: data-parallel replicas x pipeline stages, chosen together",
        "plan",
        MODEL,
        "--cluster",
        "samples/clusters/h100x16.yaml",
        "--batch",
        "8",
        "-o",
        str(rel / "plan_h100x16.json"),
    )
    step(
        "6. plan for two local CPU processes (what the runner executes)",
        "plan",
        MODEL,
        "--cluster",
        "samples/clusters/cpu2.yaml",
        "--batch",
        "8",
        "--stages",
        "2",
        "-o",
        str(rel / "plan_cpu2.json"),
    )
    bundle = rel / "bundle"
    step(
        "7. export one ONNX per stage plus a manifest",
        "export",
        MODEL,
        str(rel / "plan_cpu2.json"),
        "-o",
        str(bundle),
        "--force",
    )
    step(
        "8. run it on two processes (torchrun, gloo): train, check gradients, measure",
        "run",
        str(bundle),
        "--steps",
        "10",
        "--check",
        "--report",
        str(rel / "run_report.json"),
        "--trace",
        str(rel / "run_trace.json"),
    )
    step(
        "9. what if: two or four more A100s, or H100s instead of the V100s",
        "whatif",
        MODEL,
        "--cluster",
        "samples/clusters/mixed.yaml",
        "--batch",
        "256",
        "--add",
        "A100-80GB:2,4",
        "--replace",
        "V100-32GB=H100-80GB",
        "--png",
        str(rel / "whatif.png"),
    )
    print(f"\ndemo done: plans in {rel}/")


if __name__ == "__main__":
    main()
