"""`pipeplan calibrate`: measure the local device with torch and fit the cost model to it.

    profile = calibrate(device="cpu", models=[ModelRequest("gpt.onnx", ShapeBindings(batch=8))])
    save_profile(profile, "cpu.yaml")          # cost.profile

What is measured (medians of repeats after warm-up; `quick=True` uses small sizes and few
repeats, a few seconds in all), and what it becomes in the profile (`cost.profile.Profile`):

* **GEMM** (`a @ b`, no autograd), square sizes and skinny shapes, fp32, and every half
  type the device runs (bf16 and fp16; tf32 on CUDA). The roofline prices a matrix
  operator of `f` FLOPs at `f / (peak * efficiency(f)) + launch`, with
  `efficiency(f) = compute_efficiency * f / (f + half_efficiency_flops)`; that is
  `t(f) = f / R + h / R + launch` with `R = peak * compute_efficiency`: a straight line in
  `f`. We fit `t = c0 + f / R` to the square GEMMs by least squares on *relative* error
  (rows divided by the measured time, so small and large sizes weigh alike), then set
  `half_efficiency_flops = (c0 - plain_launch) * R` (the intercept beyond one plain
  dispatch, in FLOPs; at least 1). Timings only identify `R`, not how it splits into peak
  and efficiency: with `peak_tflops` given (a vendor figure), `compute_efficiency =
  R / peak`; otherwise we fix `compute_efficiency = 0.9` (the top of the 70-90% band
  cost.devices assumes for large GEMMs) and `peak = R / 0.9`. Every predicted time depends
  on `R` only, so this convention changes no prediction. Half types: the same fit (or
  the best rate when fewer than two sizes ran) gives their `peak_tflops` entry.
* **Elementwise add**, 16 K to 4 M elements (the largest, 3 x 16 MiB, is beyond the caches
  of most CPUs, and below glibc's 32 MiB mmap ceiling, above which every allocation
  page-faults): `bandwidth_GBps` is the streaming rate of `torch.add(a, b, out=c)`
  (3 x 4 bytes per element) at the largest size; the roofline's effective rate
  `B = bandwidth * memory_efficiency` is fitted as `t = c + bytes / B` (relative error)
  on allocating adds (`a + b`, what a model's operators do) of tensors of 1 MiB or more
  (smaller ones are launch-bound); `memory_efficiency = B / bandwidth` (`bandwidth` is
  raised to `B` when caches make `B` larger, so the efficiency stays in (0, 1]).
* **Convolutions** (3x3 and 1x1): recorded with the fitted GEMM model's prediction
  (measured / predicted), as a check; not fitted.
* **Launch overhead**: a one-element add with autograd on (an input that requires grad,
  as in training): `launch_overhead_us`. The plain dispatch (no autograd) is recorded too.
* **Link**: two local processes (`torch.distributed`, gloo; NCCL on CUDA with 2+ GPUs)
  ping-pong messages of 4 B to 16 MB; quiet one-way time = round trip / 2. The runner posts
  its `isend`s from the compute thread while the peer computes too, and on a small host
  that costs more: with gloo, each size is also sent while both processes run a compute
  burst, and the extra time `isend` blocks its caller (busy minus quiet median) is added.
  Alpha-beta is fitted (relative error) to that loaded one-way time: `link:
  {bandwidth_GBps, latency_us, efficiency: 1.0}`; the quiet fit is in `fit.link.quiet`.
  The time `isend` holds its caller while both processes compute is fitted too
  (`send_blocking_us + bytes / send_blocking_GBps`): the simulator holds a sending
  device that long (`planner.simulator`).
* **Optimizer step**: `torch.optim` SGD, momentum and Adam as the runner builds them, one
  `step()` and `zero_grad(set_to_none=True)` over sets of fp32 tensors (few large to many
  small); `t = tensors * per_tensor + params * per_param` per optimizer (relative least
  squares): `optimizer: {adam: {per_tensor_us, per_param_ns}, ...}`, the step tail of
  every iteration (`cost.optimizer`).
* **Operators of models** (`models=`): every distinct operator (by
  `planner.graph.op_signature`) becomes a one-node ONNX model, converted with
  `runners.onnx_to_torch.convert(weights="random")` and timed as the runner runs it:
  forward under autograd, then `torch.autograd.backward` to its inputs that carry a
  gradient and its parameters, with ready-made output gradients. The time of calling an
  empty converted module (forward) and of an empty backward call is measured and
  subtracted (`overhead:`): a stage pays those once, not once per operator.
  *Context correction*: an operator alone runs warmer than inside its model. The whole
  converted model is timed the same way, three times (before, amid and after its
  operators, since a shared machine's speed drifts); the excess of its median time over
  the sum of its operators' isolated times is spread over the operators in proportion to
  the bytes each allocates (forward: its outputs; backward: the gradients of its inputs
  and parameters). That is where it comes from on CPUs: glibc returns the memory freed
  after a backward to the system, and fresh memory faults in page by page (the fitted
  rate, `models.<model>.forward_GBps` / `backward_GBps`, is about 4 GB/s on the VM this
  was written on); a negative excess is taken as 0. Both figures are kept: `ops:
  {signature: {op_type, forward_s, backward_s, isolated_forward_s, isolated_backward_s,
  dtype, model}}`.
  *Concurrency* (`concurrency=N`): while a model's operators are timed, N - 1 other
  processes run that model's forward and backward in a loop, as the other ranks of a
  pipeline on the same host will (on CPUs, cores share caches, memory bandwidth and, on a
  virtual machine, more: framework-bound work runs up to 1.5x slower with both cores busy
  on the 2-core VM this was written on).

*Pipeline probe* (`pipeline=N`, N >= 2): after the operators, each model runs as an
  N-stage `params` split under the runner (`runners.probe`: plan, export, `pipeplan run`
  with a trace); the operators this calibration owns for the model are scaled by one
  forward and one backward factor so that the predicted stage times add up to the
  measured F and B actions (on the 2-core VM: 1.0x for ResNet up to 1.7x for the MLP,
  whose sub-millisecond operators suffer most from sharing cores with the peer rank and
  gloo's threads). Then the link's latency is fitted so that the simulator, fed every
  probe's measured stage times, reproduces the probes' measured iterations
  (`fit.link.pipeline`; the ping-pong's latency is kept as `fit.link.ping_pong_latency_us`):
  on a host whose cores all compute, a message waits for a core, which a ping-pong
  between idle processes never shows. A model that cannot be split or run keeps its
  operator times (`models.<model>.pipeline.error`).

Threads: `threads` (default `torch.get_num_threads()`, which follows OMP_NUM_THREADS) is
set for every measurement and recorded. On a shared machine, repeat and compare.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cost.profile import OpTiming, OptimizerFit, Profile, ProfileDevice, ProfileLink
from planner.errors import PipeplanError
from planner.shapes import ShapeBindings

#: compute_efficiency used when no vendor peak is given (see the module docstring).
DEFAULT_COMPUTE_EFFICIENCY = 0.9

#: Elementwise adds of at least this many elements (1 MiB of fp32) fit the bandwidth.
ELEMENTWISE_FIT_MIN_NUMEL = 1 << 18

#: Repeats of the (microsecond) empty-module measurement, even in quick mode.
OVERHEAD_REPEATS = 200

Progress = Callable[[str, int, int], None]  # (what, done, total)


@dataclass(frozen=True)
class ModelRequest:
    """A model whose operators to time, with the shapes to bind."""

    path: str
    bindings: ShapeBindings = field(default_factory=ShapeBindings)


@dataclass(frozen=True)
class Sizes:
    """What to measure, and how long: full or `quick`."""

    gemm_square: tuple[int, ...]
    gemm_skinny: tuple[tuple[int, int, int], ...]
    half_square: tuple[int, ...]
    elementwise: tuple[int, ...]  # elements per tensor
    conv: tuple[tuple[int, int, int, int, int], ...]  # N, C, HW, K, kernel
    pingpong: tuple[int, ...]  # bytes
    optimizer: tuple[tuple[int, int], ...]  # (tensors, elements per tensor)
    budget_s: float  # per measurement
    rounds: int  # interleaved rounds of the GEMM, elementwise and ping-pong sweeps
    min_repeats: int
    max_repeats: int
    warmup: int

    @classmethod
    def full(cls) -> Sizes:
        return cls(
            gemm_square=(64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048),
            gemm_skinny=((8, 1024, 1024), (64, 1024, 1024), (256, 2048, 512), (4096, 64, 64)),
            half_square=(256, 512, 1024),
            elementwise=(1 << 14, 1 << 16, 1 << 18, 1 << 20, 1 << 21, 1 << 22),
            conv=(
                (8, 64, 32, 32, 3),
                (8, 128, 16, 128, 3),
                (32, 16, 32, 32, 3),
                (8, 64, 32, 128, 1),
            ),
            pingpong=(4, 1 << 10, 1 << 14, 1 << 16, 1 << 18, 1 << 20, 1 << 22, 1 << 24),
            optimizer=((2, 1 << 20), (8, 1 << 18), (32, 1 << 14), (128, 1 << 10), (4, 1 << 21)),
            budget_s=0.4,
            rounds=3,
            min_repeats=7,
            max_repeats=200,
            warmup=3,
        )

    @classmethod
    def quick(cls) -> Sizes:
        return cls(
            gemm_square=(32, 64, 128, 256),
            gemm_skinny=((8, 256, 256),),
            half_square=(128,),
            elementwise=(1 << 12, 1 << 16, 1 << 18),
            conv=((2, 16, 16, 16, 3),),
            pingpong=(4, 1 << 12, 1 << 16, 1 << 20),
            optimizer=((2, 1 << 12), (16, 1 << 8), (4, 1 << 14)),
            budget_s=0.02,
            rounds=1,
            min_repeats=3,
            max_repeats=30,
            warmup=1,
        )


# ------------------------------------------------------------------ timing


class Timer:
    """Median wall time of a callable on one device (synchronising CUDA around each call)."""

    def __init__(self, device: torch.device, sizes: Sizes):
        self.device = device
        self.sizes = sizes
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def once(self, fn: Callable[[], object]) -> float:
        self.sync()
        start = time.perf_counter()
        fn()
        self.sync()
        return time.perf_counter() - start

    def median(self, fn: Callable[[], object], budget_s: float | None = None) -> float:
        budget = self.sizes.budget_s if budget_s is None else budget_s
        first = 0.0
        for _ in range(max(1, self.sizes.warmup)):
            first = self.once(fn)
        n = int(budget / max(first, 1e-7))
        n = max(self.sizes.min_repeats, min(self.sizes.max_repeats, n))
        return statistics.median(self.once(fn) for _ in range(n))


# ------------------------------------------------------------------ fits (numpy only)


def fit_line_relative(x: Sequence[float], t: Sequence[float]) -> tuple[float, float]:
    """Least squares `t = a + b x` on relative error (each row divided by t): (a, b).

    With a negative intercept the line is refitted through the origin (a = 0).
    """
    x_arr = np.asarray(x, dtype=float)
    t_arr = np.asarray(t, dtype=float)
    if len(x_arr) == 0:
        raise ValueError("no points to fit")
    w = 1.0 / t_arr
    if len(x_arr) >= 2:
        a_mat = np.stack([w, x_arr * w], axis=1)
        (a, b), *_ = np.linalg.lstsq(a_mat, np.ones_like(t_arr), rcond=None)
        if a >= 0 and b > 0:
            return float(a), float(b)
    b = float(np.sum(x_arr * w) / np.sum((x_arr * w) ** 2))  # through the origin
    return 0.0, b


def relative_errors(predicted: Sequence[float], measured: Sequence[float]) -> list[float]:
    return [(p - m) / m for p, m in zip(predicted, measured, strict=True)]


def mape(predicted: Sequence[float], measured: Sequence[float]) -> float:
    errs = relative_errors(predicted, measured)
    return float(100.0 * np.mean(np.abs(errs))) if errs else 0.0


# ------------------------------------------------------------------ microbenchmarks


def _rounds(timer: Timer, fns: list[Callable[[], object]]) -> list[float]:
    """Median time of each callable, over `sizes.rounds` rounds that each visit all of them
    (a shared machine's speed drifts: interleaving spreads a slow spell over every point)."""
    rounds = max(1, timer.sizes.rounds)
    budget = timer.sizes.budget_s / rounds
    per_fn: list[list[float]] = [[] for _ in fns]
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            per_fn[i].append(timer.median(fn, budget_s=budget))
    return [statistics.median(v) for v in per_fn]


def _gemm_points(timer: Timer, shapes, dtype: torch.dtype) -> list[dict]:
    points = []
    operands = [
        (
            torch.randn(m, k, device=timer.device).to(dtype),
            torch.randn(k, n, device=timer.device).to(dtype),
        )
        for m, k, n in shapes
    ]
    times = _rounds(timer, [lambda a=a, b=b: a @ b for a, b in operands])
    for (m, k, n), seconds in zip(shapes, times, strict=True):
        flops = 2 * m * k * n
        points.append(
            {
                "m": m,
                "k": k,
                "n": n,
                "flops": flops,
                "seconds": seconds,
                "gflops": flops / seconds / 1e9,
            }
        )
    return points


def _launch_points(timer: Timer) -> dict:
    x = torch.ones(1, device=timer.device)
    y = torch.ones(1, device=timer.device, requires_grad=True)
    plain = timer.median(lambda: torch.add(x, x), budget_s=timer.sizes.budget_s / 2)
    with torch.enable_grad():
        grad = timer.median(lambda: torch.add(y, y), budget_s=timer.sizes.budget_s / 2)
    return {"plain_s": plain, "autograd_s": grad}


def _elementwise_points(timer: Timer) -> list[dict]:
    points = []
    fns = []
    for numel in timer.sizes.elementwise:
        a = torch.rand(numel, device=timer.device)
        b = torch.rand(numel, device=timer.device)
        c = torch.empty_like(a)
        fns += [lambda a=a, b=b, c=c: torch.add(a, b, out=c), lambda a=a, b=b: a + b]
    times = _rounds(timer, fns)
    for i, numel in enumerate(timer.sizes.elementwise):
        streaming, allocating = times[2 * i], times[2 * i + 1]
        nbytes = 3 * 4 * numel
        points.append(
            {
                "numel": numel,
                "bytes": nbytes,
                "streaming_s": streaming,
                "allocating_s": allocating,
                "streaming_GBps": nbytes / streaming / 1e9,
                "allocating_GBps": nbytes / allocating / 1e9,
            }
        )
    return points


def _conv_points(timer: Timer) -> list[dict]:
    points = []
    for n, c, hw, k, kernel in timer.sizes.conv:
        x = torch.randn(n, c, hw, hw, device=timer.device)
        w = torch.randn(k, c, kernel, kernel, device=timer.device)
        pad = kernel // 2
        seconds = timer.median(
            lambda x=x, w=w, pad=pad: torch.nn.functional.conv2d(x, w, padding=pad)
        )
        flops = 2 * n * k * c * kernel * kernel * hw * hw
        points.append(
            {
                "n": n,
                "c": c,
                "hw": hw,
                "k": k,
                "kernel": kernel,
                "flops": flops,
                "seconds": seconds,
                "gflops": flops / seconds / 1e9,
            }
        )
    return points


def _make_optimizer(kind: str, params: list[torch.Tensor]) -> torch.optim.Optimizer:
    """The optimizer the runner builds (`runners.worker`)."""
    if kind == "adam":
        return torch.optim.Adam(params, lr=1e-3)
    if kind == "momentum":
        return torch.optim.SGD(params, lr=0.05, momentum=0.9)
    return torch.optim.SGD(params, lr=0.05)


def _optimizer_points(timer: Timer) -> list[dict]:
    """One optimizer step and `zero_grad(set_to_none=True)`, as the runner does once per
    iteration, on sets of fp32 tensors, for each optimizer the planner knows."""
    points = []
    for kind in ("sgd", "momentum", "adam"):
        for count, numel in timer.sizes.optimizer:
            params = [
                torch.zeros(numel, device=timer.device, requires_grad=True) for _ in range(count)
            ]
            grads = [torch.full_like(p, 1e-3) for p in params]
            opt = _make_optimizer(kind, params)

            def step(params=params, grads=grads, opt=opt):
                for p, g in zip(params, grads, strict=True):
                    p.grad = g
                opt.step()
                opt.zero_grad(set_to_none=True)

            seconds = timer.median(step)
            points.append({"optimizer": kind, "tensors": count, "numel": numel, "seconds": seconds})
    return points


def fit_optimizer(points: list[dict]) -> tuple[dict[str, OptimizerFit], dict]:
    """Per optimizer: `t = tensors * per_tensor + params * per_param`, least squares on
    relative error (rows divided by the measured time), coefficients kept >= 0."""
    fits, report = {}, {}
    for kind in dict.fromkeys(p["optimizer"] for p in points):
        pts = [p for p in points if p["optimizer"] == kind]
        a = np.array([[p["tensors"], p["tensors"] * p["numel"]] for p in pts], dtype=float)
        t = np.array([p["seconds"] for p in pts])
        coef, *_ = np.linalg.lstsq(a / t[:, None], np.ones(len(pts)), rcond=None)
        per_tensor, per_param = (max(0.0, float(c)) for c in coef)
        if per_param == 0.0:  # refit the per-tensor part alone
            per_tensor = float(np.sum(a[:, 0] / t) / np.sum((a[:, 0] / t) ** 2))
        predicted = a @ np.array([per_tensor, per_param])
        fits[kind] = OptimizerFit(
            per_tensor_us=float(f"{per_tensor * 1e6:.5g}"),
            per_param_ns=float(f"{per_param * 1e9:.5g}"),
        )
        report[kind] = {"mape_percent": round(mape(list(predicted), list(t)), 2)}
    return fits, {"model": "t = tensors * per_tensor + params * per_param"} | report


def _half_dtypes(device: torch.device) -> list[tuple[str, torch.dtype]]:
    out = [("bf16", torch.bfloat16), ("fp16", torch.float16)]
    return out


# ------------------------------------------------------------------ link: two processes


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
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH")) if p
        )
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "runners.calibrate",
                    "pingpong",
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


