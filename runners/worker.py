"""One rank of a pipeplan run: `torchrun ... -m runners.worker BUNDLE --out DIR [...]`.

Each rank joins the process group (gloo on CPU, NCCL on GPU), converts the stage models
assigned to its device, and executes its action list from the manifest, in order, every
step: F and B (and W when the schedule splits backward) on its stages; SEND as `isend`
posted as soon as the data exists; RECV waiting on an `irecv` that was posted at the
start of the step, so transfers overlap with compute. Tensors crossing several stage
boundaries are relayed by the stages in between, and their gradients come back the same
way (see the README, "Routing"). After the last action: wait for the sends, all-reduce
the gradients of weights held by several stages (tied embeddings), optimizer step.

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

from exporters.manifest import Manifest
from runners.data import DataSource, is_classification, loss_of, torch_dtype
from runners.stage import StageRunner

MAX_TENSORS_PER_MESSAGE = 256


def message_tag(direction: str, microbatch: int, src_stage: int, tensor: int, stages: int) -> int:
    """A tag unique within a step for every tensor of every message (gloo matches on it)."""
    base = (microbatch * stages + src_stage) * 2 + (1 if direction == "bwd" else 0)
    return base * MAX_TENSORS_PER_MESSAGE + tensor


def device_ranks(manifest: Manifest) -> dict[str, int]:
    """Device id -> rank: devices numbered in order of their first stage."""
    ranks: dict[str, int] = {}
    for st in manifest.stages:
        ranks.setdefault(st.device, len(ranks))
    return ranks


class Rank:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.bundle = Path(args.bundle)
        self.manifest = Manifest.model_validate_json((self.bundle / "manifest.json").read_text())
        self.training = args.mode == "train"
        self.rank = dist.get_rank()
        self.ranks = device_ranks(self.manifest)
        self.device_of_rank = {r: d for d, r in self.ranks.items()}
        self.device = self.device_of_rank[self.rank]
        self.stage_rank = {st.index: self.ranks[st.device] for st in self.manifest.stages}
        self.num_stages = len(self.manifest.stages)
        self.m = self.manifest.microbatches
        self.data = DataSource(self.manifest, self.bundle, seed=args.seed, npz=args.data)
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
                module = convert(str(self.bundle / st.file), seed=args.seed)
                if self.torch_device is not None:
                    module = module.to(self.torch_device)
                self.stages[st.index] = StageRunner(
                    st, module, self.training, recompute=self.recompute
                )
        self.program = [
            a
            for a in self.manifest.schedule.actions[self.device]
            if self.training or _forward_action(a)
        ]
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
            return torch.optim.Adam(params, lr=lr if lr is not None else 1e-3)
        if kind == "momentum":
            return torch.optim.SGD(params, lr=lr if lr is not None else 0.05, momentum=0.9)
        return torch.optim.SGD(params, lr=lr if lr is not None else 0.05)

    def _shared_groups(self):
        """One process group per weight held by stages on several ranks (created on every rank)."""
        groups = []
        for w in self.manifest.shared_weights:
            ranks = sorted({self.stage_rank[s] for s in w.stages})
            group = dist.new_group(ranks) if len(ranks) > 1 else None
            groups.append((w, ranks, group))
        return groups

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
        for a in self.program:
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
        graph_inputs = self.data.inputs(step, a.microbatch)
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
            self.outputs[a.microbatch] = {
                o.name: outs[o.name].detach().cpu().numpy() for o in finals
            }
            return 0.0
        loss = (
            sum(
                loss_of(
                    outs[o.name], self.data.targets(o, step, a.microbatch), is_classification(o)
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
            "device": self.device,
            "stages": sorted(self.stages),
            "step_ms": self.step_ms,
            "losses": self.losses,
            "events": self.events,
        }


def _forward_action(a) -> bool:
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
    out = Path(args.out)
    (out / "errors").mkdir(parents=True, exist_ok=True)
    rank = int(os.environ.get("RANK", "0"))
    torch.manual_seed(args.seed)
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    try:
        dist.init_process_group(args.backend, timeout=datetime.timedelta(seconds=args.timeout_s))
        result = run_rank(args)
        (out / f"rank{rank}.json").write_text(json.dumps(result))
        dist.destroy_process_group()
        return 0
    except (
        BaseException
    ) as exc:  # any failure: one line for the launcher, then exit non-zero at once
        line = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}".strip()
        (out / "errors" / f"rank{rank}.txt").write_text(line[:500] + "\n")
        (out / "errors" / f"rank{rank}.traceback").write_text(traceback.format_exc())
        sys.stderr.flush()
        os._exit(1)


if __name__ == "__main__":
    sys.exit(main())
