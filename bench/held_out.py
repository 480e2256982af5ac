"""`bench/fidelity.py --held-out`: predict each sample from a calibration that never saw it.

On this machine, OMP_NUM_THREADS=1 for every process:

1. one base calibration: `pipeplan calibrate --pipeline 2` with no `--model`
   (microbenchmarks, the family sweeps, the link, and the calibrator's own two networks
   with their pipeline probes, which fit the in-model factor); then per sample one
   `calibrate --extend BASE --model SAMPLE --pipeline 2` (its operators and its probe);
2. per sample, three profiles (`runners.calibrate.merge.merge_profiles`):
   * `microbench`: the base alone (held out: no sample's operators or probe),
   * `others`: the base with the *other* samples' extensions (held out: the sample's own
     operators and probe are not in it, the others' are),
   * `in-sample`: the base with every extension, the sample's own included;
3. per sample and profile: a 2-device cluster of that profile, `plan --stages 2 --schedule
   1f1b` (training) and `plan --stages 2 --objective latency` (inference of one
   micro-batch), export, `pipeplan run` (training: the median step after the first;
   inference `--mode infer`: the median request), `--runs` times, alternating; bundles with
   the same split run once and serve every profile that chose it;
4. per sample and profile: predicted against measured iteration and latency, absolute
   percentage errors and their mean (MAPE) per profile.

The `ilp` against `params` comparison (`fidelity.py`'s step 5) runs on the `microbench`
profile: the held-out planner's choices, measured.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import sys
from pathlib import Path

VARIANTS = ("microbench", "others", "in-sample")
NOTE = "measured by bench/fidelity.py --held-out on a 2-core cloud VM (AMD EPYC, KVM), 1 thread"


def calibrations(fid, out: Path, samples: list[str], base: str | None, ext_dir: str | None):
    """The base profile and one extension per sample (measured, or reused from files)."""
    base_path = Path(base) if base else out / "base.yaml"
    if not base:
        fid.pipeplan(
            "calibrate", "--pipeline", "2", "--note", NOTE, "-o", str(base_path), timeout=3600
        )
    extensions = {}
    for name in samples:
        path = Path(ext_dir) / f"ext_{name}.yaml" if ext_dir else out / f"ext_{name}.yaml"
        if not ext_dir:
            batch, _ = fid.SAMPLES[name]
            fid.pipeplan(
                "calibrate", "--extend", str(base_path), "--model", str(fid.MODELS / f"{name}.onnx"),
                "--batch", str(batch), "--pipeline", "2", "-o", str(path), timeout=3600,
            )  # fmt: skip
        extensions[name] = path
    return base_path, extensions


def variant_profiles(out: Path, samples: list[str], base: Path, extensions: dict[str, Path]):
    """sample -> variant -> profile path (`merge_profiles` of the base and extensions)."""
    from cost.profile import load_profile, save_profile
    from runners.calibrate.merge import merge_profiles

    b = load_profile(base)
    ext = {name: load_profile(p) for name, p in extensions.items()}
    paths: dict[str, dict[str, Path]] = {}
    every = out / "profile_in_sample.yaml"
    save_profile(merge_profiles(b, list(ext.values())), every)
    for name in samples:
        others = out / f"profile_without_{name}.yaml"
        save_profile(merge_profiles(b, [p for k, p in ext.items() if k != name]), others)
        paths[name] = {"microbench": base, "others": others, "in-sample": every}
    return paths


def _plan(fid, name: str, cluster: Path, out: Path, tag: str, latency: bool) -> dict:
    batch, m = fid.SAMPLES[name]
    plan_file = out / f"{name}_{tag}_{'latency' if latency else 'train'}_plan.json"
    extra = (
        ["--objective", "latency"] if latency else ["--microbatches", str(m), "--schedule", "1f1b"]
    )
    fid.pipeplan(
        "plan", str(fid.MODELS / f"{name}.onnx"), "--cluster", str(cluster), "--batch", str(batch),
        "--stages", "2", *extra, "-o", str(plan_file),
    )  # fmt: skip
    return json.loads(plan_file.read_text())


def _export(fid, name: str, plan: dict, out: Path, key: str) -> Path:
    bundle = out / f"bundle_{key}"
    if not bundle.exists():
        plan_file = out / f"plan_{key}.json"
        plan_file.write_text(json.dumps(plan))
        fid.pipeplan("export", str(fid.MODELS / f"{name}.onnx"), str(plan_file), "-o", str(bundle))
    return bundle


def _run(fid, bundle: Path, steps: int, out: Path, tag: str, infer: bool) -> dict:
    """One run: its median step (ms) and each stage's mean F and B+W action (ms)."""
    from runners.calibrate.probe import action_means

    report, trace = out / f"{tag}_report.json", out / f"{tag}_trace.json"
    mode = ["--mode", "infer"] if infer else []
    fid.pipeplan(
        "run", str(bundle), "--steps", str(steps), *mode, "--report", str(report), "--trace", str(trace)
    )  # fmt: skip
    rep = json.loads(report.read_text())
    stages = {
        s: [1e3 * ops.get("F", 0.0), 1e3 * (ops.get("B", 0.0) + ops.get("W", 0.0))]
        for s, ops in action_means(trace, rep["microbatches"]).items()
    }
    trace.unlink()
    return {"iteration_ms": rep["measured"]["iteration_ms"], "stages": stages}


