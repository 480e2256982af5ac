"""The README is true: its Quickstart runs as written, and its what-if figures are fresh.

The Quickstart's bash block, then its Python block, run in a temporary folder that holds
only links to `samples/` and `.venv/` (what a user who cloned the repository has), so
that nothing they write lands in the repository and nothing they need is missing.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from scripts.readme_figures import readme_table, whatif_table

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
pytestmark = pytest.mark.slow


def quickstart_blocks() -> tuple[str, str]:
    section = README.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    bash = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    python = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    return bash, python


def test_quickstart_runs_as_written(tmp_path):
    venv = ROOT / ".venv"
    if not (venv / "bin" / "activate").exists():
        pytest.skip("no .venv (the Quickstart assumes scripts/setup.sh made one)")
    (tmp_path / "samples").symlink_to(ROOT / "samples")
    (tmp_path / ".venv").symlink_to(venv)
    bash, python = quickstart_blocks()
    env = os.environ | {"OMP_NUM_THREADS": "1", "PIPEPLAN_CACHE_DIR": str(tmp_path / "cache")}
    shell = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", bash],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert shell.returncode == 0, shell.stderr[-3000:]
    assert "Traceback" not in shell.stderr
    for name in ("plan.json", "timeline.png", "trace.json", "cpu.json", "run.json"):
        assert (tmp_path / "out" / name).is_file(), name
    assert (tmp_path / "out" / "bundle" / "manifest.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".venv", "cache", "out", "samples"]

    lib = subprocess.run(
        [str(venv / "bin" / "python"), "-c", python],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert lib.returncode == 0, lib.stderr[-3000:]
    assert "True" in lib.stdout  # the run's check passed


def test_readme_whatif_figures_are_fresh():
    fresh = whatif_table()
    assert readme_table() == fresh, (
        "README's what-if table is stale: run `python scripts/readme_figures.py --write`\n" + fresh
    )
