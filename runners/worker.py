"""One rank of a pipeplan run: `torchrun ... -m runners.worker BUNDLE --out DIR [...]`.

Each rank joins the process group (gloo on CPU, NCCL on GPU), converts the stage models
assigned to its device, and executes its action list from the manifest, in order, every
step: F and B (and W when the schedule splits backward) on its stages; SEND as `isend`
posted as soon as the data exists; RECV waiting on an `irecv` that was posted at the
start of the step, so transfers overlap with compute. Tensors crossing several stage
boundaries are relayed by the stages in between, and their gradients come back the same
way (see the README, "Routing"). After the last action: wait for the sends, all-reduce
the gradients of weights held by several stages (tied embeddings), optimizer step.

Data parallelism (`manifest.data_parallel` = r replicas of the pipeline, world size r x p):
rank = replica x p + position, position the device's place among replica 0's devices.
`torch.distributed.device_mesh` lays the ranks out as a (dp, pp) mesh; a rank's "dp"
group joins the ranks holding the same stages in every replica. Replica k runs global
micro-batches k m .. k m + m - 1, its pipeline messages go to the ranks of its replica.
As soon as a stage's last backward (its last W, when backward is split) has run, its
gradients are all-reduced over the dp group, asynchronously, in buckets of at most
`cost.collectives.DEFAULT_BUCKET_BYTES` (as PyTorch DDP, Li et al. VLDB 2020), while the
rank goes on with its program; the step waits for them and divides by r (the mean over
the global batch). `zero: 1` steps through `torch.distributed.optim.ZeroRedundancyOptimizer`
(ZeRO-1, Rajbhandari et al. SC 2020): each rank keeps optimizer state for a shard of its
parameters and broadcasts its updated shard.

Tensor parallelism (`manifest.tensor_parallel` = t, world size r x p x t): each stage runs
on a group of t consecutive ranks, rank = (replica x p + position) x t + tensor rank
(Megatron-LM's order: a group's ranks are neighbours). The mesh is (dp, pp, tp); a rank
converts its own shard of each stage (`StageFile.tensor_files`), whose `pipeplan`
collectives run over its "tp" group (`runners.tensor_parallel`); its pipeline peers are
the same tensor rank of the neighbouring stages' groups, its dp group the same stage and
tensor rank in every replica.

A rank that fails writes `errors/rank<r>.txt` (one line) before exiting non-zero; the
launcher turns that into the run's one-line error. A NaN or infinite loss is a failure.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from cost.collectives import DEFAULT_BUCKET_BYTES
from exporters.manifest import Manifest
from runners.data import DataSource, is_classification, loss_of, torch_dtype
from runners.stage import StageRunner

MAX_TENSORS_PER_MESSAGE = 256


def message_tag(direction: str, microbatch: int, src_stage: int, tensor: int, stages: int) -> int:
    """A tag unique within a step for every tensor of every message (gloo matches on it)."""
    base = (microbatch * stages + src_stage) * 2 + (1 if direction == "bwd" else 0)
    return base * MAX_TENSORS_PER_MESSAGE + tensor


def device_ranks(manifest: Manifest) -> dict[str, int]:
    """Replica 0's device id -> its position (its rank in replica 0): devices numbered in
    order of their first stage."""
    return {d: i for i, d in enumerate(manifest.pipeline_devices)}


def buckets(tensors: list[torch.Tensor], limit: int) -> list[list[torch.Tensor]]:
    """Consecutive groups of tensors, each at most `limit` bytes (a larger tensor alone)."""
    out: list[list[torch.Tensor]] = []
    size = 0
    for t in tensors:
        nbytes = t.numel() * t.element_size()
        if not out or size + nbytes > limit:
            out.append([])
            size = 0
        out[-1].append(t)
        size += nbytes
    return out


class Rank:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.bundle = Path(args.bundle)
        self.manifest = Manifest.model_validate_json((self.bundle / "manifest.json").read_text())
        self.training = args.mode == "train"
        self.rank = dist.get_rank()
        self.ranks = device_ranks(self.manifest)
        self.p = len(self.ranks)
        self.r = self.manifest.data_parallel
        self.t = self.manifest.tensor_parallel
        group_rank, self.tensor_rank = divmod(self.rank, self.t)
        self.replica, position = divmod(group_rank, self.p)
        self.device_of_rank = {r: d for d, r in self.ranks.items()}
        self.device = self.device_of_rank[position]  # replica 0's id: the actions' key
        if self.manifest.rank_map:  # the exporter's word on this rank must agree
            entry = self.manifest.rank_map[self.rank]
            if (entry.replica, entry.tensor_rank) != (self.replica, self.tensor_rank):
                raise RuntimeError(f"rank {self.rank}: the manifest's rank_map disagrees")
        base = self.replica * self.p
        # pipeline peers: the same tensor-parallel rank of the neighbouring stages' groups
        self.stage_rank = {
            st.index: (base + self.ranks[st.device]) * self.t + self.tensor_rank
            for st in self.manifest.stages
        }
        self.num_stages = len(self.manifest.stages)
        self.m = self.manifest.microbatches
        self.first_microbatch = self.replica * self.m  # this replica's share of the batch
        self.data = DataSource(self.manifest, self.bundle, seed=args.seed, npz=args.data)
        self.dp_group, self.tp_group = self._mesh_groups()
        from runners.tensor_parallel import use_group

        use_group(self.tp_group)
        self.torch_device = (
            torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            if args.backend == "nccl"
            else None
        )
        self.stages: dict[int, StageRunner] = {}
        # the plan's --recompute: each stage keeps only its inputs per micro-batch
        self.recompute = self.training and bool(self.manifest.plan_config.get("recompute"))
        from runners.onnx_to_torch import convert

        for st in self.manifest.stages:
            if st.device == self.device:
                module = convert(
                    str(self.bundle / self.manifest.stage_file(st, self.tensor_rank)),
                    seed=args.seed,
                )
                if self.torch_device is not None:
                    module = module.to(self.torch_device)
                self.stages[st.index] = StageRunner(
                    st, module, self.training, recompute=self.recompute
                )
        self.program = [
            a
            for a in self.manifest.schedule.actions[self.device]
            if self.training or forward_action(a)
        ]
        self.last_gradient_action = self._last_gradient_actions()
        self.pending_reductions: list = []
        self.last = self.num_stages - 1
        self.shapes = {r.tensor: (r.shape, r.dtype) for r in self.manifest.routing.forward}
        self.optimizer = self._optimizer() if self.training else None
        self.shared_groups = self._shared_groups()
        self.events: list[tuple[str, int, int, float, float]] = []
        self.step_ms: list[float] = []
        self.losses: list[float] = []
        self.outputs: dict[int, dict[str, np.ndarray]] = {}
        self.produced: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
        self._offset = 0.0

    # ------------------------------------------------------------------ setup

    def _optimizer(self):
        params = [p for s in self.stages.values() for p in s.params]
        kind = self.manifest.plan_config.get("optimizer", "adam")
        lr = self.args.lr
        if kind == "adam":
            cls, options = torch.optim.Adam, {"lr": lr if lr is not None else 1e-3}
        elif kind == "momentum":
            cls, options = torch.optim.SGD, {"lr": lr if lr is not None else 0.05, "momentum": 0.9}
        else:
            cls, options = torch.optim.SGD, {"lr": lr if lr is not None else 0.05}
        if self.manifest.zero and self.dp_group is not None:
            from torch.distributed.optim import ZeroRedundancyOptimizer

            return ZeroRedundancyOptimizer(
                params, optimizer_class=cls, process_group=self.dp_group, **options
            )
        return cls(params, **options)

    def _mesh_groups(self):
        """This rank's data-parallel group (same stages and tensor rank, every replica) and
        tensor-parallel group (its stage's other shards), from a (dp, pp, tp) device mesh;
        None where the degree is 1."""
        if self.r < 2 and self.t < 2:
            return None, None
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh(
            "cuda" if self.args.backend == "nccl" else "cpu",
            (self.r, self.p, self.t),
            mesh_dim_names=("dp", "pp", "tp"),
        )
        return (
            mesh.get_group("dp") if self.r > 1 else None,
            mesh.get_group("tp") if self.t > 1 else None,
        )

    def _shared_groups(self):
        """Per replica, one process group per weight held by stages on several of its
        ranks (every rank creates every group, in the same order)."""
        groups = []
        for w in self.manifest.shared_weights:
            for replica in range(self.r):
                base = replica * self.p
                for k in range(self.t):
                    ranks = sorted(
                        {
                            (base + self.ranks[self.manifest.stages[s].device]) * self.t + k
                            for s in w.stages
                        }
                    )
                    group = dist.new_group(ranks) if len(ranks) > 1 else None
                    if replica == self.replica and k == self.tensor_rank:
                        groups.append((w, ranks, group))
        return groups

    def _last_gradient_actions(self) -> dict[int, int]:
        """Stage -> index in the program of the action after which its weight gradients
        are complete (its last B, or its last W when backward is split)."""
        if not self.training or self.r < 2:
            return {}
        op = "W" if self.manifest.schedule.split_backward else "B"
        return {a.stage: i for i, a in enumerate(self.program) if a.op == op}

    # ------------------------------------------------------------------ data parallelism

    def _start_reduction(self, stage: int) -> None:
        """All-reduce the stage's gradients across replicas, bucketed, without waiting."""
        grads = [p.grad for p in self.stages[stage].params if p.grad is not None]
        for group in buckets(grads, DEFAULT_BUCKET_BYTES):
            flat = torch._utils._flatten_dense_tensors(group)
            work = dist.all_reduce(flat, group=self.dp_group, async_op=True)
            self.pending_reductions.append((work, flat, group))

    def _finish_reductions(self) -> None:
        """Wait for the all-reduces; gradients become the mean over replicas."""
        for work, flat, group in self.pending_reductions:
            work.wait()
            flat.div_(self.r)
            for g, value in zip(
                group, torch._utils._unflatten_dense_tensors(flat, group), strict=True
            ):
                g.copy_(value)
        self.pending_reductions = []

    # ------------------------------------------------------------------ messages

    def _buffer(self, name: str, grad: bool) -> torch.Tensor:
        shape, dtype = self.shapes[name]
        dt = torch_dtype(dtype)
        t = torch.empty(tuple(shape or []), dtype=dt)
        return t if self.torch_device is None else t.to(self.torch_device)

    def _post_receives(self) -> dict[tuple, tuple[list, dict[str, torch.Tensor]]]:
        posted = {}
        for a in self.program:
            if a.op != "RECV":
                continue
            key = a.message_key()
            src_rank = self.stage_rank[a.peer_stage]
            works, buffers = [], {}
            for i, name in enumerate(a.tensors):
                buf = self._buffer(name, a.direction == "bwd")
                tag = message_tag(a.direction, a.microbatch, a.peer_stage, i, self.num_stages)
                works.append(dist.irecv(buf, src=src_rank, tag=tag))
                buffers[name] = buf
            posted[key] = (works, buffers)
        return posted

    # ------------------------------------------------------------------ one step

    def step(self, step: int) -> None:
        posted = self._post_receives()
        received: dict[tuple, dict[str, torch.Tensor]] = {}
        produced: dict[tuple[int, int], dict[str, torch.Tensor]] = {}  # (stage, mb) -> outputs
        self.produced = produced
        input_grads: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
        sends: list = []
        step_loss = 0.0
        t0 = time.perf_counter()
        for index, a in enumerate(self.program):
            start = time.perf_counter()
            if a.op == "RECV":
                works, buffers = posted[a.message_key()]
                for w in works:
                    w.wait()
                received[a.message_key()] = buffers
            elif a.op == "SEND":
                dst_rank = self.stage_rank[a.peer_stage]
                for i, name in enumerate(a.tensors):
                    value = self._outgoing(a, name, produced, received, input_grads)
                    tag = message_tag(a.direction, a.microbatch, a.stage, i, self.num_stages)
                    sends.append(dist.isend(value.detach().contiguous(), dst=dst_rank, tag=tag))
            elif a.op == "F":
                step_loss += self._forward(a, step, received, produced)
            elif a.op == "B":
                input_grads[(a.stage, a.microbatch)] = self._backward(
                    a, received, split=self.manifest.schedule.split_backward
                )
            elif a.op == "W":
                self.stages[a.stage].backward_weight(a.microbatch)
            if self.last_gradient_action.get(a.stage) == index:
                self._start_reduction(a.stage)
            self.events.append(
                (
                    a.op,
                    a.stage,
                    a.microbatch,
                    start - t0 + self._offset,
                    time.perf_counter() - t0 + self._offset,
                )
            )
        start = time.perf_counter()
        for w in sends:
            w.wait()
        self.events.append(
            ("WAIT", -1, -1, start - t0 + self._offset, time.perf_counter() - t0 + self._offset)
        )
        if self.training:
            if self.pending_reductions:
                start = time.perf_counter()
                self._finish_reductions()
                self.events.append(
                    (
                        "ALLREDUCE",
                        -1,
                        -1,
                        start - t0 + self._offset,
                        time.perf_counter() - t0 + self._offset,
                    )
                )
            self._sync_shared()
            if self.args.dump_grads and step == 0:
                self._dump_grads()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        if self.last in self.stages and self.training:
            if not math.isfinite(step_loss):
                raise FloatingPointError(f"loss is {step_loss} at step {step}: stopping")
            self.losses.append(step_loss)

    def _outgoing(self, a, name, produced, received, input_grads) -> torch.Tensor:
        if a.direction == "fwd":
            mine = produced.get((a.stage, a.microbatch), {})
            if name in mine:
                return mine[name]
            relay = received.get(("fwd", a.microbatch, a.stage - 1, a.stage), {})
            if name in relay:
                return relay[name]
            raise RuntimeError(
                f"stage {a.stage} must send {name} for micro-batch {a.microbatch} but has not got it"
            )
        # Gradient of a tensor that came from stage a.peer_stage: what this stage's inputs got,
        # plus what came back for it from the next stage when this stage relayed it.
        grad = input_grads.get((a.stage, a.microbatch), {}).get(name)
        relayed = received.get(("bwd", a.microbatch, a.stage + 1, a.stage), {}).get(name)
        if grad is None and relayed is None:
            return torch.zeros(
                tuple(self.shapes[name][0] or []), dtype=torch_dtype(self.shapes[name][1])
            )
        if grad is None:
            return relayed
        return grad if relayed is None else grad + relayed

    def _forward(self, a, step, received, produced) -> float:
        stage = self.stages[a.stage]
        graph_inputs = self.data.inputs(step, self.first_microbatch + a.microbatch)
        incoming = received.get(("fwd", a.microbatch, a.stage - 1, a.stage), {})
        feed = {}
        for t in stage.spec.inputs:
            value = graph_inputs[t.name] if t.source == "graph" else incoming[t.name]
            feed[t.name] = value if self.torch_device is None else value.to(self.torch_device)
        outs = stage.forward(a.microbatch, feed)
        produced[(a.stage, a.microbatch)] = outs
        if a.stage != self.last:
            return 0.0
        finals = [o for o in stage.spec.outputs if "graph" in o.destinations]
        if not self.training:
            self.outputs[self.first_microbatch + a.microbatch] = {
                o.name: outs[o.name].detach().cpu().numpy() for o in finals
            }
            return 0.0
        loss = (
            sum(
                loss_of(
                    outs[o.name],
                    self.data.targets(o, step, self.first_microbatch + a.microbatch),
                    is_classification(o),
                )
                for o in finals
            )
            / self.m
        )
        stage.set_roots(a.microbatch, [loss], [None])
        return float(loss.detach())

    def _backward(self, a, received, split: bool) -> dict[str, torch.Tensor]:
        stage = self.stages[a.stage]
        if a.stage != self.last:
            grads_in = received.get(("bwd", a.microbatch, a.stage + 1, a.stage), {})
            roots, grads = [], []
            outs = {}
            for o in stage.spec.outputs:
                g = grads_in.get(o.name)
                if g is not None:
                    outs[o.name] = g
            saved_outputs = self._saved_outputs(stage, a.microbatch)
            for name, g in outs.items():
                if name in saved_outputs and saved_outputs[name].requires_grad:
                    roots.append(saved_outputs[name])
                    grads.append(g)
            stage.set_roots(a.microbatch, roots, grads)
        return stage.backward_input(a.microbatch) if split else stage.backward(a.microbatch)

    def _saved_outputs(self, stage: StageRunner, microbatch: int) -> dict[str, torch.Tensor]:
        return self.produced.get((stage.index, microbatch), {})

    # ------------------------------------------------------------------ reductions and results

    def _sync_shared(self) -> None:
        for w, ranks, group in self.shared_groups:
            if group is None or self.rank not in ranks:
                continue
            local = [s for s in self.stages.values() if w.name in s.spec.parameters]
            if not local:
                continue
            params = [
                dict(s.module.named_parameters())[s.module.param_names[w.name]] for s in local
            ]
            grad = sum(p.grad if p.grad is not None else torch.zeros_like(p) for p in params)
            dist.all_reduce(grad, group=group)
            for p in params:
                p.grad = grad.clone()

    def _dump_grads(self) -> None:
        out = {}
        for s in self.stages.values():
            named = dict(s.module.named_parameters())
            for onnx_name, attr in s.module.param_names.items():
                p = named.get(attr)
                if p is not None and p.grad is not None:
                    out[f"{s.index}/{onnx_name}"] = p.grad.detach().cpu().numpy()
        np.savez(Path(self.args.out) / f"grads_rank{self.rank}.npz", **out)

    def result(self) -> dict:
        return {
            "rank": self.rank,
            "replica": self.replica,
            "tensor_rank": self.tensor_rank,
            "device": self.device,
            "stages": sorted(self.stages),
            "step_ms": self.step_ms,
            "losses": self.losses,
            "events": self.events,
        }


def forward_action(a) -> bool:
    return a.op == "F" or (a.op in ("SEND", "RECV") and a.direction == "fwd")


def run_rank(args: argparse.Namespace) -> dict:
    rank_state = Rank(args)
    for step in range(args.steps):
        dist.barrier()
        start = time.perf_counter()
        rank_state.step(step)
        rank_state.step_ms.append((time.perf_counter() - start) * 1e3)
        rank_state._offset += time.perf_counter() - start
    dist.barrier()
    if rank_state.outputs:
        np.savez(
            Path(args.out) / f"outputs_rank{rank_state.rank}.npz",
            **{
                f"{mb}/{name}": v
                for mb, outs in rank_state.outputs.items()
                for name, v in outs.items()
            },
        )
    return rank_state.result()


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m runners.worker", description="one rank of a pipeplan run"
    )
    p.add_argument("bundle")
    p.add_argument("--out", required=True, help="folder for per-rank results")
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--mode", choices=["train", "infer"], default="train")
    p.add_argument("--backend", choices=["gloo", "nccl"], default="gloo")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument(
        "--data", default=None, help=".npz with arrays named after graph inputs (and 'targets')"
    )
    p.add_argument(
        "--dump-grads", action="store_true", help="save the first step's gradients (for --check)"
    )
    p.add_argument("--timeout-s", type=float, default=60.0)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    return guarded_rank(args, run_rank)


def guarded_rank(args: argparse.Namespace, body) -> int:
    """Join the process group, run `body(args)` and write its result as `rank<r>.json`;
    on any failure write one line to `errors/rank<r>.txt` (the launcher's error) and exit
    non-zero at once (torchrun then stops the other ranks)."""
    out = Path(args.out)
    (out / "errors").mkdir(parents=True, exist_ok=True)
    rank = int(os.environ.get("RANK", "0"))
    try:
        dist.init_process_group(args.backend, timeout=datetime.timedelta(seconds=args.timeout_s))
        result = body(args)
        (out / f"rank{rank}.json").write_text(json.dumps(result))
        dist.destroy_process_group()
        return 0
    except BaseException as exc:  # any failure: one line for the launcher, then exit
        text = str(exc).strip()
        line = f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}".strip()
        (out / "errors" / f"rank{rank}.txt").write_text(line[:500] + "\n")
        (out / "errors" / f"rank{rank}.traceback").write_text(traceback.format_exc())
        sys.stderr.flush()
        os._exit(1)


if __name__ == "__main__":
    sys.exit(main())