def held_out(fid, args, out: Path) -> dict:
    samples = args.samples
    base, extensions = calibrations(fid, out, samples, args.base, args.extensions)
    profiles = variant_profiles(out, samples, base, extensions)
    plans: dict[tuple[str, str, str], dict] = {}  # (sample, variant, mode) -> plan
    bundles: dict[tuple[str, str, str], str] = {}  # -> split key
    for name in samples:
        for variant in VARIANTS:
            cluster = fid.write_cluster(
                out / f"cluster_{name}_{variant}.yaml", profiles[name][variant]
            )
            for mode in ("train", "infer"):
                plan = _plan(fid, name, cluster, out, variant, latency=mode == "infer")
                split = "_".join(f"{a}-{b}" for a, b in fid.split_of(plan))
                key = f"{name}_{mode}_{hashlib.sha256(split.encode()).hexdigest()[:8]}"
                plans[(name, variant, mode)] = plan
                bundles[(name, variant, mode)] = key
                _export(fid, name, plan, out, key)
    measured: dict[str, list[dict]] = {key: [] for key in set(bundles.values())}
    for r in range(args.runs):
        for key in sorted(measured):
            infer = "_infer_" in key
            measured[key].append(
                _run(fid, out / f"bundle_{key}", args.steps, out, f"{key}_run{r}", infer)
            )
    models: dict[str, dict] = {}
    for name in samples:
        row: dict = {}
        for variant in VARIANTS:
            cell = {}
            for mode in ("train", "infer"):
                plan = plans[(name, variant, mode)]
                runs = measured[bundles[(name, variant, mode)]]
                meas = statistics.median(x["iteration_ms"] for x in runs)
                pred = plan["predicted"]["iteration_ms"]
                cell[mode] = {
                    "split": fid.split_of(plan),
                    "predicted_ms": round(pred, 3),
                    "measured_ms": round(meas, 3),
                    "measured_ms_runs": [round(x["iteration_ms"], 3) for x in runs],
                    "ape_percent": round(fid.ape(pred, meas), 1),
                    "stages_predicted_fwd_bwd_ms": [
                        [round(st["forward_ms"], 3), round(st["backward_ms"], 3)]
                        for st in plan["stages"]
                    ],
                    "stages_measured_fwd_bwd_ms": [
                        [
                            round(statistics.median(x["stages"][i][k] for x in runs), 3)
                            for k in (0, 1)
                        ]
                        for i in sorted(runs[0]["stages"])
                    ],
                    "pricing_share": plan.get("pricing", {}).get("share"),
                }
            row[variant] = cell
        models[name] = row
    mape = {
        variant: {
            mode: round(
                statistics.mean(models[n][variant][mode]["ape_percent"] for n in samples), 1
            )
            for mode in ("train", "infer")
        }
        for variant in VARIANTS
    }
    from cost.profile import load_profile

    fit = load_profile(profiles[samples[0]]["in-sample"]).in_model
    return {
        "command": "python bench/fidelity.py " + " ".join(sys.argv[1:]),
        "base": str(base),
        "extensions": {k: str(v) for k, v in extensions.items()},
        "in_model_in_sample": fit.model_dump() if fit is not None else None,
        "in_model_microbench": (lambda f: f.model_dump() if f else None)(
            load_profile(base).in_model
        ),
        "runs": args.runs,
        "steps": args.steps,
        "models": models,
        "iteration_mape_percent": mape,
        "goal_held_out_le_25": mape["microbench"]["train"] <= 25 and mape["others"]["train"] <= 25,
        "goal_in_sample_le_10": mape["in-sample"]["train"] <= 10,
    }