def _pingpong_main(argv: list[str]) -> int:
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


def loaded_one_way(point: dict) -> float:
    """One-way seconds between two busy processes: the quiet ping-pong's one-way time plus
    the extra time `isend` blocks its caller while both compute."""
    extra = point.get("post_busy_s", 0.0) - point.get("post_idle_s", 0.0)
    return point["one_way_s"] + max(0.0, extra)


def fit_link(points: list[dict], backend: str) -> tuple[ProfileLink, dict]:
    sizes = [p["bytes"] for p in points]
    quiet = [p["one_way_s"] for p in points]
    loaded = [loaded_one_way(p) for p in points]
    alpha, inv_beta = fit_line_relative(sizes, loaded)
    link = ProfileLink(
        bandwidth_GBps=1.0 / inv_beta / 1e9, latency_us=alpha * 1e6, efficiency=1.0, backend=backend
    )
    posts = [p for p in points if "post_busy_s" in p]
    send_fit = None
    if len(posts) >= 2:
        # the time isend holds its caller while both processes compute: the runner's SEND
        s_alpha, s_inv_beta = fit_line_relative(
            [p["bytes"] for p in posts], [p["post_busy_s"] for p in posts]
        )
        s_alpha = max(0.0, s_alpha)
        link = link.model_copy(
            update={
                "send_blocking_us": s_alpha * 1e6,
                "send_blocking_GBps": 1.0 / s_inv_beta / 1e9 if s_inv_beta > 0 else None,
            }
        )
        send_fit = {
            "model": "isend blocking (both processes computing) = send_blocking_us + bytes / send_blocking_GBps",
            "mape_percent": round(
                mape(
                    [s_alpha + p["bytes"] * max(s_inv_beta, 0.0) for p in posts],
                    [p["post_busy_s"] for p in posts],
                ),
                2,
            ),
        }
    q_alpha, q_inv_beta = fit_line_relative(sizes, quiet)
    fit = {
        "model": "one_way_s = latency + bytes / bandwidth (relative least squares) on the "
        "loaded one-way time: quiet ping-pong + extra isend blocking while both processes compute",
        "mape_percent": round(mape([alpha + n * inv_beta for n in sizes], loaded), 2),
        "quiet": {
            "latency_us": round(q_alpha * 1e6, 2),
            "bandwidth_GBps": round(1.0 / q_inv_beta / 1e9, 4),
            "mape_percent": round(mape([q_alpha + n * q_inv_beta for n in sizes], quiet), 2),
        },
    }
    if send_fit is not None:
        fit["send_blocking"] = send_fit
    return link, fit


