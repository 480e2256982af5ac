"""Timing for a calibration: what to measure and for how long (`Sizes`: full, or `quick`,
small sizes and few repeats, a few seconds in all), and `Timer`, the median wall time of a
callable after warm-up, repeated to fill a time budget (CUDA synchronised around each call).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


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
