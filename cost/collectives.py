"""Collectives across data-parallel replicas: ring all-reduce and all-gather times.

A ring of `r` devices (one per replica) moves each device's share of the data to its
neighbour in steps (P. Patarasuk and X. Yuan, "Bandwidth optimal all-reduce algorithms for
clusters of workstations", J. Parallel Distrib. Comput. 69(2):117-124, 2009). With the
alpha-beta link model of `cost.links` (Hockney 1994) and the ring's slowest hop (alpha,
beta), for `n` bytes:

    all-reduce (reduce-scatter + all-gather):  2(r - 1) alpha + 2(r - 1)/r x n / beta
    all-gather (each holds n / r, all get n):   (r - 1) alpha +  (r - 1)/r x n / beta

Gradients are all-reduced in buckets of at most `bucket_bytes` (PyTorch DDP's 25 MiB
default; S. Li et al., "PyTorch Distributed: Experiences on Accelerating Data Parallel
Training", VLDB 2020), each bucket paying the latency terms once. The functions below
count buckets fractionally (`n / bucket_bytes`), so the time of a stage is the sum of its
layers' times: the planner's exact programme and MILP price a stage as a sum over its
layers, and this keeps them exact. A stage whose gradients are smaller than one bucket is
priced a fraction of one bucket's latency (a few microseconds on GPU links; a
conservative figure would add one alpha term per stage).

ZeRO stage 1 (S. Rajbhandari et al., "ZeRO: Memory Optimizations Toward Training Trillion
Parameter Models", SC 2020) shards the optimizer state over the `r` replicas: each
replica steps 1/r of the parameters, then the updated parameters are all-gathered.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from cost.links import LinkSpec

#: PyTorch DDP's default bucket size (`bucket_cap_mb=25`).
DEFAULT_BUCKET_BYTES = 25 * 1024 * 1024


def ring_allreduce_seconds(
    nbytes: float, replicas: int, link: LinkSpec, bucket_bytes: int = DEFAULT_BUCKET_BYTES
) -> float:
    """Seconds to all-reduce `nbytes` over a ring of `replicas` devices whose slowest hop
    is `link`, in buckets of `bucket_bytes` (counted fractionally: additive in `nbytes`):
    a reduce-scatter and an all-gather, each as long as `ring_allgather_seconds`."""
    return 2 * ring_allgather_seconds(nbytes, replicas, link, bucket_bytes)


def ring_allgather_seconds(
    nbytes: float, replicas: int, link: LinkSpec, bucket_bytes: int = DEFAULT_BUCKET_BYTES
) -> float:
    """Seconds to all-gather `nbytes` (each device holding 1/r of it) over the ring."""
    r = replicas
    if r < 2 or nbytes <= 0:
        return 0.0
    alpha = link.latency_us * 1e-6
    beta = link.effective_bytes_per_s
    return (r - 1) * alpha * nbytes / bucket_bytes + (r - 1) / r * nbytes / beta


@dataclass(frozen=True)
class ReplicaRing:
    """How one pipeline's devices meet their peers of the other replicas.

    `links[device]`: the slowest hop of the ring joining `device` (an id of the replica's
    own cluster) with the devices holding the same stages in the other replicas.
    `zero`: 1 shards optimizer state over the replicas (ZeRO-1), 0 replicates it."""

    replicas: int
    links: Mapping[str, LinkSpec] = field(default_factory=dict)
    zero: int = 0
    bucket_bytes: int = DEFAULT_BUCKET_BYTES

    @property
    def zero_shards(self) -> int:
        """Replicas the optimizer state is divided over (1 without ZeRO)."""
        return self.replicas if self.zero >= 1 else 1
