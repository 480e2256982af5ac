"""How well does a calibrated plan predict the runner? (issue 8)

On this machine, with OMP_NUM_THREADS=1 for every process:

1. `pipeplan calibrate` (1 thread) with `--model` for each sample (mlp, gpt, resnet,
   inception; the first call measures the device and the link, the others `--extend` the
   profile with their operators), with `--pipeline 2` (default): each model also runs as
   a 2-stage `params` split under the runner, which scales its operators to the stage
   times measured there and fits the link's latency under load (`runners.calibrate.probe`). The
   plans measured below are `ilp` splits: where they equal the probe's `params` split,
   the stage times are in-sample; the iteration time never is fitted per model;
2. a 2-device cluster made of the profile (`devices: [{profile: P, count: 2}]`, `link:
   {profile: P}`);
3. per sample: `pipeplan plan --stages 2 --schedule 1f1b`, `pipeplan export`, then
   `pipeplan run --steps S` (train, 2 ranks, gloo), `--runs` times, runs alternating
   between samples;
4. per sample: predicted against measured stage forward+backward time per micro-batch,
   twice: each stage *alone* (this process times the stage's converted module as the
   calibrator times a model: the cost model's own accuracy on a cut it never saw) and *in
   the runner* (the median F and B+W action of each stage in the run's trace, the first
   step left out); and the iteration time (the run report's median step after the
   first); medians over the runs (alone and runner runs alternate); absolute percentage
   errors and their means (MAPE). Stage times in the runner are the mean F and B+W
   actions (an iteration is their sum; the first step left out), as the probe measures. Goal: MAPE of the iteration time <= 15%.
5. `ilp` against `params`: of the samples whose two splits differ on that cluster, the one
   with the largest predicted gain (if none differ: a cluster whose second device has
   little memory); both bundles run `--ab-runs` times, alternating; median throughput.

Prints one JSON object (and writes it to OUT/fidelity.json).

    python bench/fidelity.py [--runs 3] [--steps 12] [--ab-runs 5] [--out DIR]
                             [--profile PROFILE.yaml]   # reuse a calibration
    python bench/fidelity.py --held-out [--base B.yaml --extensions DIR]  # bench/held_out.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "samples" / "models"

#: sample -> (micro-batch size, micro-batches): a few ms of compute per stage each.
SAMPLES = {
    "mlp": (256, 8),
    "gpt": (8, 8),
    "resnet": (16, 8),
    "inception": (16, 8),
}


def env() -> dict:
    e = dict(os.environ)
    e["OMP_NUM_THREADS"] = "1"
    e["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), e.get("PYTHONPATH")) if p)
    return e


def pipeplan(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "runners.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env(),
        timeout=timeout,
    )
    if result.returncode != 0:
        raise SystemExit(f"pipeplan {' '.join(args)} failed:\n{result.stderr[-2000:]}")
    return result


def calibrate(profile: Path, samples: list[str], pipeline: int) -> float:
    start = time.perf_counter()
    for i, name in enumerate(samples):
        batch, _ = SAMPLES[name]
        extra = [] if i == 0 else ["--extend", str(profile)]
        pipeplan(
            "calibrate",
            "--model",
            str(MODELS / f"{name}.onnx"),
            "--batch",
            str(batch),
            "--note",
            "measured by bench/fidelity.py on a 2-core cloud VM (AMD EPYC, KVM), 1 thread",
            "--pipeline",
            str(pipeline),
            *extra,
            "-o",
            str(profile),
        )
    return time.perf_counter() - start


def write_cluster(path: Path, profile: Path, second: dict | None = None) -> Path:
    import yaml

    devices = (
        [{"profile": str(profile), "count": 2}]
        if second is None
        else [{"profile": str(profile)}, {"profile": str(profile), **second}]
    )
    data = {
        "name": path.stem,
        "nodes": [{"name": "n0", "devices": devices, "link": {"profile": str(profile)}}],
    }
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def plan_and_export(name: str, cluster: Path, out: Path, strategy: str = "ilp") -> dict:
    batch, m = SAMPLES[name]
    plan_file = out / f"{name}_{strategy}_plan.json"
    pipeplan(
        "plan",
        str(MODELS / f"{name}.onnx"),
        "--cluster",
        str(cluster),
        "--batch",
        str(batch),
        "--stages",
        "2",
        "--microbatches",
        str(m),
        "--schedule",
        "1f1b",
        "--strategy",
        strategy,
        "-o",
        str(plan_file),
    )
    bundle = out / f"{name}_{strategy}_bundle"
    pipeplan("export", str(MODELS / f"{name}.onnx"), str(plan_file), "-o", str(bundle), "--force")
    return {"plan": json.loads(plan_file.read_text()), "bundle": bundle}


def stage_alone(bundle: Path) -> dict[int, dict[str, float]]:
    """Each stage of a bundle timed alone in this process, as the calibrator times a model:
    forward under autograd, backward to the stage's float inputs from other stages and its
    parameters, medians after warm-up (ms). No second process, no transfers, no optimizer."""
    import torch

    from exporters.manifest import Manifest
    from runners.calibrate.operators import OpTimer
    from runners.calibrate.timing import Sizes, Timer
    from runners.data import DataSource
    from runners.onnx_to_torch import convert

    torch.set_num_threads(1)
    manifest = Manifest.model_validate_json((bundle / "manifest.json").read_text())
    data = DataSource(manifest, bundle)
    timer = OpTimer(Timer(torch.device("cpu"), Sizes.full()))
    out = {}
    for st in manifest.stages:
        gm = convert(str(bundle / st.file), seed=0)
        graph_inputs = data.inputs(0, 0)
        by_name, leaves = {}, []
        for t in st.inputs:
            if t.source == "graph":
                by_name[t.name] = graph_inputs[t.name]
            else:
                value = torch.randn(tuple(t.shape or []))
                by_name[t.name] = value.requires_grad_(True)
                leaves.append(value)
        fwd, bwd = timer._time(gm, [by_name[n] for n in gm.input_names], leaves)
        out[st.index] = {"forward_ms": 1e3 * fwd, "backward_ms": 1e3 * (bwd or 0.0)}
    return out


def run_once(bundle: Path, steps: int, out: Path, tag: str) -> dict:
    report, trace = out / f"{tag}_report.json", out / f"{tag}_trace.json"
    pipeplan(
        "run", str(bundle), "--steps", str(steps), "--report", str(report), "--trace", str(trace)
    )
    rep = json.loads(report.read_text())
    from runners.calibrate.probe import action_means

    per_stage = {
        s: {
            "forward_ms": 1e3 * ops["F"],
            "backward_ms": 1e3 * (ops.get("B", 0.0) + ops.get("W", 0.0)),
        }
        for s, ops in action_means(trace, rep["microbatches"]).items()
    }
    return {
        "iteration_ms": rep["measured"]["iteration_ms"],
        "throughput": rep["measured"]["throughput_samples_per_s"],
        "per_stage": per_stage,
    }


def ape(predicted: float, measured: float) -> float:
    return 100.0 * abs(predicted - measured) / measured if measured > 0 else float("nan")


def split_of(plan: dict) -> list[tuple[str, str]]:
    return [(s["layers"][0], s["layers"][-1]) for s in plan["stages"]]


def ilp_vs_params(args, out: Path, profile: Path, cluster: Path, plans: dict) -> dict:
    """Of the samples whose `ilp` and `params` splits differ on `cluster`, the one with the
    largest predicted gain (if none differ: a cluster whose second device has little
    memory), both bundles measured `--ab-runs` times, alternating; median throughput."""
    ab: dict = {"cluster": str(cluster.name)}
    candidates = []
    for name in args.samples:
        alt = plan_and_export(name, cluster, out, strategy="params")
        ilp = plans[name]
        if split_of(alt["plan"]) == split_of(ilp["plan"]):
            ab.setdefault("same_split", []).append(name)
            continue
        gain = (
            ilp["plan"]["predicted"]["throughput_samples_per_s"]
            / alt["plan"]["predicted"]["throughput_samples_per_s"]
        )
        ab.setdefault("predicted_gain", {})[name] = round(gain, 3)
        candidates.append((gain, name, ilp, alt))
    chosen = max(candidates, key=lambda c: c[0])[1:] if candidates else None
    if chosen is None:  # make the devices differ: the second one with little memory
        small = write_cluster(
            out / "cpu2_small.yaml", profile, {"memory_GB": 0.05, "name": "CPU small memory"}
        )
        ab["cluster"] = small.name
        for name in args.samples:
            ilp = plan_and_export(name, small, out, strategy="ilp")
            alt = plan_and_export(name, small, out, strategy="params")
            if split_of(alt["plan"]) != split_of(ilp["plan"]):
                chosen = (name, ilp, alt)
                break
    if chosen is not None and args.ab_runs > 0:
        name, ilp, alt = chosen
        measured: dict[str, list[dict]] = {"ilp": [], "params": []}
        for r in range(args.ab_runs):
            for strategy, p in (("ilp", ilp), ("params", alt)):
                measured[strategy].append(
                    run_once(p["bundle"], args.steps, out, f"ab_{name}_{strategy}{r}")
                )
        med = {k: statistics.median(x["throughput"] for x in v) for k, v in measured.items()}
        ab |= {
            "sample": name,
            "splits": {"ilp": split_of(ilp["plan"]), "params": split_of(alt["plan"])},
            "predicted_samples_per_s": {
                "ilp": round(ilp["plan"]["predicted"]["throughput_samples_per_s"], 1),
                "params": round(alt["plan"]["predicted"]["throughput_samples_per_s"], 1),
            },
            "measured_samples_per_s_runs": {
                k: [round(x["throughput"], 1) for x in v] for k, v in measured.items()
            },
            "measured_samples_per_s_median": {k: round(v, 1) for k, v in med.items()},
            "measured_ilp_over_params": round(med["ilp"] / med["params"], 3),
        }

    return ab


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--ab-runs", type=int, default=5)
    parser.add_argument("--samples", nargs="+", default=list(SAMPLES), choices=list(SAMPLES))
    parser.add_argument("--profile", help="reuse this calibration profile (skip step 1)")
    parser.add_argument(
        "--pipeline",
        type=int,
        default=2,
        help="calibrate with `--pipeline N` (a probe run per model; 0: operators only)",
    )
    parser.add_argument("--out", help="keep plans, bundles, reports and the profile here")
    parser.add_argument(
        "--held-out",
        action="store_true",
        help="predict each sample from calibrations without it (bench/held_out.py)",
    )
    parser.add_argument("--base", help="--held-out: reuse this base calibration")
    parser.add_argument(
        "--extensions", help="--held-out: reuse DIR/ext_<sample>.yaml (each --extend of --base)"
    )
    args = parser.parse_args()
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="pipeplan-fidelity-"))
    out.mkdir(parents=True, exist_ok=True)
    if args.held_out:
        held_out_main(args, out)
        return

    profile = out / "cpu_profile.yaml"
    calibrate_s = None
    if args.profile:
        profile.write_text(Path(args.profile).read_text())
    else:
        calibrate_s = calibrate(profile, args.samples, args.pipeline)
    cluster = write_cluster(out / "cpu2_profile.yaml", profile)

    plans = {name: plan_and_export(name, cluster, out) for name in args.samples}
    runs: dict[str, list[dict]] = {name: [] for name in args.samples}
    alone: dict[str, list[dict]] = {name: [] for name in args.samples}
    for r in range(args.runs):
        for name in args.samples:
            runs[name].append(run_once(plans[name]["bundle"], args.steps, out, f"{name}_run{r}"))
            alone[name].append(stage_alone(plans[name]["bundle"]))

    models = {}
    for name in args.samples:
        plan = plans[name]["plan"]
        stages = []
        for st in plan["stages"]:
            i = st["index"]
            meas_f = statistics.median(x["per_stage"][i]["forward_ms"] for x in runs[name])
            meas_b = statistics.median(x["per_stage"][i]["backward_ms"] for x in runs[name])
            alone_fb = statistics.median(
                x[i]["forward_ms"] + x[i]["backward_ms"] for x in alone[name]
            )
            pred = st["forward_ms"] + st["backward_ms"]
            stages.append(
                {
                    "stage": i,
                    "layers": f"{st['layers'][0]} .. {st['layers'][-1]} ({len(st['layers'])})",
                    "predicted_fwd_bwd_ms": round(pred, 3),
                    "measured_fwd_bwd_ms": round(meas_f + meas_b, 3),
                    "predicted_fwd_ms": round(st["forward_ms"], 3),
                    "measured_fwd_ms": round(meas_f, 3),
                    "ape_percent": round(ape(pred, meas_f + meas_b), 1),
                    "alone_fwd_bwd_ms": round(alone_fb, 3),
                    "alone_ape_percent": round(ape(pred, alone_fb), 1),
                }
            )
        pred_it = plan["predicted"]["iteration_ms"]
        meas_it = statistics.median(x["iteration_ms"] for x in runs[name])
        batch, m = SAMPLES[name]
        models[name] = {
            "microbatch": batch,
            "microbatches": m,
            "stages": stages,
            "stage_mape_percent": round(statistics.mean(s["ape_percent"] for s in stages), 1),
            "stage_alone_mape_percent": round(
                statistics.mean(s["alone_ape_percent"] for s in stages), 1
            ),
            "predicted_iteration_ms": round(pred_it, 3),
            "measured_iteration_ms": round(meas_it, 3),
            "measured_iteration_ms_runs": [round(x["iteration_ms"], 3) for x in runs[name]],
            "iteration_ape_percent": round(ape(pred_it, meas_it), 1),
        }

    iteration_mape = statistics.mean(v["iteration_ape_percent"] for v in models.values())
    stage_mape = statistics.mean(s["ape_percent"] for v in models.values() for s in v["stages"])
    alone_mape = statistics.mean(
        s["alone_ape_percent"] for v in models.values() for s in v["stages"]
    )

    ab = ilp_vs_params(args, out, profile, cluster, plans)

    prof = json.loads(json.dumps(__import__("yaml").safe_load(profile.read_text())))
    result = {
        "command": "python bench/fidelity.py " + " ".join(sys.argv[1:]),
        "machine": f"{os.cpu_count()}-core VM, OMP_NUM_THREADS=1 per process",
        "calibrate_s": None if calibrate_s is None else round(calibrate_s, 1),
        "profile": {
            "device": prof["device"],
            "link": prof.get("link"),
            "ops": len(prof.get("ops", {})),
            "context_GBps_fwd_bwd": {
                k: [v.get("forward_GBps"), v.get("backward_GBps")]
                for k, v in prof.get("models", {}).items()
            },
            "pipeline_factors_fwd_bwd": {
                k: [v["pipeline"].get("forward_factor"), v["pipeline"].get("backward_factor")]
                for k, v in prof.get("models", {}).items()
                if isinstance(v.get("pipeline"), dict)
            },
            "link_pipeline_fit": prof.get("fit", {}).get("link", {}).get("pipeline"),
            "optimizer": prof.get("optimizer"),
        },
        "runs": args.runs,
        "steps": args.steps,
        "models": models,
        "stage_alone_mape_percent": round(alone_mape, 1),
        "stage_mape_percent": round(stage_mape, 1),
        "iteration_mape_percent": round(iteration_mape, 1),
        "goal_iteration_mape_le_15": iteration_mape <= 15.0,
        "ilp_vs_params": ab,
        "out": str(out),
    }
    text = json.dumps(result, indent=2)
    (out / "fidelity.json").write_text(text + "\n")
    print(text)


def held_out_main(args, out: Path) -> None:
    """`--held-out` (bench/held_out.py), then `ilp` against `params` on the profile without
    any sample (the held-out planner's choices, measured)."""
    import held_out

    result = held_out.held_out(sys.modules[__name__], args, out)
    profile = Path(result["base"])
    cluster = write_cluster(out / "cpu2_microbench.yaml", profile)
    plans = {name: plan_and_export(name, cluster, out) for name in args.samples}
    result["ilp_vs_params"] = ilp_vs_params(args, out, profile, cluster, plans)
    result["machine"] = f"{os.cpu_count()}-core VM, OMP_NUM_THREADS=1 per process"
    result["out"] = str(out)
    text = json.dumps(result, indent=2)
    (out / "held_out.json").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