# ------------------------------------------------------------------ operators of models


def _float_dtype_name(elem_type: int) -> str:
    import onnx

    return {
        onnx.TensorProto.FLOAT16: "fp16",
        onnx.TensorProto.BFLOAT16: "bf16",
    }.get(elem_type, "fp32")


def single_node_model(mg, node_name: str):
    """A one-operator ONNX model of `node_name` of `mg` (a `planner.graph.ModelGraph`).

    Inputs that carry data (roles `g` and `n` of the signature) become graph inputs;
    parameters (`w`) initializers (random values; `convert(weights="random")` re-draws
    them); constants (`k`) initializers with their values when known, else zeros. The
    model's opsets and local functions are kept.
    """
    import onnx
    from onnx import helper, numpy_helper

    data = mg.graph.nodes[node_name]
    proto = mg.model.graph.node[data["order"]]
    roles = _roles(data, len(proto.input))
    inputs, inits, seen = [], [], set()
    for tensor, role in zip(proto.input, roles, strict=True):
        if not tensor or tensor in seen:
            continue
        seen.add(tensor)
        info = mg.tensors.get(tensor)
        if info is None or info.shape is None:
            raise ValueError(f"input {tensor} has no known shape")
        if role in ("g", "n"):
            inputs.append(helper.make_tensor_value_info(tensor, info.dtype, list(info.shape)))
            continue
        value = mg.constants.get(tensor) if role == "k" else None
        np_dtype = helper.tensor_dtype_to_np_dtype(info.dtype)
        if value is None or tuple(np.shape(value)) != tuple(info.shape):
            value = (
                np.random.default_rng(0).normal(0, 0.02, info.shape).astype(np_dtype)
                if role == "w"
                else np.zeros(info.shape, dtype=np_dtype)
            )
        inits.append(numpy_helper.from_array(np.asarray(value, dtype=np_dtype), tensor))
    outputs = []
    for tensor in proto.output:
        if not tensor:
            continue
        info = mg.tensors.get(tensor)
        if info is None:
            outputs.append(helper.make_empty_tensor_value_info(tensor))
        else:
            shape = None if info.shape is None else list(info.shape)
            outputs.append(helper.make_tensor_value_info(tensor, info.dtype, shape))
    node = onnx.NodeProto()
    node.CopyFrom(proto)
    graph = helper.make_graph([node], "op", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=list(mg.model.opset_import))
    model.ir_version = mg.model.ir_version
    for fn in mg.model.functions:
        model.functions.append(fn)
    return model


