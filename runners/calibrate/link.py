"""Link measurement, the parent side: two local processes (`torch.distributed`, gloo; NCCL
on CUDA with 2+ GPUs), each `python -m runners.calibrate.link_child`, ping-pong messages of
4 B to 16 MB; quiet one-way time = round trip / 2.

The runner posts its `isend`s from the compute thread while the peer computes too, and on a
small host that costs more: with gloo, each size is also sent while both processes run a
compute burst, and the extra time `isend` blocks its caller (busy minus quiet median) is
added (`loaded_one_way`). `runners.calibrate.fits.fit_link` fits alpha-beta to that.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from cost.errors import PipeplanError

if TYPE_CHECKING:
    from runners.calibrate.timing import Sizes

#: The repository root, put on the child processes' PYTHONPATH.
ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure_link(
    sizes: Sizes, threads: int, backend: str = "gloo", timeout_s: float = 120.0
) -> list[dict]:
    """One-way seconds per message size between two local processes (ping-pong / 2)."""
    port = _free_port()
    reps = max(sizes.min_repeats, 5 if sizes.max_repeats < 50 else 30)
    with tempfile.TemporaryDirectory(prefix="pipeplan-link-") as tmp:
        out = Path(tmp) / "pingpong.json"
        env = dict(os.environ)
        env["OMP_NUM_THREADS"] = str(threads)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "runners.calibrate.link_child",
                    str(rank),
                    str(port),
                    backend,
                    ",".join(str(s) for s in sizes.pingpong),
                    str(reps),
                    str(out),
                    str(sizes.rounds),
                ],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for rank in (0, 1)
        ]
        deadline = time.monotonic() + timeout_s
        outputs = []
        for p in procs:
            try:
                text, _ = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                for q in procs:
                    q.kill()
                raise PipeplanError(
                    f"link ping-pong did not finish within {timeout_s:.0f} s"
                ) from None
            outputs.append(text)
        if any(p.returncode != 0 for p in procs) or not out.exists():
            lines = [ln for text in outputs for ln in text.strip().splitlines() if ln.strip()]
            raise PipeplanError(
                f"link ping-pong failed: {lines[-1][:200] if lines else 'no output'}"
            )
        return json.loads(out.read_text())


def loaded_one_way(point: dict) -> float:
    """One-way seconds between two busy processes: the quiet ping-pong's one-way time plus
    the extra time `isend` blocks its caller while both compute."""
    extra = point.get("post_busy_s", 0.0) - point.get("post_idle_s", 0.0)
    return point["one_way_s"] + max(0.0, extra)
