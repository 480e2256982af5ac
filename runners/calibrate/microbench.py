"""Microbenchmarks: the points the device and optimizer fits use (`runners.calibrate.fits`).

Medians of repeats after warm-up (`runners.calibrate.timing.Timer`); the GEMM and
elementwise sweeps run in interleaved rounds (a shared machine's speed drifts: each round
visits every point).

* GEMM: `a @ b`, no autograd, square sizes and skinny shapes, fp32, and every half type
  the device runs (bf16 and fp16; tf32 on CUDA).
* Elementwise add, 16 K to 4 M elements (the largest, 3 x 16 MiB, is beyond the caches of
  most CPUs, and below glibc's 32 MiB mmap ceiling, above which every allocation
  page-faults): streaming (`torch.add(a, b, out=c)`) and allocating (`a + b`).
* Convolutions (3x3 and 1x1): a check of the fitted GEMM model.
* Launch overhead: a one-element add with autograd on (an input that requires grad, as in
  training): `launch_overhead_us`. The plain dispatch (no autograd) is recorded too.
* Optimizer step: `torch.optim` SGD, momentum and Adam as the runner builds them, one
  `step()` and `zero_grad(set_to_none=True)` over sets of fp32 tensors (few large to many
  small).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch

from runners.calibrate.timing import Timer


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


def _half_dtypes(device: torch.device) -> list[tuple[str, torch.dtype]]:
    out = [("bf16", torch.bfloat16), ("fp16", torch.float16)]
    return out


def microbenchmark_steps(timer: Timer, results: dict) -> list[tuple[str, Callable[[], None]]]:
    """The named measurements of a calibration's microbenchmarks, in order; each stores its
    points in `results` (under the keys the fits read)."""
    sizes = timer.sizes
    steps: list[tuple[str, Callable[[], None]]] = []
    steps.append(("launch overhead", lambda: results.__setitem__("launch", _launch_points(timer))))
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
    half = [("tf32", torch.float32)] if timer.device.type == "cuda" else []
    half += _half_dtypes(timer.device)
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
        ("elementwise add", lambda: results.__setitem__("elementwise", _elementwise_points(timer)))
    )
    steps.append(("convolution", lambda: results.__setitem__("conv", _conv_points(timer))))
    steps.append(
        ("optimizer step", lambda: results.__setitem__("optimizer", _optimizer_points(timer)))
    )
    return steps
