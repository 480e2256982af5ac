"""Start-up of the command line: `pipeplan --help` and `pipeplan plan --help` (issue 12).

Each command runs in a fresh process, `--repeat` times, interleaved with the floor every
Python program pays (`python -c pass`) and with the import of typer alone (what any typer
CLI pays); medians are reported, and the CLI's cost over the floor. No command may import
torch: the run fails if one does.

    python bench/bench_startup.py [--repeat 15]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

HELP = (
    "import sys; sys.argv = ['pipeplan', *sys.argv[1:]]\n"
    "from runners.cli.app import main\n"
    "try:\n    main()\nexcept SystemExit:\n    pass\n"
    "assert 'torch' not in sys.modules, 'torch imported'\n"
)
CASES = {
    "python -c pass": ["-c", "pass"],
    "import typer": ["-c", "import typer"],
    "pipeplan --help": ["-c", HELP, "--help"],
    "pipeplan plan --help": ["-c", HELP, "plan", "--help"],
}


def _once(args: list[str]) -> float:
    start = time.perf_counter()
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"failed: {args}: {result.stderr.strip().splitlines()[-1:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in CASES}
    for _ in range(args.repeat):
        for name, argv in CASES.items():
            times[name].append(_once(argv))
    floor = statistics.median(times["python -c pass"])
    out = {
        name: {
            "median_s": round(statistics.median(t), 3),
            "over_floor_s": round(statistics.median(t) - floor, 3),
        }
        for name, t in times.items()
    }
    print(json.dumps({"repeat": args.repeat, "results": out}, indent=2))


if __name__ == "__main__":
    main()