def _roles(data: dict, n_inputs: int) -> list[str]:
    """Input roles of a graph node (`w`, `g`, `n`, `k` or `-`; see `op_signature`)."""
    roles = list(data["input_roles"])
    if len(roles) != n_inputs:
        raise ValueError("the graph node and the ONNX node disagree on the inputs")
    return roles


def _sample_input(info, role: str, node_proto, position: int, mg, device) -> torch.Tensor:
    from runners.convert.weights import torch_dtype

    shape = tuple(info.shape)
    dtype = torch_dtype(info.dtype)
    if dtype.is_floating_point:
        value = torch.rand(shape, device=device).to(dtype) + 0.5
        return value.requires_grad_(role == "g")
    if dtype == torch.bool:
        return torch.rand(shape, device=device) > 0.5
    if node_proto.op_type in ("Gather", "GatherElements") and position == 1:
        data = mg.tensors.get(node_proto.input[0])
        axis = next((a.i for a in node_proto.attribute if a.name == "axis"), 0)
        if data is not None and data.shape:
            high = int(data.shape[axis % len(data.shape)])
            return torch.randint(0, max(1, high), shape, device=device, dtype=dtype)
    return torch.zeros(shape, dtype=dtype, device=device)


class OpTimer:
    """Times converted one-operator modules the way the runner runs a stage."""

    def __init__(self, timer: Timer):
        self.timer = timer
        self.overhead = {"forward_call_s": 0.0, "backward_call_s": 0.0}

    def measure_overhead(self) -> dict[str, float]:
        """An empty converted module (Identity): the forward call, and a backward call."""
        from onnx import TensorProto, helper

        from runners.onnx_to_torch import convert

        graph = helper.make_graph(
            [helper.make_node("Identity", ["x"], ["y"])],
            "empty",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 64])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 64])],
        )
        gm = convert(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
        gm = gm.to(self.timer.device)
        x = torch.rand(8, 64, device=self.timer.device, requires_grad=True)
        fwd, bwd = self._time(gm, [x], [x], min_repeats=OVERHEAD_REPEATS)
        self.overhead = {"forward_call_s": fwd, "backward_call_s": bwd or 0.0}
        return self.overhead

    def _time(
        self,
        gm,
        args: list[torch.Tensor],
        leaves: list[torch.Tensor],
        min_repeats: int | None = None,
    ):
        """Median (forward_s, backward_s or None) of `gm(*args)` and its backward.

        Only the module call and the `torch.autograd.backward` call are timed: the output
        gradients (ones) are made beforehand, as the runner receives them from the next stage.
        """
        targets = leaves + [p for p in gm.parameters() if p.requires_grad]
        timer = self.timer
        state: dict = {}

        def forward():
            with torch.enable_grad():
                state["outs"] = gm(*args)

        def prepare():
            outs = state["outs"]
            outs = outs if isinstance(outs, tuple | list) else (outs,)
            roots = [o for o in outs if isinstance(o, torch.Tensor) and o.requires_grad]
            state["roots"] = roots
            state["grads"] = [torch.ones_like(r) for r in roots]
            return bool(roots) and bool(targets)

        def backward():
            torch.autograd.backward(state["roots"], state["grads"], inputs=targets)

        def clear():
            state.clear()
            for leaf in leaves:
                leaf.grad = None

        start = time.perf_counter()
        has_backward = False
        warmup = max(1, timer.sizes.warmup)
        for _ in range(warmup):
            forward()
            has_backward = prepare()
            if has_backward:
                backward()
            clear()
        per_rep = (time.perf_counter() - start) / warmup
        n = int(timer.sizes.budget_s / max(per_rep, 1e-7))
        n = max(min_repeats or timer.sizes.min_repeats, min(timer.sizes.max_repeats, n))
        forward_times: list[float] = []
        backward_times: list[float] = []
        for _ in range(n):
            forward_times.append(timer.once(forward))
            if has_backward:
                prepare()
                backward_times.append(timer.once(backward))
            clear()
        fwd = statistics.median(forward_times)
        bwd = statistics.median(backward_times) if backward_times else None
        return fwd, bwd

    def time_node(self, mg, node_name: str) -> tuple[float, float]:
        """(forward_s, backward_s) of one operator of `mg`, call overheads subtracted."""
        from runners.onnx_to_torch import convert

        model = single_node_model(mg, node_name)
        gm = convert(model, weights="random").to(self.timer.device)
        data = mg.graph.nodes[node_name]
        proto = mg.model.graph.node[data["order"]]
        roles = _roles(data, len(proto.input))
        by_name: dict[str, torch.Tensor] = {}
        for pos, (tensor, role) in enumerate(zip(proto.input, roles, strict=True)):
            if tensor and role in ("g", "n") and tensor not in by_name:
                by_name[tensor] = _sample_input(
                    mg.tensors[tensor], role, proto, pos, mg, self.timer.device
                )
        args = [by_name[name] for name in gm.input_names]
        leaves = [a for a in args if a.requires_grad]
        fwd, bwd = self._time(gm, args, leaves)
        fwd = max(0.0, fwd - self.overhead["forward_call_s"])
        bwd = 0.0 if bwd is None else max(0.0, bwd - self.overhead["backward_call_s"])
        return fwd, bwd


def _whole_model_inputs(mg, names: list[str], device) -> list[torch.Tensor]:
    """Sample graph inputs for a whole model: integer ids below the table they index."""
    from runners.convert.weights import torch_dtype

    bounds: dict[str, int] = {}
    for _, data in mg.graph.nodes(data=True):
        if data["op_type"] == "Gather" and len(data["inputs"]) > 1:
            table = mg.tensors.get(data["inputs"][0])
            if table is not None and table.shape:
                ids = data["inputs"][1]
                bounds[ids] = min(bounds.get(ids, table.shape[0]), table.shape[0])
    out = []
    for name in names:
        info = mg.tensors[name]
        dtype = torch_dtype(info.dtype)
        shape = tuple(info.shape)
        if dtype.is_floating_point:
            out.append(torch.randn(shape, device=device).to(dtype))
        elif dtype == torch.bool:
            out.append(torch.rand(shape, device=device) > 0.5)
        else:
            high = max(1, bounds.get(name, 16))
            out.append(torch.randint(0, high, shape, device=device, dtype=dtype))
    return out


def time_whole_model(
    op_timer: OpTimer, mg, path: str, cache: dict | None = None
) -> tuple[float, float]:
    """(forward_s, backward_s) of the whole converted model, as one stage of it runs.

    `cache` (a dict) keeps the converted module and inputs between calls."""
    from runners.onnx_to_torch import convert

    cache = {} if cache is None else cache
    if "module" not in cache:
        gm = convert(path, weights="random").to(op_timer.timer.device)
        cache["module"] = gm
        cache["args"] = _whole_model_inputs(mg, list(gm.input_names), op_timer.timer.device)
    fwd, bwd = op_timer._time(cache["module"], cache["args"], [])
    return fwd, bwd or 0.0


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
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH")) if p
        )
        for i in range(self.count):
            ready = Path(self.tmp.name) / f"ready{i}"
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "runners.calibrate", "load", spec, str(ready)],
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


