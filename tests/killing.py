"""Kill one rank of a real run and check that every rank stops, with one line naming it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _workers(bundle: Path, module: str = "runners.worker") -> list[int]:
    out = subprocess.run(
        ["pgrep", "-f", f"{module} {bundle}"], capture_output=True, text=True
    ).stdout
    return [int(x) for x in out.split()]


def kill_one_rank_and_check(
    bundle: Path,
    ranks: int,
    start_s: float = 60,
    args: tuple[str, ...] = ("--steps", "100000"),
    module: str = "runners.worker",
) -> None:
    """Start `pipeplan run BUNDLE` for ever, SIGKILL one of its `ranks` workers once all
    run, and assert: exit 1 within 60 s, one `error: rank ... killed by signal 9` line,
    no worker left."""
    cmd = [sys.executable, "-m", "runners.cli", "run", str(bundle), *args]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        workers: list[int] = []
        deadline = time.monotonic() + start_s
        while len(workers) < ranks and time.monotonic() < deadline:
            workers = _workers(bundle, module)
            time.sleep(0.5)
        assert len(workers) >= ranks, "workers did not start"
        time.sleep(3)
        os.kill(max(workers), signal.SIGKILL)
        killed_at = time.monotonic()
        _, err = proc.communicate(timeout=60)
        assert time.monotonic() - killed_at < 60
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1
    lines = [line for line in err.splitlines() if line.strip()]
    assert (
        len(lines) == 1 and lines[0].startswith("error: rank") and "killed by signal 9" in lines[0]
    ), err
    assert not _workers(bundle, module), "orphaned worker processes"
