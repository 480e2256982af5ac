"""The ping-pong child process of the link measurement (`runners.calibrate.link`):

    python -m runners.calibrate.link_child RANK PORT BACKEND SIZES REPEATS OUT [ROUNDS]

Ranks 0 and 1 join a process group (`torch.distributed`, BACKEND) at `tcp://127.0.0.1:PORT`;
for each message size (SIZES: bytes, comma-separated), in ROUNDS interleaved rounds: the
median round trip of a blocking send and receive back (one-way = half of it) and, with
gloo, the median time `isend` blocks its caller, quiet and while both processes compute a
burst of matrix products (mean of the ranks). Rank 0 writes the per-size medians to OUT
(JSON).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

USAGE = "usage: python -m runners.calibrate.link_child RANK PORT BACKEND SIZES REPEATS OUT [ROUNDS]"


def main(argv: list[str]) -> int:
    """Run one rank of the ping-pong (`argv`: the arguments after the module name)."""
    import datetime as _dt

    import torch.distributed as dist

    rank, port, backend = int(argv[0]), int(argv[1]), argv[2]
    sizes = [int(s) for s in argv[3].split(",")]
    reps, out = int(argv[4]), argv[5]
    rounds = int(argv[6]) if len(argv) > 6 else 1
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    dist.init_process_group(
        backend,
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=2,
        timeout=_dt.timedelta(seconds=60),
    )
    dev = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
    peer = 1 - rank
    per_round = max(3, reps // rounds)
    samples: dict[int, dict[str, list[float]]] = {n: {} for n in sizes}
    for _ in range(rounds):  # interleaved rounds: a slow spell hits every size a little
        for nbytes in sizes:
            buf = torch.zeros(max(1, nbytes // 4), dtype=torch.float32, device=dev)
            got = samples[nbytes]
            got.setdefault("one_way_s", []).append(_round_trip(buf, peer, rank, per_round) / 2)
            if backend == "gloo":
                # How long isend blocks its caller, quiet and while both processes compute
                # (the runner posts its sends from the compute thread); mean of the ranks.
                for busy in (False, True):
                    post = _post_time(buf, peer, per_round, busy)
                    both = [torch.zeros(1, dtype=torch.float64) for _ in range(2)]
                    dist.all_gather(both, torch.tensor([post], dtype=torch.float64))
                    key = "post_busy_s" if busy else "post_idle_s"
                    got.setdefault(key, []).append(float(sum(both).item() / 2))
    results = [
        {"bytes": max(1, n // 4) * 4, "repeats": per_round * rounds}
        | {k: statistics.median(v) for k, v in samples[n].items()}
        for n in sizes
    ]
    dist.barrier()
    if rank == 0:
        Path(out).write_text(json.dumps(results))
    dist.destroy_process_group()
    return 0


def _round_trip(buf: torch.Tensor, peer: int, rank: int, reps: int) -> float:
    """Median seconds of a blocking send and receive back (ping-pong), after 3 warm-ups."""
    import torch.distributed as dist

    times = []
    for i in range(reps + 3):
        dist.barrier()
        start = time.perf_counter()
        if rank == 0:
            dist.send(buf, peer)
            dist.recv(buf, peer)
        else:
            dist.recv(buf, peer)
            dist.send(buf, peer)
        if buf.is_cuda:
            torch.cuda.synchronize(buf.device)
        if i >= 3:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


#: Matrix size and count of the compute burst around a send in the busy ping-pong phase.
BURST_MATMUL = (128, 24)


def _burst() -> None:
    n, count = BURST_MATMUL
    a = torch.ones(n, n)
    for _ in range(count):
        a = a @ a * (1.0 / n)


def _post_time(buf: torch.Tensor, peer: int, reps: int, busy: bool) -> float:
    """Median seconds `isend` blocks its caller; with `busy`, both processes compute around it."""
    import torch.distributed as dist

    sent, received = buf.clone(), torch.empty_like(buf)
    posts = []
    for i in range(reps + 2):
        recv = dist.irecv(received, peer, tag=i)
        dist.barrier()
        if busy:
            _burst()
        start = time.perf_counter()
        send = dist.isend(sent, peer, tag=i)
        posts.append(time.perf_counter() - start)
        if busy:
            _burst()
        send.wait()
        recv.wait()
    return statistics.median(posts[2:])


if __name__ == "__main__":
    if len(sys.argv) < 7:
        print(USAGE, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1:]))
