"""Peer for bench_runner.py: the same torch model and split, run by torch.distributed.pipelining.

    torchrun --standalone --nproc-per-node 2 bench/pipelining_worker.py --split 7 \
        --width 1024 --depth 8 --batch 64 --microbatches 8 --steps 10 --out times.json

The model is `samples.zoo.MLP(width, width, 10, depth)`; stage 0 holds its first `--split`
modules in forward order (layers.0, acts.0, layers.1, ...), stage 1 the rest;
Schedule1F1B; cross-entropy on random class targets; Adam, lr 1e-3.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.distributed as dist
from torch.distributed.pipelining import PipelineStage, Schedule1F1B

from samples import zoo


def sequential(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The MLP's modules in forward order: layers.0, acts.0, layers.1, ..., layers.N."""
    parts = []
    for i, layer in enumerate(module.layers):
        parts.append(layer)
        if i < len(module.acts):
            parts.append(module.acts[i])
    return parts


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--depth", type=int, default=8)
    p.add_argument("--split", type=int, required=True)
    p.add_argument("--batch", type=int, default=64, help="micro-batch size")
    p.add_argument("--microbatches", type=int, default=8)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    module = zoo.MLP(d_in=args.width, d_hidden=args.width, d_out=10, n_layers=args.depth)
    parts = sequential(module)
    bounds = [0, args.split, len(parts)]
    stage_module = torch.nn.Sequential(*parts[bounds[rank] : bounds[rank + 1]])
    stage = PipelineStage(stage_module, rank, world, torch.device("cpu"))
    m = args.microbatches

    def loss_fn(out, target):
        return torch.nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), target.reshape(-1))

    schedule = Schedule1F1B(stage, m, loss_fn=loss_fn)
    optimizer = torch.optim.Adam(stage_module.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch * m, args.width, generator=g)
    target = torch.randint(0, 10, (args.batch * m,), generator=g)
    times = []
    for _ in range(args.steps):
        dist.barrier()
        start = time.perf_counter()
        if rank == 0:
            schedule.step(x)
        else:
            schedule.step(target=target)
        optimizer.step()
        optimizer.zero_grad()
        times.append((time.perf_counter() - start) * 1e3)
    gathered = [None] * world
    dist.all_gather_object(gathered, times)
    if rank == 0:
        step_ms = [max(ts[i] for ts in gathered) for i in range(args.steps)]
        with open(args.out, "w") as f:
            json.dump({"step_ms": step_ms}, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