def _load_main(argv: list[str]) -> int:
    """`python -m runners.calibrate load SPEC_JSON READY_FILE`: loop a model until killed."""
    from planner.graph import load_graph
    from runners.onnx_to_torch import convert

    spec, ready = json.loads(argv[0]), Path(argv[1])
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    bindings = ShapeBindings(
        dims=spec["dims"],
        batch=spec["batch"],
        input_shapes={k: tuple(v) for k, v in spec["input_shapes"].items()},
    )
    mg = load_graph(spec["path"], bindings)
    gm = convert(spec["path"], weights="random")
    args = _whole_model_inputs(mg, list(gm.input_names), torch.device("cpu"))
    params = [p for p in gm.parameters() if p.requires_grad]
    first = True
    while True:
        with torch.enable_grad():
            outs = gm(*args)
        outs = outs if isinstance(outs, tuple | list) else (outs,)
        roots = [o for o in outs if isinstance(o, torch.Tensor) and o.requires_grad]
        if roots and params:
            torch.autograd.backward(roots, [torch.ones_like(r) for r in roots], inputs=params)
        if first:
            ready.write_text("ready")
            first = False


def _model_key(req: ModelRequest) -> str:
    b = req.bindings
    parts = [Path(req.path).name]
    if b.batch is not None:
        parts.append(f"batch={b.batch}")
    parts += [f"{k}={v}" for k, v in sorted(b.dims.items())]
    parts += [f"{k}={'x'.join(map(str, v))}" for k, v in sorted(b.input_shapes.items())]
    return " ".join(parts)


