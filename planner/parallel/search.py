"""Data x pipeline: how many replicas of which pipeline, chosen together with its split.

Pipeline x data parallelism as practitioners lay it out (D. Narayanan et al., "Efficient
Large-Scale Language Model Training on GPU Clusters Using Megatron-LM", SC 2021, section
3): r identical replicas of one pipeline, each on its own devices, each running its own
micro-batches, their gradients all-reduced before the optimizer step. The candidates are
the replica layouts of `planner.parallel.replicas.replica_layouts` (whole nodes per
replica, or slices of every node so that a stage's ring stays inside a node, and packings
of one-node replicas), each with r = 1 .. its replica count. Every candidate's replica
pipeline is split by the partitioner (`planner.partition`) with the all-reduce of each
stage's gradients over its ring priced in the stage's step tail (`cost.collectives`;
ZeRO-1's sharded state and all-gather too), so the split itself knows what the all-reduce
costs. The layout with the highest closed-form job throughput wins:

    throughput(layout) = r x micro-batch size x m / T(split),

T the partitioner's closed-form iteration of the replica (`planner.partition.objective`,
all-reduce included). Every fixed (r, p) a user could ask for is among the candidates
and each split is the partitioner's optimum for its replica, so the layout chosen is never
worse, by this closed form, than any fixed one (tested on random problems).

Which r are tried. With the per-replica batch fixed (`--microbatches`, weak scaling), for
a fixed ring (the same slowest hop for every stage) the throughput grows with r: going from
r to r + 1 adds 2 alpha + 2 G / (beta r (r + 1)) to the all-reduce, less than 1/r of the
iteration it already has. So for each layout shape only r = 1 (the whole cluster), the
largest r of every run of equal rings (a ring gets slower when its replicas start to cross
nodes) and the replica count itself are planned. With `--global-batch` (strong scaling)
each r splits the batch differently, so every r that divides it is planned.

Replicas are identical: a heterogeneous cluster is used either by one pipeline over all of
its kinds, or by replicas that each hold the same mix of kinds (the layouts' slices), so
that every replica's iteration is the same and none waits for a slower one at the
all-reduce.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cost.cluster import Cluster
from cost.collectives import DEFAULT_BUCKET_BYTES, ReplicaRing
from cost.errors import PipeplanError
from planner.config import PlanConfig
from planner.parallel.replicas import ReplicaLayout, replica_layouts, slowest_ring_link
from planner.parallel.tensor import TensorLayout
from planner.partition.bounds import lower_bound
from planner.partition.problem import Problem
from planner.partition.search import Split


@dataclass(frozen=True)
class LayoutOption:
    """One candidate: `layout` (r replicas of `layout.sub`), the ring joining them, and the
    settings one replica plans with (its micro-batch count)."""

    layout: ReplicaLayout
    ring: ReplicaRing | None
    config: PlanConfig
    #: its tensor-parallel degree's groups and sharded pricing (None: t = 1); `layout` is
    #: then a layout of the grouped cluster
    tensor: TensorLayout | None = None

    @property
    def replicas(self) -> int:
        return self.layout.replicas_count

    @property
    def tensor_parallel(self) -> int:
        return self.tensor.degree if self.tensor is not None else 1


@dataclass
class Trial:
    """A candidate and what planning its replica gave (`outcome`, or `error`)."""

    option: LayoutOption
    problem: Problem | None = None
    split: Split | None = None
    outcome: object | None = None  # what `solve` returned besides problem and split
    error: str = ""
    exception: PipeplanError | None = None
    #: samples/s no split of this candidate can beat (inf: not bounded)
    bound_throughput: float = float("inf")
    #: not solved: its bound could not beat a layout already found
    pruned: bool = False

    @property
    def fits(self) -> bool:
        return self.split is not None and self.split.evaluation.fits

    def failed(self, exc: PipeplanError) -> None:
        """Keep why this candidate could not be planned (its first line)."""
        self.exception = exc
        self.error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__

    @property
    def iteration_s(self) -> float:
        """Closed-form iteration of one replica (all replicas run in step), all-reduce included."""
        return self.split.evaluation.iteration_s if self.split is not None else float("inf")

    @property
    def stages(self) -> int:
        return self.split.assignment.num_stages if self.split is not None else 0

    def samples(self, microbatch_size: int) -> int:
        """Samples per iteration over all replicas."""
        return self.option.replicas * microbatch_size * self.option.config.microbatches

    def throughput(self, microbatch_size: int) -> float:
        """Closed-form samples per second over all replicas (0 when it does not fit)."""
        if not self.fits or not self.iteration_s > 0:
            return 0.0
        return self.samples(microbatch_size) / self.iteration_s

    @property
    def sync_s(self) -> float:
        """The slowest stage's step-tail collectives (all-reduce, all-gather)."""
        if self.split is None:
            return 0.0
        return max((st.sync_s for st in self.split.evaluation.stages), default=0.0)


