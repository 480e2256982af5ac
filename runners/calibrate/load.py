"""Background load, the parent side (`calibrate(concurrency=N)`): while a model's operators
are timed, N - 1 other processes, each `python -m runners.calibrate.load_child`, run that
model's forward and backward in a loop, as the other ranks of a pipeline on the same host
will (on CPUs, cores share caches, memory bandwidth and, on a virtual machine, more; see
docs/calibration.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from cost.errors import PipeplanError

if TYPE_CHECKING:
    from runners.calibrate.model_ops import ModelRequest

#: The repository root, put on the child processes' PYTHONPATH.
ROOT = Path(__file__).resolve().parents[2]


class BackgroundLoad:
    """`count` processes running a model's whole forward and backward in a loop.

    While operators are timed on one core, the host's other cores do what they will do in
    a pipeline run: the same kind of work (a CPU's cores share caches, memory bandwidth and,
    on a virtual machine, more). Each process signals readiness through a file once it has
    converted the model and run it once; `stop` kills them.
    """

    def __init__(self, req: ModelRequest, count: int, threads: int):
        self.req = req
        self.count = count
        self.threads = threads
        self.procs: list[subprocess.Popen] = []
        self.tmp: tempfile.TemporaryDirectory | None = None

    def start(self, timeout_s: float = 120.0) -> None:
        self.tmp = tempfile.TemporaryDirectory(prefix="pipeplan-load-")
        b = self.req.bindings
        spec = json.dumps(
            {
                "path": str(self.req.path),
                "dims": dict(b.dims),
                "batch": b.batch,
                "input_shapes": {k: list(v) for k, v in b.input_shapes.items()},
            }
        )
        env = dict(os.environ)
        env["OMP_NUM_THREADS"] = str(self.threads)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
        for i in range(self.count):
            ready = Path(self.tmp.name) / f"ready{i}"
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "runners.calibrate.load_child", spec, str(ready)],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        deadline = time.monotonic() + timeout_s
        for i, proc in enumerate(self.procs):
            ready = Path(self.tmp.name) / f"ready{i}"
            while not ready.exists():
                if proc.poll() is not None:
                    err = (proc.stderr.read() if proc.stderr else "").strip().splitlines()
                    self.stop()
                    raise PipeplanError(
                        f"background load process failed: {err[-1][:200] if err else 'no output'}"
                    )
                if time.monotonic() > deadline:
                    self.stop()
                    raise PipeplanError("background load processes did not start in time")
                time.sleep(0.05)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            if proc.stderr:
                proc.stderr.close()
        self.procs = []
        if self.tmp is not None:
            self.tmp.cleanup()
            self.tmp = None