class _ModelOps:
    """The operator part of a calibration: per-signature timings, whole-model scales."""

    def __init__(
        self,
        op_timer: OpTimer,
        extend: Profile | None,
        context: bool,
        concurrency: int = 1,
        threads: int = 1,
    ):
        self.op_timer = op_timer
        self.context = context
        self.concurrency = concurrency
        self.threads = threads
        self.overheads: dict[str, dict[str, float]] = {}
        self.loads: list[BackgroundLoad] = []
        self.ops: dict[str, OpTiming] = dict(extend.ops) if extend is not None else {}
        self.reports: dict[str, dict] = dict(extend.models) if extend is not None else {}
        self.isolated: dict[str, tuple[float, float]] = {}
        self.owner: dict[str, str] = {}
        self.failures: list[str] = []
        self.runs: list[tuple[ModelRequest, object, dict]] = []

    def plan_steps(self, requests: Sequence[ModelRequest]) -> list[tuple[str, Callable[[], None]]]:
        from planner.graph import load_graph

        steps: list[tuple[str, Callable[[], None]]] = []
        for req in requests:
            mg = load_graph(req.path, req.bindings)
            key = _model_key(req)
            whole: dict = {}
            self.runs.append((req, mg, whole))
            first = len(steps)
            op_steps = []
            for name, data in mg.graph.nodes(data=True):
                sig = data["signature"]
                if data["folded"] or sig in self.ops or sig in self.owner:
                    continue
                self.owner[sig] = key
                op_steps.append(
                    (f"{data['op_type']} of {Path(req.path).name}", self._op_step(mg, name, sig))
                )
            if self.context:
                # the whole model before, amid and after its operators: the machine's speed
                # drifts, and the ratio must compare like with like
                whole_step = (f"whole {Path(req.path).name}", self._whole_step(mg, req, whole))
                half = len(op_steps) // 2
                op_steps = [whole_step, *op_steps[:half], whole_step, *op_steps[half:], whole_step]
            steps += op_steps
            if self.concurrency > 1:  # the other processes run this model meanwhile
                load = BackgroundLoad(req, self.concurrency - 1, self.threads)
                self.loads.append(load)
                steps[first:] = [
                    (
                        f"{self.concurrency - 1} loaded core(s) for {Path(req.path).name}",
                        load.start,
                    ),
                    (f"operator call overhead, {Path(req.path).name}", self._overhead_step(key)),
                    *steps[first:],
                    ("stopping the load", load.stop),
                ]
            else:
                steps.insert(first, ("operator call overhead", self._overhead_step(key)))
        return steps

    def _overhead_step(self, key: str) -> Callable[[], None]:
        def run() -> None:
            self.overheads[key] = dict(self.op_timer.measure_overhead())

        return run

    def _op_step(self, mg, name: str, sig: str) -> Callable[[], None]:
        def run() -> None:
            try:
                self.isolated[sig] = self.op_timer.time_node(mg, name)
            except Exception as exc:  # an op the converter or torch cannot run: roofline
                text = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
                op = mg.graph.nodes[name]["op_type"]
                self.failures.append(f"{op} in {Path(mg.path).name}: {type(exc).__name__} {text}")

        return run

    def _whole_step(self, mg, req: ModelRequest, whole: dict) -> Callable[[], None]:
        def run() -> None:
            if "error" in whole:
                return
            try:
                fwd, bwd = time_whole_model(self.op_timer, mg, str(req.path), whole)
                whole.setdefault("forward", []).append(fwd)
                whole.setdefault("backward", []).append(bwd)
            except Exception as exc:
                text = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
                whole["error"] = f"{type(exc).__name__} {text}"

        return run

    def _isolated_of(self, sig: str) -> tuple[float, float] | None:
        if sig in self.isolated:
            return self.isolated[sig]
        known = self.ops.get(sig)
        if known is None:
            return None
        return (
            known.isolated_forward_s if known.isolated_forward_s is not None else known.forward_s,
            known.isolated_backward_s
            if known.isolated_backward_s is not None
            else known.backward_s,
        )

    def apply_probe(self, req: ModelRequest, mg, profile: Profile, stages: int) -> bool:
        """Run `req` as a pipeline (`runners.probe`) and scale the operators this calibration
        owns for it by the measured forward and backward factors."""
        from runners.probe import context_factors, replay_record, run_probe

        key = _model_key(req)
        report = self.reports.setdefault(key, {})
        try:
            probe = run_probe(profile, req.path, req.bindings, stages=stages)
        except Exception as exc:  # the model cannot be split or run: keep the op times
            text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            report["pipeline"] = {"error": f"{type(exc).__name__} {text}"}
            return False
        owned_sigs = {sig for sig, owner in self.owner.items() if owner == key and sig in self.ops}
        owned = {
            name: (self.ops[d["signature"]].forward_s, self.ops[d["signature"]].backward_s)
            for name, d in mg.graph.nodes(data=True)
            if d["signature"] in owned_sigs
        }
        factors = context_factors(probe["stages"], owned)
        for sig in owned_sigs:
            op = self.ops[sig]
            self.ops[sig] = op.model_copy(
                update={
                    "forward_s": op.forward_s * factors["forward_factor"],
                    "backward_s": op.backward_s * factors["backward_factor"],
                }
            )
        report["pipeline"] = {
            "stages": stages,
            "split": [f"{s.layers[0]} .. {s.layers[-1]}" for s in probe["plan"].stages],
            "forward_factor": round(factors["forward_factor"], 4),
            "backward_factor": round(factors["backward_factor"], 4),
            "per_stage_ms": [
                {
                    (k[:-2] + "_ms" if k.endswith("_s") else k): (
                        round(v * 1e3, 4) if k.endswith("_s") else v
                    )
                    for k, v in st.items()
                    if k != "nodes"
                }
                for st in probe["stages"]
            ],
            "predicted_iteration_ms_before": round(probe["predicted_iteration_s"] * 1e3, 3),
            "measured_iteration_ms": round(probe["measured_iteration_s"] * 1e3, 3),
            "replay": replay_record(probe),
        }
        return True

    def finish(self) -> None:
        """Spread each model's context excess over its new operators by bytes allocated."""
        for req, mg, whole in self.runs:
            key = _model_key(req)
            call = self.overheads.get(key, self.op_timer.overhead)
            nodes = [d for _, d in mg.graph.nodes(data=True) if not d["folded"]]
            times = [self._isolated_of(d["signature"]) for d in nodes]
            timed = [(d, t) for d, t in zip(nodes, times, strict=True) if t is not None]
            sum_f = sum(t[0] for _, t in timed)
            sum_b = sum(t[1] for _, t in timed)
            out_bytes = sum(_allocated_bytes(mg, d)[0] for d, _ in timed)
            grad_bytes = sum(_allocated_bytes(mg, d)[1] for d, t in timed if t[1] > 0)
            per_byte_f = per_byte_b = 0.0
            report: dict = {
                "concurrency": self.concurrency,
                "call_overhead_s": call,
                "operators": len(nodes),
                "timed_operators": len(timed),
                "sum_isolated_forward_s": sum_f,
                "sum_isolated_backward_s": sum_b,
                "forward_output_bytes": out_bytes,
                "backward_gradient_bytes": grad_bytes,
            }
            if whole.get("forward") and timed:
                whole_f = statistics.median(whole["forward"])
                whole_b = statistics.median(whole["backward"])
                excess_f = whole_f - call["forward_call_s"] - sum_f
                excess_b = whole_b - call["backward_call_s"] - sum_b
                per_byte_f = max(0.0, excess_f) / out_bytes if out_bytes else 0.0
                per_byte_b = max(0.0, excess_b) / grad_bytes if grad_bytes else 0.0
                report |= {
                    "whole_forward_s": whole_f,
                    "whole_backward_s": whole_b,
                    "whole_rounds_ms": [
                        [round(1e3 * f, 3), round(1e3 * b, 3)]
                        for f, b in zip(whole["forward"], whole["backward"], strict=True)
                    ],
                    "forward_excess_s": excess_f,
                    "backward_excess_s": excess_b,
                    "forward_GBps": round(1e-9 / per_byte_f, 3) if per_byte_f else None,
                    "backward_GBps": round(1e-9 / per_byte_b, 3) if per_byte_b else None,
                }
            elif "error" in whole:
                report["whole_error"] = whole["error"]
            self.reports[key] = report
            whole.pop("module", None)  # free the converted model
            whole.pop("args", None)
            for _, data in mg.graph.nodes(data=True):
                sig = data["signature"]
                if data["folded"] or self.owner.get(sig) != key or sig not in self.isolated:
                    continue
                f, b = self.isolated[sig]
                out_b, grad_b = _allocated_bytes(mg, data)
                self.ops[sig] = OpTiming(
                    op_type=data["op_type"],
                    forward_s=f + per_byte_f * out_b,
                    backward_s=b + per_byte_b * grad_b if b > 0 else 0.0,
                    isolated_forward_s=f,
                    isolated_backward_s=b,
                    dtype=_op_dtype(mg, data),
                    model=Path(req.path).name,
                )


def _allocated_bytes(mg, data: dict) -> tuple[int, int]:
    """(bytes of the outputs, bytes of the gradients backward makes: inputs that carry one
    and parameters) of an operator."""
    outs = sum(
        mg.tensors[t].nbytes for t in data["outputs"] if t in mg.tensors and mg.tensors[t].is_float
    )
    grads = sum(
        mg.tensors[t].nbytes
        for t, role in zip(data["inputs"], data["input_roles"], strict=True)
        if role in ("g", "w") and t in mg.tensors and mg.tensors[t].is_float
    )
    return outs, grads


def _op_dtype(mg, data: dict) -> str:
    for tensor in (*data["outputs"], *data["inputs"]):
        info = mg.tensors.get(tensor)
        if info is not None and info.is_float:
            return _float_dtype_name(info.dtype)
    return "fp32"


# ------------------------------------------------------------------ the whole calibration