def replica_ring(cluster: Cluster, layout: ReplicaLayout, zero: int) -> ReplicaRing | None:
    """The ring of every device of one replica across the layout's replicas (None: r = 1)."""
    if layout.replicas_count < 2:
        return None
    links = {}
    for d in layout.sub.device_ids():
        link = slowest_ring_link(cluster, layout, d, DEFAULT_BUCKET_BYTES)
        if link is None:
            raise ValueError(f"replica device {d} has no ring")
        links[d] = link
    return ReplicaRing(layout.replicas_count, links, zero)


def per_replica_microbatches(config: PlanConfig, replicas: int, microbatch_size: int) -> int | None:
    """Micro-batches each of `replicas` runs: --microbatches, or the global batch split
    (None when it does not split into whole micro-batches)."""
    if config.global_batch is None:
        return config.microbatches
    per = replicas * microbatch_size
    if config.global_batch % per:
        return None
    return config.global_batch // per


def layout_options(
    cluster: Cluster, config: PlanConfig, microbatch_size: int
) -> list[LayoutOption]:
    """The candidates (module docstring), r = 1 on the whole cluster first."""
    options: list[LayoutOption] = []

    def add(layout: ReplicaLayout, ring: ReplicaRing | None = None) -> None:
        if config.stages is not None and layout.sub.num_devices < config.stages:
            return  # --stages is per replica: too few devices for it
        m = per_replica_microbatches(config, layout.replicas_count, microbatch_size)
        if m is None:
            return
        update: dict = {"microbatches": m}
        if config.global_batch is not None:
            update["auto_microbatches"] = False
        if ring is None:
            ring = replica_ring(cluster, layout, config.zero)
        options.append(LayoutOption(layout, ring, config.model_copy(update=update)))

    layouts = replica_layouts(cluster, data_parallel=config.parallel == "auto" and config.training)
    if config.data_parallel in (None, 1):
        add(layouts[0])
    if config.data_parallel == 1:
        return options
    for shape in layouts[1:]:
        if config.data_parallel is not None:
            if shape.replicas_count >= config.data_parallel:
                add(shape.first(config.data_parallel))
            continue
        if config.global_batch is not None:
            for r in range(2, shape.replicas_count + 1):
                add(shape.first(r))
            continue
        previous: ReplicaRing | None = None
        kept: dict[int, ReplicaRing] = {}
        for r in range(2, shape.replicas_count + 1):
            ring = replica_ring(cluster, shape.first(r), config.zero)
            if previous is not None and dict(ring.links) != dict(previous.links):
                kept[r - 1] = previous  # the largest r of the previous ring
            previous = ring
        kept[shape.replicas_count] = previous
        for r in sorted(kept):
            add(shape.first(r), kept[r])
    return options


def search_layouts(
    options: list[LayoutOption],
    build: Callable[[LayoutOption], Problem],
    solve: Callable[[LayoutOption, Problem], tuple[Problem, Split, object]],
    microbatch_size: int,
    *,
    prune: bool = True,
) -> list[Trial]:
    """Plan the candidates' replicas; the trials, best closed-form throughput first (ties:
    fewer replicas, then the order given).

    `build` prices a candidate's replica (`Problem`), `solve` splits it (-> the problem
    split, which `--microbatches auto` may have rebuilt, the split, and anything else to
    keep). Branch and bound over candidates: each gets the upper bound r x samples /
    `bounds.lower_bound` (valid for every split of its replica, the all-reduce
    included); candidates are solved in decreasing order of it, and one whose bound
    cannot beat the best throughput found is not solved (`Trial.pruned`). With
    `--microbatches auto` every candidate is solved (m is chosen inside `solve`). A
    candidate that cannot be planned (`PipeplanError`: does not fit, ...) is kept with
    its error, last. `prune=False` solves every candidate (tests compare the two)."""
    trials = [Trial(option) for option in options]
    for trial in trials:
        try:
            trial.problem = build(trial.option)
        except PipeplanError as exc:
            trial.failed(exc)
            continue
        if not trial.option.config.auto_microbatches:
            floor = lower_bound(trial.problem, trial.problem.max_stages)
            if floor > 0:
                trial.bound_throughput = trial.samples(microbatch_size) / floor
    best = 0.0
    for trial in sorted(trials, key=lambda t: -t.bound_throughput):
        if trial.problem is None:
            continue
        if prune and trial.bound_throughput <= best * (1 + 1e-9):
            trial.pruned = True
            trial.error = (
                f"not solved: at most {trial.bound_throughput:.4g} samples/s (bound), "
                f"{best:.4g} found"
            )
            continue
        try:
            trial.problem, trial.split, trial.outcome = solve(trial.option, trial.problem)
        except PipeplanError as exc:
            trial.failed(exc)
            continue
        best = max(best, trial.throughput(microbatch_size))
    order = {id(t): i for i, t in enumerate(trials)}
    return sorted(
        trials,
        key=lambda t: (
            -round(t.throughput(microbatch_size), 9),
            t.pruned,
            t.option.replicas,
            t.option.tensor_parallel,
            order[id(t)],
        ),
    )
