"""Plans of every sample model on every sample cluster, for behaviour-preserving changes.

    python scripts/plan_snapshot.py save DIR      # before a refactor
    python scripts/plan_snapshot.py compare DIR   # after it: identical, timings aside

Each case runs this checkout's command line (`python -m runners.cli`, or `planner.cli`
where that is where it lives, so it works on both sides of a layout change) and keeps its JSON output with the fields that measure time (solver seconds, what-if
seconds) removed. `compare` re-runs every case and prints the first differing path of
each case that differs; it exits 1 when any does. `--only SUBSTRING` limits the cases.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI_MODULE = "runners.cli" if (ROOT / "runners" / "cli").is_dir() else "planner.cli"
MODELS = {
    "mlp": ["--batch", "8"],
    "gpt": ["--batch", "8"],
    "resnet": ["--batch", "8"],
    "inception": ["--batch", "8"],
    "gpt_xl": ["--batch", "1"],
}
CLUSTERS = [
    "a100x4",
    "cpu2",
    "cpu2_profile",
    "cpu_profile",
    "h100x16",
    "h100x64",
    "hetero",
    "mixed",
]
VARIANTS = {
    "auto": ["--schedule", "auto"],
    "gpipe": ["--schedule", "gpipe"],
    "zb": ["--schedule", "zb"],
    "interleaved": ["--schedule", "interleaved"],
    "uniform": ["--strategy", "uniform"],
    "params": ["--strategy", "params"],
    "greedy": ["--strategy", "greedy"],
    "pipedream": ["--strategy", "dp"],
    "recompute": ["--recompute"],
    "latency": ["--objective", "latency"],
    "mauto": ["--microbatches", "auto"],
    "bf16sgd": ["--dtype", "bf16", "--optimizer", "sgd"],
    "stages2": ["--stages", "2"],
    "cbc": ["--solver", "cbc"],
    "m32": ["--microbatches", "32"],
}
#: (model, cluster) pairs that get every variant
VARIANT_PAIRS = [
    ("gpt", "hetero"),
    ("resnet", "cpu2_profile"),
    ("mlp", "mixed"),
    ("gpt_xl", "h100x16"),
]
#: keys, anywhere in the JSON, whose values measure time
TIMING = {"seconds", "build_seconds"}
#: strategy names renamed since (old -> new), compared under the new name
RENAMED = {"dp": "pipedream"}


def cases() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for model, shape in MODELS.items():
        out[f"inspect-{model}"] = ["inspect", f"samples/models/{model}.onnx", *shape, "--json"]
        for cluster in CLUSTERS:
            out[f"plan-{model}-{cluster}"] = _plan(model, cluster, shape)
    for model, cluster in VARIANT_PAIRS:
        for name, extra in VARIANTS.items():
            out[f"plan-{model}-{cluster}-{name}"] = _plan(model, cluster, MODELS[model], extra)
    out["whatif-gpt-mixed"] = [
        "whatif", "samples/models/gpt.onnx", "--cluster", "samples/clusters/mixed.yaml",
        "--batch", "256", "--add", "A100-80GB:2,4", "--replace", "V100-32GB=H100-80GB",
        "--no-cache", "--json",
    ]  # fmt: skip
    out["whatif-resnet-a100x4"] = [
        "whatif", "samples/models/resnet.onnx", "--cluster", "samples/clusters/a100x4.yaml",
        "--batch", "64", "--min-devices", "A100-80GB", "--no-cache", "--json",
    ]  # fmt: skip
    return out


def _plan(model: str, cluster: str, shape: list[str], extra: list[str] = ()) -> list[str]:
    return [
        "plan", f"samples/models/{model}.onnx", "--cluster", f"samples/clusters/{cluster}.yaml",
        *shape, *extra, "--json",
    ]  # fmt: skip


def run_case(args: list[str]) -> dict:
    result = subprocess.run(
        [sys.executable, "-m", CLI_MODULE, *args], capture_output=True, text=True, cwd=ROOT
    )
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines()
        return {"exit": result.returncode, "error": lines[-1] if lines else ""}
    # the JSON object starts at the first line that opens one (a native library may have
    # written a banner to stdout before it)
    lines = result.stdout.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.startswith("{")), 0)
    try:
        return strip(json.loads("".join(lines[start:])))
    except json.JSONDecodeError:
        return {"exit": 0, "unparsed_stdout": result.stdout[:2000], "stderr": result.stderr[-2000:]}


def strip(data, path: str = ""):
    if isinstance(data, dict):
        return {
            k: strip(v, f"{path}.{k}" if path else k)
            for k, v in data.items()
            if not _timing(f"{path}.{k}" if path else k)
        }
    if isinstance(data, list):
        return [strip(v, f"{path}.{i}") for i, v in enumerate(data)]
    if path.rsplit(".", 1)[-1] in ("strategy", "warm_start") and data in RENAMED:
        return RENAMED[data]
    if isinstance(data, str) and data.startswith(("/", "<root>")):
        # absolute paths (calibration profiles) name the checkout: compare them relative
        return re.sub(r"^/.*?/samples/", "<root>/samples/", data)
    if path.startswith("explanation.") and isinstance(data, str):
        for old, new in RENAMED.items():
            data = re.sub(rf"\b{old}\b", new, data)
    return data


def _timing(path: str) -> bool:
    return path.rsplit(".", 1)[-1] in TIMING


def _time_limited(*plans) -> bool:
    return any(
        isinstance(p, dict) and p.get("solver", {}).get("status") == "time_limit" for p in plans
    )


def first_difference(a, b, path: str = "") -> str | None:
    if type(a) is not type(b):
        return f"{path or '<root>'}: {a!r} != {b!r}"[:300]
    if isinstance(a, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                return f"{path}.{k}: only in {'new' if k in b else 'saved'}"
            found = first_difference(a[k], b[k], f"{path}.{k}" if path else k)
            if found:
                return found
        return None
    if isinstance(a, list):
        if len(a) != len(b):
            return f"{path}: {len(a)} items saved, {len(b)} now"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            found = first_difference(x, y, f"{path}.{i}")
            if found:
                return found
        return None
    return None if a == b else f"{path}: {a!r} != {b!r}"[:300]


def main() -> int:
    """Save or compare (module docstring). A plan the ILP leaves at its time limit
    (`solver.status: time_limit`) depends on how much the solver did in that time, so on
    the machine's load: such cases are reported, not counted, when they differ."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["save", "compare"])
    parser.add_argument("folder")
    parser.add_argument("--only", default="")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    folder = Path(args.folder)
    folder.mkdir(parents=True, exist_ok=True)
    todo = {k: v for k, v in cases().items() if args.only in k}
    with ThreadPoolExecutor(args.jobs) as pool:
        results = dict(zip(todo, pool.map(run_case, todo.values()), strict=True))
    differ = 0
    for name, data in results.items():
        path = folder / f"{name}.json"
        if args.action == "save":
            path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
            continue
        saved = strip(json.loads(path.read_text()))
        found = first_difference(saved, data)
        if found and _time_limited(saved, data):
            print(f"time-limited, differs: {name}: {found}")
        elif found:
            differ += 1
            print(f"DIFF {name}: {found}")
    print(
        f"{len(results)} cases, {differ} differ"
        if args.action == "compare"
        else f"{len(results)} saved"
    )
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
