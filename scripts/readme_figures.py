"""Keep the README's what-if figures true: compute them, check them, or write them.

    python scripts/readme_figures.py --check   # exit 1 when README's table is stale
    python scripts/readme_figures.py --write   # rewrite it (and docs/whatif_gpt.md)

The table between the `<!-- whatif-table -->` markers of README.md is the what-if sweep of
the command shown above it (`WHATIF_ARGS`), rendered from `runners.cli.whatif.table_rows`
(the CLI's own table) with a subset of its columns. tests/test_readme.py runs `--check`'s
comparison, so a change that moves a figure fails until the README is rewritten.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOC = ROOT / "docs" / "whatif_gpt.md"
BEGIN, END = "<!-- whatif-table -->", "<!-- /whatif-table -->"
WHATIF_ARGS = [
    "samples/models/gpt.onnx",
    "--cluster",
    "samples/clusters/mixed.yaml",
    "--batch",
    "256",
    "--add",
    "A100-80GB:2,4",
    "--replace",
    "V100-32GB=H100-80GB",
]
COLUMNS = [
    "scenario",
    "devices used / idle",
    "stages x replicas",
    "samples/s",
    "speed-up",
    "bubble",
    "$/h (used)",
    "samples/$",
    "gain/device",
]


def whatif_table() -> str:
    """The README's what-if table, computed now (cache off)."""
    from planner.config import PlanConfig
    from planner.graph.shapes import ShapeBindings
    from planner.whatif.analysis import whatif
    from runners.cli.whatif import table_rows

    report = whatif(
        str(ROOT / WHATIF_ARGS[0]),
        str(ROOT / WHATIF_ARGS[2]),
        PlanConfig(),
        ShapeBindings(batch=int(WHATIF_ARGS[4])),
        adds=[WHATIF_ARGS[6]],
        replaces=[WHATIF_ARGS[8]],
        cache=False,
    )
    header, cells = table_rows(report)
    keep = [header.index(c) for c in COLUMNS]
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row[i] for i in keep) + " |" for row in cells]
    return "\n".join(lines)


def readme_table(text: str | None = None) -> str:
    """The table as the README has it now."""
    text = README.read_text() if text is None else text
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    return text[start:end].strip()


def _write_readme(table: str) -> None:
    text = README.read_text()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    README.write_text(text[:start] + "\n" + table + "\n" + text[end:])


def _write_doc() -> None:
    """docs/whatif_gpt.md's output block: the CLI's own output of the same command."""
    args = [*WHATIF_ARGS, "--no-cache", "--png", "docs/whatif_gpt.png"]
    out = subprocess.run(
        [sys.executable, "-m", "runners.cli", "whatif", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env=os.environ | {"COLUMNS": "220"},
    ).stdout
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    text = DOC.read_text()
    head, rest = text.split("```text\n", 1)
    _, tail = rest.split("```\n", 1)
    head = head.split("Produced by")[0] + (
        f"Produced by `python scripts/readme_figures.py --write` (commit {commit}, "
        "2-core VM, cache off):\n\n```bash\npipeplan whatif "
        + " ".join(WHATIF_ARGS[:3])
        + " \\\n    "
        + " ".join(WHATIF_ARGS[3:])
        + " --png docs/whatif_gpt.png\n```\n\n"
    )
    DOC.write_text(head + "```text\n" + out.rstrip() + "\n```\n" + tail)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true")
    mode.add_argument("--write", action="store_true")
    args = parser.parse_args(argv)
    fresh = whatif_table()
    if args.write:
        _write_readme(fresh)
        _write_doc()
        print(fresh)
        return 0
    if fresh != readme_table():
        print("README what-if table is stale; fresh figures:\n" + fresh, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