def _machine(device: torch.device) -> dict:
    info: dict = {
        "system": platform.system(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = props.name
        info["gpu_count"] = torch.cuda.device_count()
        info["cuda"] = torch.version.cuda
    return info


def _memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory / 1e9
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError, AttributeError):
        return 16.0


def _device_name(device: torch.device, threads: int, machine: dict) -> str:
    if device.type == "cuda":
        return f"{machine.get('gpu', 'GPU')} (measured)"
    cpu = machine.get("cpu_model", "CPU")
    return f"CPU {cpu} ({threads} thread{'s' * (threads != 1)}, measured)"


def calibrate(
    device: str = "cpu",
    models: Sequence[ModelRequest] = (),
    *,
    quick: bool = False,
    threads: int | None = None,
    peak_tflops: float | None = None,
    link: bool = True,
    context: bool = True,
    concurrency: int = 1,
    pipeline: int = 0,
    extend: Profile | None = None,
    progress: Progress | None = None,
    note: str = "",
) -> Profile:
    """Measure the local `device` ('cpu' or 'cuda') and return a fitted `Profile`.

    `models`: also time every distinct operator of these. `extend`: keep that profile's
    device, link and operators (measure only the operators it lacks). `peak_tflops`: the
    vendor fp32 peak, to split the fitted rate into peak and efficiency (see the module
    docstring). `pipeline`: with 2 or more, run each model as a pipeline of that many
    local processes (`runners.probe`) and scale its operators to the times measured there.
    `progress(what, done, total)` is called before each measurement.
    """
    if device not in ("cpu", "cuda"):
        raise PipeplanError(f"--device must be cpu or cuda (got {device!r})")
    if device == "cuda" and not torch.cuda.is_available():
        raise PipeplanError("--device cuda: torch sees no CUDA device here")
    if concurrency < 1:
        raise PipeplanError(f"--concurrency must be at least 1 (got {concurrency})")
    if pipeline == 1 or pipeline < 0:
        raise PipeplanError(f"--pipeline must be 0 (off) or at least 2 (got {pipeline})")
    if threads is not None and threads < 1:
        raise PipeplanError(f"--threads must be at least 1 (got {threads})")
    if peak_tflops is not None and not peak_tflops > 0:
        raise PipeplanError(f"--peak-tflops must be positive (got {peak_tflops})")
    if extend is not None:
        threads = threads or extend.threads
    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    dev = torch.device("cuda", 0) if device == "cuda" else torch.device("cpu")
    sizes = Sizes.quick() if quick else Sizes.full()
    timer = Timer(dev, sizes)
    for req in models:
        if not Path(req.path).exists():
            raise PipeplanError(f"model file not found: {req.path}")

    steps: list[tuple[str, Callable[[], None]]] = []
    raw: dict = dict(extend.measurements) if extend is not None else {}
    results: dict = {}

    if extend is None:
        steps.append(
            ("launch overhead", lambda: results.__setitem__("launch", _launch_points(timer)))
        )
        steps.append(
            (
                "GEMM fp32",
                lambda: results.__setitem__(
                    "gemm_fp32",
                    _gemm_points(timer, [(s, s, s) for s in sizes.gemm_square], torch.float32),
                ),
            )
        )
        steps.append(
            (
                "GEMM skinny",
                lambda: results.__setitem__(
                    "gemm_skinny", _gemm_points(timer, sizes.gemm_skinny, torch.float32)
                ),
            )
        )
        half = [("tf32", torch.float32)] if dev.type == "cuda" else []
        half += _half_dtypes(dev)
        for name, dt in half:

            def run_half(name=name, dt=dt):
                try:
                    if name == "tf32":
                        torch.backends.cuda.matmul.allow_tf32 = True
                    results[f"gemm_{name}"] = _gemm_points(
                        timer, [(s, s, s) for s in sizes.half_square], dt
                    )
                except (RuntimeError, TypeError) as exc:
                    results[f"gemm_{name}"] = {"absent": str(exc).splitlines()[0][:200]}
                finally:
                    if name == "tf32":
                        torch.backends.cuda.matmul.allow_tf32 = False

            steps.append((f"GEMM {name}", run_half))
        steps.append(
            (
                "elementwise add",
                lambda: results.__setitem__("elementwise", _elementwise_points(timer)),
            )
        )
        steps.append(("convolution", lambda: results.__setitem__("conv", _conv_points(timer))))
        steps.append(
            (
                "optimizer step",
                lambda: results.__setitem__("optimizer", _optimizer_points(timer)),
            )
        )
        if link:
            backend = "nccl" if dev.type == "cuda" and torch.cuda.device_count() >= 2 else "gloo"

            def run_link(backend=backend):
                results["link_backend"] = backend
                results["pingpong"] = measure_link(sizes, threads, backend)

            steps.append((f"link ping-pong ({'gloo' if backend == 'gloo' else backend})", run_link))

    op_timer = OpTimer(timer)
    model_ops = _ModelOps(op_timer, extend, context, concurrency, threads)
    if models:
        steps += model_ops.plan_steps(models)

    probes = list(model_ops.runs) if pipeline >= 2 else []
    total = len(steps) + len(probes)
    try:
        for i, (what, fn) in enumerate(steps):
            if progress is not None:
                progress(what, i, total)
            fn()
    finally:
        for load in model_ops.loads:
            load.stop()

    if extend is not None:
        device_fig, link_fig, fit = extend.device, extend.link, dict(extend.fit)
        optimizer = dict(extend.optimizer)
    else:
        machine = _machine(dev)
        device_fig, link_fig, fit = _fit(results, dev, threads, peak_tflops, machine)
        optimizer, fit["optimizer"] = fit_optimizer(results["optimizer"])
        raw = dict(results)
    model_ops.finish()
    overhead = dict(extend.overhead) if extend is not None else {}
    if models:
        overhead = {k: float(v) for k, v in op_timer.overhead.items()}
    if model_ops.failures:
        fit["op_failures"] = model_ops.failures

    def profile() -> Profile:
        return Profile(
            device=device_fig,
            link=link_fig,
            ops=model_ops.ops,
            optimizer=optimizer,
            models=model_ops.reports,
            overhead=overhead,
            fit=fit,
            measurements=raw,
            machine=extend.machine if extend is not None else _machine(dev),
            threads=threads,
            torch_version=torch.__version__,
            created=datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat(),
            note=note or (extend.note if extend is not None else ""),
        )

    ran = []
    for i, (req, mg, _) in enumerate(probes):
        if progress is not None:
            progress(f"pipeline probe of {Path(req.path).name}", len(steps) + i, total)
        if model_ops.apply_probe(req, mg, profile(), pipeline):
            ran.append(req)
    if ran and link_fig is not None:
        # every probe the profile holds (an --extend keeps the earlier models' ones)
        from runners.probe import fit_pipeline_latency, fit_send_blocking

        records = [
            r["pipeline"]["replay"]
            for r in model_ops.reports.values()
            if isinstance(r.get("pipeline"), dict) and "replay" in r["pipeline"]
        ]
        link_fit = dict(fit.get("link", {}))
        quiet = link_fig.model_copy(
            update={"latency_us": link_fit.get("ping_pong_latency_us", link_fig.latency_us)}
        )
        sends = fit_send_blocking(records)
        if sends is not None:  # the runner's own sends, stalls included, beat the ping-pong's
            alpha, beta, link_fit["send_blocking_pipeline"] = sends
            quiet = quiet.model_copy(
                update={
                    "send_blocking_us": alpha * 1e6,
                    "send_blocking_GBps": beta / 1e9 if beta else None,
                }
            )
        latency_s, report = fit_pipeline_latency(records, quiet)
        link_fig = quiet.model_copy(update={"latency_us": latency_s * 1e6})
        fit["link"] = link_fit | {"ping_pong_latency_us": quiet.latency_us, "pipeline": report}
    if progress is not None:
        progress("done", total, total)
    return profile()


def _fit(results: dict, dev: torch.device, threads: int, peak_tflops: float | None, machine: dict):
    launch = results["launch"]
    plain_s = launch["plain_s"]
    # --- GEMM: t = c0 + f / R on the square sizes, relative least squares
    square = results["gemm_fp32"]
    c0, inv_rate = fit_line_relative([p["flops"] for p in square], [p["seconds"] for p in square])
    rate = 1.0 / inv_rate
    if peak_tflops is not None:
        ce = min(1.0, rate / (peak_tflops * 1e12))
        peak = max(peak_tflops * 1e12, rate)
    else:
        ce = DEFAULT_COMPUTE_EFFICIENCY
        peak = rate / ce
    half_eff = max(1.0, (c0 - plain_s) * rate)
    warnings = []
    if c0 <= plain_s:
        warnings.append(
            "GEMM intercept at or below one plain dispatch (noisy timings?): "
            "half_efficiency_flops set to 1"
        )
    gemm_pred = [(p["flops"] + half_eff) / rate + plain_s for p in square]
    # --- elementwise: effective B from allocating adds of tensors >= 1 MiB (smaller ones
    # are launch-bound); bandwidth = the streaming rate at the largest size
    elem = results["elementwise"]
    big = [p for p in elem if p["numel"] >= ELEMENTWISE_FIT_MIN_NUMEL] or elem[-1:]
    c_mem, inv_b = fit_line_relative([p["bytes"] for p in big], [p["allocating_s"] for p in big])
    effective = 1.0 / inv_b
    streaming = elem[-1]["bytes"] / elem[-1]["streaming_s"]
    bandwidth = max(streaming, effective)
    mem_eff = effective / bandwidth
    elem_pred = [c_mem + p["bytes"] / effective for p in big]

    def roofline(flops: float, nbytes: float) -> float:
        return max((flops + half_eff) / rate, nbytes / effective) + plain_s

    skinny = results["gemm_skinny"]
    skinny_pred = [
        roofline(p["flops"], 4 * (p["m"] * p["k"] + p["k"] * p["n"] + p["m"] * p["n"]))
        for p in skinny
    ]
    conv = results["conv"]
    for p in conv:
        nbytes = 4 * (p["n"] * p["c"] * p["hw"] ** 2 * 2 + p["k"] * p["c"] * p["kernel"] ** 2)
        p["predicted_s"] = roofline(p["flops"], nbytes)
        p["measured_over_predicted"] = round(p["seconds"] / p["predicted_s"], 3)
    peaks = {"fp32": peak / 1e12}
    half_fits = {}
    for name in ("tf32", "bf16", "fp16"):
        pts = results.get(f"gemm_{name}")
        if not isinstance(pts, list) or not pts:
            continue
        if len(pts) >= 2:
            _, inv = fit_line_relative([p["flops"] for p in pts], [p["seconds"] for p in pts])
            r = 1.0 / inv
        else:
            r = max(p["gflops"] for p in pts) * 1e9
        peaks[name] = r / ce / 1e12
        half_fits[name] = {
            "rate_gflops": round(r / 1e9, 2),
            "best_gflops": round(max(p["gflops"] for p in pts), 2),
        }
    device = ProfileDevice(
        name=_device_name(dev, threads, machine),
        peak_tflops={k: float(f"{v:.6g}") for k, v in peaks.items()},
        memory_GB=float(f"{_memory_gb(dev):.4g}"),
        bandwidth_GBps=float(f"{bandwidth / 1e9:.5g}"),
        launch_overhead_us=float(f"{launch['autograd_s'] * 1e6:.4g}"),
        compute_efficiency=ce,
        memory_efficiency=float(f"{mem_eff:.4g}"),
        half_efficiency_flops=float(f"{half_eff:.4g}"),
    )
    fit = {
        "gemm": {
            "model": "t = (flops + half_efficiency_flops) / R + plain_launch, R = peak * compute_efficiency",
            "rate_gflops": round(rate / 1e9, 3),
            "intercept_us": round(c0 * 1e6, 3),
            "plain_launch_us": round(plain_s * 1e6, 3),
            "best_gflops": round(max(p["gflops"] for p in square), 3),
            "compute_efficiency": "measured vs --peak-tflops"
            if peak_tflops
            else f"fixed at {DEFAULT_COMPUTE_EFFICIENCY} (no vendor peak given)",
            "mape_percent": round(mape(gemm_pred, [p["seconds"] for p in square]), 2),
            "skinny_mape_percent": round(mape(skinny_pred, [p["seconds"] for p in skinny]), 2),
        }
        | ({"warnings": warnings} if warnings else {}),
        "half": half_fits,
        "elementwise": {
            "model": "t = c + bytes / (bandwidth * memory_efficiency), allocating a + b",
            "effective_GBps": round(effective / 1e9, 3),
            "streaming_GBps": round(streaming / 1e9, 3),
            "intercept_us": round(c_mem * 1e6, 3),
            "fitted_sizes": [p["numel"] for p in big],
            "mape_percent": round(mape(elem_pred, [p["allocating_s"] for p in big]), 2),
        },
        "conv": {
            "measured_over_predicted": [p["measured_over_predicted"] for p in conv],
        },
    }
    link_fig = None
    if "pingpong" in results:
        link_fig, link_fit = fit_link(results["pingpong"], results.get("link_backend", "gloo"))
        fit["link"] = link_fit
    return device, link_fig, fit


def profile_summary(profile: Profile) -> list[tuple[str, str]]:
    """Rows (what, value) describing a profile, for the CLI."""
    d = profile.device
    rows = [
        ("device", d.name),
        ("threads", str(profile.threads)),
        (
            "peak TFLOP/s",
            ", ".join(f"{k} {v:.4g}" for k, v in d.peak_tflops.items()),
        ),
        ("compute efficiency", f"{d.compute_efficiency:.3g}"),
        ("half-efficiency FLOPs", f"{d.half_efficiency_flops:.3g}"),
        ("memory bandwidth", f"{d.bandwidth_GBps:.4g} GB/s x {d.memory_efficiency:.3g}"),
        ("launch overhead", f"{d.launch_overhead_us:.3g} us"),
        ("memory", f"{d.memory_GB:.4g} GB"),
    ]
    gemm = profile.fit.get("gemm")
    if isinstance(gemm, dict):
        rows.append(
            ("GEMM fit", f"{gemm.get('rate_gflops')} GFLOP/s, MAPE {gemm.get('mape_percent')}%")
        )
    if profile.link is not None:
        rows.append(
            (
                "link",
                f"{profile.link.bandwidth_GBps:.4g} GB/s, {profile.link.latency_us:.3g} us ({profile.link.backend})",
            )
        )
    if "adam" in profile.optimizer:
        fit = profile.optimizer["adam"]
        rows.append(
            ("Adam step", f"{fit.per_tensor_us:.3g} us/tensor + {fit.per_param_ns:.3g} ns/param")
        )
    rows.append(("operators", str(len(profile.ops))))
    for key, report in profile.models.items():
        probe = report.get("pipeline")
        if isinstance(probe, dict) and "forward_factor" in probe:
            rows.append(
                (
                    f"pipeline probe {key}",
                    f"forward x{probe['forward_factor']:.3g}, backward x{probe['backward_factor']:.3g}",
                )
            )
    return rows


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "pingpong":
        sys.exit(_pingpong_main(sys.argv[2:]))
    if len(sys.argv) >= 2 and sys.argv[1] == "load":
        sys.exit(_load_main(sys.argv[2:]))
    print(
        "usage: python -m runners.calibrate pingpong RANK PORT BACKEND SIZES REPEATS OUT [ROUNDS]",
        file=sys.stderr,
    )
    sys.exit(2)
