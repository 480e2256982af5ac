"""One rank of an onnxruntime run: `torchrun ... -m runners.ort.worker BUNDLE --out DIR`.

Each rank holds one `onnxruntime.InferenceSession` per stage of its device (its
providers from `runners.ort.providers`, `OMP_NUM_THREADS` intra-op threads, 1 unless
set) and streams requests through them: request r is one micro-batch, the graph inputs
of `DataSource.inputs(0, r)`; its program on this rank is the forward part of the
schedule's actions for micro-batch 0 (RECV, F, SEND, relays included), renumbered to r.

Streaming is dataflow-driven: up to `--in-flight` requests are active on a rank at once;
the rank runs, oldest request first, every action that is ready (a RECV is ready when its
`irecv`, posted when the request became active, has completed), and blocks on the oldest
request's pending receive only when nothing is ready. So stages overlap across requests,
and a device holding several (interleaved) stages serves whichever is ready (on NCCL; gloo's
receives report completion only once waited for, so on gloo a rank takes its requests
oldest first). The rank
holding the first stage admits request r only once request r - in_flight has left the
last stage (the last stage's rank sends it a one-element acknowledgement): a closed loop
with `in_flight` requests in the pipeline, as a serving front end with a bounded queue
runs it, so latency is the pipeline's and not an ever-growing queue's.

Timing: wall-clock timestamps, aligned to rank 0's clock by a ping-pong at start (the
offset of the round trip with the least delay, Cristian 1989), so latency holds across
hosts: from the request's first action on the first stage's rank to the end of its last
stage's forward. Data-parallel replicas serve requests r = k, k + R, ... (replica k of
R), each its own pipeline.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import deque
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from exporters.manifest import Manifest
from runners.data import DataSource, torch_dtype
from runners.worker import device_ranks, forward_action, guarded_rank, message_tag

PING_ROUNDS = 8


def clock_offset(rank: int, world: int) -> float:
    """Seconds to add to this rank's `time.time()` to get rank 0's (0 on rank 0)."""
    offset = 0.0
    buf = torch.zeros(1, dtype=torch.float64)
    for peer in range(1, world):
        best = (float("inf"), 0.0)
        for _ in range(PING_ROUNDS):
            if rank == 0:
                t0 = time.time()
                dist.send(torch.tensor([t0], dtype=torch.float64), dst=peer)
                dist.recv(buf, src=peer)
                t1 = time.time()
                best = min(best, (t1 - t0, (t0 + t1) / 2 - float(buf[0])))
            elif rank == peer:
                dist.recv(buf, src=0)
                dist.send(torch.tensor([time.time()], dtype=torch.float64), dst=0)
        if rank == 0:
            dist.send(torch.tensor([best[1]], dtype=torch.float64), dst=peer)
        elif rank == peer:
            dist.recv(buf, src=0)
            offset = float(buf[0])
    return offset


class Request:
    """One request's progress through this rank's program."""

    def __init__(self, r: int, posted: dict, feeds: dict[str, np.ndarray]):
        self.r = r
        self.feeds = feeds  # graph inputs
        self.pos = 0
        self.posted = posted  # message key -> (works, buffers)
        self.received: dict[tuple, dict[str, torch.Tensor]] = {}
        self.produced: dict[int, dict[str, np.ndarray]] = {}


class ServeRank:
    def __init__(self, args: argparse.Namespace):
        from runners.ort.providers import inference_session, stage_providers

        self.args = args
        self.bundle = Path(args.bundle)
        self.manifest = Manifest.model_validate_json((self.bundle / "manifest.json").read_text())
        self.rank = dist.get_rank()
        ranks = device_ranks(self.manifest)
        p = len(ranks)
        self.replicas = self.manifest.data_parallel
        self.replica, position = divmod(self.rank, p)
        self.device = {r: d for d, r in ranks.items()}[position]
        base = self.replica * p
        self.stage_rank = {st.index: base + ranks[st.device] for st in self.manifest.stages}
        self.num_stages = len(self.manifest.stages)
        self.last = self.num_stages - 1
        self.entry_rank = self.stage_rank[0]
        self.exit_rank = self.stage_rank[self.last]
        self.cuda = (
            torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            if args.backend == "nccl"
            else None
        )
        providers = stage_providers(self.manifest, args.providers)
        threads = max(1, int(os.environ.get("OMP_NUM_THREADS", "1") or 1))
        self.sessions = {
            st.index: inference_session(str(self.bundle / st.file), threads, providers[st.index])
            for st in self.manifest.stages
            if st.device == self.device
        }
        self.specs = {st.index: st for st in self.manifest.stages}
        self.program = [
            a
            for a in self.manifest.schedule.actions[self.device]
            if a.microbatch == 0 and forward_action(a)
        ]
        self.shapes = {r.tensor: (r.shape, r.dtype) for r in self.manifest.routing.forward}
        total = args.warmup + args.requests
        self.mine = range(self.replica, total, self.replicas)
        self.in_flight = max(1, args.in_flight)
        self.data = DataSource(self.manifest, self.bundle, seed=args.seed, npz=args.data)
        self.needs_inputs = any(
            t.source == "graph" for i in self.sessions for t in self.specs[i].inputs
        )
        self.events: list[tuple[str, int, int, float, float]] = []
        self.start: dict[int, float] = {}
        self.end: dict[int, float] = {}
        self.outputs: dict[int, dict[str, np.ndarray]] = {}

    # ------------------------------------------------------------------ messages

    def _to_wire(self, value: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(value))
        return t if self.cuda is None else t.to(self.cuda)

    def _post(self, r: int) -> dict:
        posted = {}
        for a in self.program:
            if a.op != "RECV":
                continue
            works, buffers = [], {}
            for i, name in enumerate(a.tensors):
                shape, dtype = self.shapes[name]
                buf = torch.empty(tuple(shape or []), dtype=torch_dtype(dtype))
                if self.cuda is not None:
                    buf = buf.to(self.cuda)
                tag = message_tag("fwd", r, a.peer_stage, i, self.num_stages)
                works.append(dist.irecv(buf, src=self.stage_rank[a.peer_stage], tag=tag))
                buffers[name] = buf
            posted[a.message_key()] = (works, buffers)
        return posted

    def _ack_tag(self, r: int) -> int:
        return message_tag("bwd", r, self.last, 0, self.num_stages)

    # ------------------------------------------------------------------ actions

    def _ready(self, req: Request, wait: bool) -> bool:
        a = self.program[req.pos]
        if a.op != "RECV" or a.message_key() in req.received:
            return True
        works, buffers = req.posted[a.message_key()]
        if not wait and not all(w.is_completed() for w in works):
            return False
        for w in works:
            w.wait()
        req.received[a.message_key()] = buffers
        return True

    def _run(self, req: Request, sends: list) -> None:
        a = self.program[req.pos]
        t0 = time.time()
        if a.op == "F":
            st = self.specs[a.stage]
            incoming = req.received.get(("fwd", 0, a.stage - 1, a.stage), {})
            feed = {}
            for t in st.inputs:
                if t.source == "graph":
                    feed[t.name] = req.feeds[t.name]
                else:
                    feed[t.name] = incoming[t.name].cpu().numpy()
            names = [o.name for o in st.outputs]
            outs = self.sessions[a.stage].run(names, feed)
            req.produced[a.stage] = dict(zip(names, outs, strict=True))
            if a.stage == self.last:
                self.end[req.r] = time.time()
                if self.args.keep_outputs:
                    finals = [o.name for o in st.outputs if "graph" in o.destinations]
                    self.outputs[req.r] = {n: req.produced[a.stage][n] for n in finals}
        elif a.op == "SEND":
            mine = req.produced.get(a.stage, {})
            relay = req.received.get(("fwd", 0, a.stage - 1, a.stage), {})
            for i, name in enumerate(a.tensors):
                value = self._to_wire(mine[name]) if name in mine else relay[name]
                tag = message_tag("fwd", req.r, a.stage, i, self.num_stages)
                sends.append((dist.isend(value, dst=self.stage_rank[a.peer_stage], tag=tag), value))
        self.events.append((a.op, a.stage, req.r, t0, time.time()))
        req.pos += 1

    # ------------------------------------------------------------------ the stream

    def serve(self) -> None:
        admitted = 0  # requests of self.mine admitted so far
        active: deque[Request] = deque()
        acks: dict[int, tuple] = {}
        sends: list = []
        entry = self.rank == self.entry_rank
        while admitted < len(self.mine) or active:
            # admit: locally up to in_flight requests; the entry rank also waits for the
            # acknowledgement of the request in_flight places earlier
            while admitted < len(self.mine) and len(active) < self.in_flight:
                r = self.mine[admitted]
                if entry and admitted >= self.in_flight:
                    earlier = self.mine[admitted - self.in_flight]
                    if not self._acked(earlier, acks, wait=not active):
                        break
                admitted += 1
                feeds = (  # the request's data, ready before it is admitted
                    {k: v.numpy() for k, v in self.data.inputs(0, r).items()}
                    if self.needs_inputs
                    else {}
                )
                if entry:
                    self.start[r] = time.time()
                    if self.exit_rank != self.rank:
                        buf = torch.zeros(1)
                        buf = buf if self.cuda is None else buf.to(self.cuda)
                        acks[r] = (dist.irecv(buf, src=self.exit_rank, tag=self._ack_tag(r)), buf)
                active.append(Request(r, self._post(r), feeds))
            progressed = False
            for req in list(active):
                while req.pos < len(self.program) and self._ready(req, wait=False):
                    self._run(req, sends)
                    progressed = True
                if req.pos == len(self.program):
                    active.remove(req)
                    self._finish(req, sends)
            if not progressed and active:  # nothing ready: block on the oldest request
                t0 = time.time()
                self._ready(active[0], wait=True)
                self.events.append(("WAIT", -1, active[0].r, t0, time.time()))
            sends = self._reap(sends)
        for w, _ in sends:
            w.wait()
        for r in list(acks):
            self._acked(r, acks, wait=True)

    def _reap(self, sends: list) -> list:
        """Forget finished sends; wait for the oldest beyond a bound (gloo's sends never
        report completion before they are waited for)."""
        sends = [(w, v) for w, v in sends if not w.is_completed()]
        bound = 4 * self.in_flight * max(1, sum(len(a.tensors) for a in self.program))
        while len(sends) > bound:
            sends.pop(0)[0].wait()
        return sends

    def _acked(self, r: int, acks: dict, wait: bool) -> bool:
        if r not in acks:  # the entry rank holds the last stage too (or acknowledged)
            return True
        work, _ = acks[r]
        if not wait and not work.is_completed():
            return False
        work.wait()
        del acks[r]
        return True

    def _finish(self, req: Request, sends: list) -> None:
        if self.rank == self.exit_rank and self.entry_rank != self.rank:
            flag = torch.ones(1) if self.cuda is None else torch.ones(1, device=self.cuda)
            work = dist.isend(flag, dst=self.entry_rank, tag=self._ack_tag(req.r))
            sends.append((work, flag))

    def result(self, offset: float) -> dict:
        return {
            "rank": self.rank,
            "replica": self.replica,
            "device": self.device,
            "stages": sorted(self.sessions),
            "clock_offset_s": offset,
            "start": {str(r): t + offset for r, t in self.start.items()},
            "end": {str(r): t + offset for r, t in self.end.items()},
            "events": [(op, s, r, a + offset, b + offset) for op, s, r, a, b in self.events],
            "warmup": self.args.warmup,
        }


def serve_rank(args: argparse.Namespace) -> dict:
    offset = clock_offset(dist.get_rank(), dist.get_world_size())
    state = ServeRank(args)
    dist.barrier()
    state.serve()
    dist.barrier()
    if state.outputs:
        np.savez(
            Path(args.out) / f"outputs_rank{state.rank}.npz",
            **{f"{r}/{k}": v for r, outs in state.outputs.items() for k, v in outs.items()},
        )
    return state.result(offset)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m runners.ort.worker", description="one rank of an onnxruntime run"
    )
    p.add_argument("bundle")
    p.add_argument("--out", required=True, help="folder for per-rank results")
    p.add_argument("--requests", type=int, default=32, help="requests measured")
    p.add_argument("--warmup", type=int, default=2, help="requests run first, not measured")
    p.add_argument("--in-flight", type=int, default=2, help="requests in the pipeline at once")
    p.add_argument("--providers", nargs="*", default=None)
    p.add_argument("--backend", choices=["gloo", "nccl"], default="gloo")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default=None)
    p.add_argument("--keep-outputs", action="store_true", help="save outputs (for --check)")
    p.add_argument("--timeout-s", type=float, default=60.0)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    return guarded_rank(args, serve_rank)


if __name__ == "__main__":
    sys.exit(main())
