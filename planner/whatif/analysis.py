"""What-if analysis: how would this model train on more, other or better-linked devices?

`whatif(model, cluster, config, bindings, adds=..., replaces=..., links=...)` loads the
model once, derives scenario clusters from the given one (`planner.whatif.scenarios`: the
given cluster first, then each `--add` sweep, each `--replace`, each `--link`), plans
each one and returns a `WhatIfReport`: one `Row` per scenario with throughput, speed-up,
memory, bubble, price and marginal gain. `min_devices_kind` also finds the fewest
devices of one kind on which the model trains at all.

Pipeline x data parallelism (PP x DP, as in D. Narayanan et al., "Efficient Large-Scale
Language Model Training on GPU Clusters Using Megatron-LM", SC 2021). A scenario's
cluster is tried as r identical replicas of one pipeline, for every replica layout
`planner.whatif.replicas.replica_layouts` finds (r = 1, the whole cluster, always among them).
One replica's sub-cluster is planned with `planner.api.plan_graph` (cached on disk,
`planner.whatif.cache`); every replica runs that plan on its own global batch B = micro-
batch size x m, then the replicas all-reduce their gradients. Per iteration:

    T(r) = T_pipe + T_allreduce,     throughput(r) = r x B / T(r)

T_pipe is the replica plan's simulated iteration (`predicted.iteration_ms`). The
all-reduce is a ring (P. Patarasuk and X. Yuan, "Bandwidth optimal all-reduce algorithms
for clusters of workstations", J. Parallel Distrib. Comput. 69(2):117-124, 2009): each
stage's devices across the r replicas form one ring, which moves 2(r - 1)/r of the
stage's gradient bytes G_s through its slowest hop in 2(r - 1) steps, each paying that
hop's latency (alpha-beta, Hockney 1994, as `cost.links`):

    T_allreduce = max over stages s of  2(r - 1) alpha_s + 2(r - 1)/r x G_s / beta_s

G_s = trainable parameters held by stage s (shared weights once per stage) x bytes per
element of the plan's dtype (4 for fp32, 2 for bf16/fp16). Rings of different stages run
at the same time on different devices (their links are not assumed to interfere), after
the pipeline flush (no overlap with the backward pass: a conservative figure). Every
replica holds what the replica plan holds: no ZeRO sharding. The layout with the highest
throughput that fits wins (ties: the first, fewer replicas). With `--objective latency`
(inference of one sample) only r = 1 is tried; r > 1 is skipped for a scenario whose
replica plan is not for training.

Scaling. `weak` (the default): every replica runs the given settings, so the global
batch grows with r (r x B samples per iteration; `Row.global_batch` says what it is), as
when the per-replica batch is fixed. `strong`: the global batch B = micro-batch size x m
is fixed and split, each replica running m / r micro-batches (layouts whose r does not
divide m are skipped); fewer micro-batches per pipeline mean a larger bubble, the
trade-off Narayanan et al. discuss (their section 3.3). Compare rows under one scaling.

Within an `--add` sweep, each scenario's cluster contains the previous one's (devices
are only added), so the previous scenario's best layout still runs on it with the added
devices idle. When that is faster than every layout planned for the new cluster, the row
keeps it and says so in `note`: the best predicted throughput never drops as identical
devices are added, and the marginal gain of useless devices is 0.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, Field

from cost.cluster import Cluster, load_cluster
from cost.errors import PipeplanError
from planner.config import PlanConfig
from planner.graph.inspect import load_model
from planner.graph.shapes import ShapeBindings
from planner.plan_file import Plan
from planner.whatif.cache import LayerOptions, PlanCache
from planner.whatif.replicas import ReplicaLayout, replica_layouts, ring_link_seconds
from planner.whatif.scenarios import (
    Scenario,
    build_scenarios,
    device_kinds,
    homogeneous_cluster,
    resolve_kind,
)

#: Bytes per gradient element by plan dtype.
GRAD_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}

Progress = Callable[[int, int, str], None]
Scaling = Literal["weak", "strong"]


class Row(BaseModel):
    """One scenario: the best layout found for it (or why nothing fits)."""

    scenario: str
    sweep: str = Field(description="rows of one --add flag share it; 'base' for the given cluster")
    devices: int = Field(description="devices in the scenario's cluster")
    device_kinds: str = Field(description="e.g. '4x A100-80GB + 2x V100-32GB'")
    fits: bool
    stages: int = Field(
        0, description="pipeline stages per replica (interleaved: model chunks, several per device)"
    )
    replicas: int = Field(0, description="data-parallel replicas")
    devices_used: int = Field(0, description="devices running stages, all replicas (rest idle)")
    layout: str = Field("", description="the replica shape, e.g. '2 x (4x H100-80GB ...)'")
    schedule: str = ""
    throughput_samples_per_s: float = Field(0.0, description="0 when nothing fits")
    iteration_ms: float | None = None
    allreduce_ms: float | None = Field(None, description="gradient all-reduce per iteration")
    global_batch: int | None = Field(None, description="samples per iteration, all replicas")
    speedup: float | None = Field(None, description="vs the base row; null if base does not fit")
    peak_memory_bytes: int | None = Field(None, description="the largest peak over devices")
    usable_memory_bytes: int | None = Field(
        None, description="usable capacity of the device with the largest peak"
    )
    peak_memory_fraction: float | None = Field(
        None, description="the largest peak / usable capacity over devices (the fullest device)"
    )
    bubble_fraction: float | None = Field(None, description="the replica pipeline's bubble")
    idle_devices: list[str] = Field(
        default_factory=list, description="ids of the scenario's devices the layout leaves idle"
    )
    cost_per_hour: float | None = Field(
        None,
        description="USD/h of the devices used (idle ones are not charged); null if a price is "
        "unknown",
    )
    cluster_cost_per_hour: float | None = Field(
        None, description="USD/h of every device of the scenario, idle ones included"
    )
    samples_per_dollar: float | None = None
    marginal_gain_per_device: float | None = Field(
        None,
        description="(throughput - previous row's of the sweep) / devices added since; "
        "the first row of a sweep compares with base",
    )
    note: str = ""


class WhatIfReport(BaseModel):
    """`pipeplan whatif --json`."""

    model: str
    graph_hash: str
    cluster: str = Field(description="the given cluster's summary")
    config: PlanConfig
    bindings: dict
    data_parallel: bool = Field(
        True, description="replica layouts tried (never for --objective latency)"
    )
    scaling: str = Field(
        "weak", description="weak: each replica runs the given global batch; strong: it is split"
    )
    rows: list[Row]
    min_devices_kind: str | None = None
    min_devices: int | None = None
    min_devices_plan: Plan | None = None
    min_devices_note: str = ""
    cache_hits: int = 0
    cache_misses: int = 0
    seconds: float = 0.0
    warnings: list[str] = Field(default_factory=list)


@dataclass
class LayoutResult:
    """A replica layout, its replica plan, and the whole-cluster figures."""

    layout: ReplicaLayout
    plan: Plan
    allreduce_s: float
    iteration_s: float
    throughput: float
    global_batch: int

    @property
    def used_devices(self) -> list[str]:
        """Ids (in the scenario's cluster) of the devices running a stage, all replicas."""
        sub = list(dict.fromkeys(s.device for s in self.plan.stages))
        return [replica[d] for replica in self.layout.replicas for d in sub]

    @property
    def devices_used(self) -> int:
        """Devices running a stage, all replicas (interleaved stages share devices)."""
        return len(self.used_devices)


def stage_gradient_bytes(plan: Plan, lg, mg) -> list[int]:
    """Gradient bytes per stage: trainable parameters held x bytes per element of dtype."""
    per_elem = GRAD_BYTES.get(plan.config.dtype, 4)
    out = []
    for stage in plan.stages:
        names = {p for layer in stage.layers for p in lg.layer_named(layer).params}
        count = sum(mg.params[p].numel for p in names if p in mg.params and mg.params[p].trainable)
        out.append(count * per_elem)
    return out


def allreduce_seconds(
    cluster: Cluster, layout: ReplicaLayout, plan: Plan, grad_bytes: list[int]
) -> float:
    """Ring all-reduce of every stage's gradients across replicas; the slowest stage's time."""
    r = layout.replicas_count
    if r < 2:
        return 0.0
    worst = 0.0
    for stage, g in zip(plan.stages, grad_bytes, strict=True):
        if g <= 0:
            continue
        alpha, beta = ring_link_seconds(cluster, layout, stage.device, g / r)
        t = 2 * (r - 1) * alpha + 2 * (r - 1) / r * g / beta
        worst = max(worst, t)
    return worst


class _Planner:
    """Plans clusters for one loaded model, through the cache."""

    def __init__(
        self, mg, lg, config, bindings, cache: PlanCache, layer_options, dp: bool, scaling: str
    ):
        self.mg, self.lg, self.config, self.bindings = mg, lg, config, bindings
        self.cache, self.layer_options, self.dp = cache, layer_options, dp
        self.scaling = scaling

    def plan(self, cluster: Cluster, config: PlanConfig | None = None) -> Plan:
        config = config or self.config
        if cluster.num_devices == 1 and config.schedule in ("auto", "interleaved"):
            # One device, one stage: every schedule is the same (and the interleaved
            # builder wants two devices), so plan it as 1F1B.
            config = config.model_copy(update={"schedule": "1f1b"})
        return self.cache.plan(self.mg, self.lg, cluster, config, self.bindings, self.layer_options)

    def replica_count(self, most: int) -> int:
        """Replicas to run out of `most` possible: all (weak scaling), or the most that
        divide the micro-batch count (strong scaling)."""
        if self.scaling == "weak":
            return most
        m = self.config.microbatches
        return max(r for r in range(1, min(most, m) + 1) if m % r == 0)

    def replica_config(self, r: int) -> PlanConfig:
        """Settings of one of r replicas: as given (weak scaling), or m / r micro-batches
        (strong scaling)."""
        if r == 1 or self.scaling == "weak":
            return self.config
        return self.config.model_copy(update={"microbatches": self.config.microbatches // r})

    def best(self, cluster: Cluster) -> tuple[LayoutResult | None, str]:
        """The fastest fitting layout on `cluster`, or None and the r = 1 failure."""
        layouts = replica_layouts(cluster, data_parallel=self.dp and self.config.training)
        best: LayoutResult | None = None
        failure = ""
        for layout in layouts:
            if layout.replicas_count > 1:
                r = self.replica_count(layout.replicas_count)
                if r < 2:
                    continue
                layout = layout.first(r)
            config = self.replica_config(layout.replicas_count)
            try:
                p = self.plan(layout.sub, config)
            except PipeplanError as exc:  # DoesNotFitError, or e.g. --stages > devices
                if layout.replicas_count == 1:
                    failure = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                continue
            ar = 0.0
            if layout.replicas_count > 1:
                ar = allreduce_seconds(
                    cluster, layout, p, stage_gradient_bytes(p, self.lg, self.mg)
                )
            iteration = p.predicted.iteration_ms * 1e-3 + ar
            batch = layout.replicas_count * p.predicted.global_batch
            tput = batch / iteration if iteration > 0 else 0.0
            if best is None or tput > best.throughput * (1 + 1e-12):
                best = LayoutResult(layout, p, ar, iteration, tput, batch)
        return best, failure


def _row(scenario: Scenario, result: LayoutResult | None, failure: str, note: str = "") -> Row:
    cluster = scenario.cluster
    price = cluster.price_per_hour
    base = Row(
        scenario=scenario.name,
        sweep=scenario.sweep,
        devices=cluster.num_devices,
        device_kinds=device_kinds(cluster),
        fits=result is not None,
        cost_per_hour=price,
        cluster_cost_per_hour=price,
        note="; ".join(n for n in (scenario.note, note, failure if result is None else "") if n),
    )
    if result is None:
        return base.model_copy(update={"samples_per_dollar": 0.0 if price else None})
    p = result.plan
    stages = len(p.stages)
    used = set(result.used_devices)
    prices = [cluster.device(d).price_per_hour for d in used]
    price = None if any(v is None for v in prices) else float(sum(prices))
    largest = max(p.stages, key=lambda s: s.peak_memory_bytes)
    frac = max(s.peak_memory_bytes / s.memory_capacity_bytes for s in p.stages)
    return base.model_copy(
        update={
            "stages": stages,
            "replicas": result.layout.replicas_count,
            "devices_used": len(used),
            "idle_devices": [d for d in cluster.device_ids() if d not in used],
            "cost_per_hour": price,
            "layout": result.layout.description,
            "schedule": p.predicted.schedule,
            "throughput_samples_per_s": result.throughput,
            "iteration_ms": result.iteration_s * 1e3,
            "allreduce_ms": result.allreduce_s * 1e3,
            "global_batch": result.global_batch,
            "peak_memory_bytes": largest.peak_memory_bytes,
            "usable_memory_bytes": largest.memory_capacity_bytes,
            "peak_memory_fraction": frac,
            "bubble_fraction": p.predicted.bubble_fraction,
            "samples_per_dollar": result.throughput * 3600 / price if price else None,
        }
    )


def whatif(
    model: str | os.PathLike[str],
    cluster: Cluster | str | os.PathLike[str],
    config: PlanConfig | None = None,
    bindings: ShapeBindings | None = None,
    *,
    adds: list[str] | tuple[str, ...] = (),
    replaces: list[str] | tuple[str, ...] = (),
    links: list[str] | tuple[str, ...] = (),
    min_devices_kind: str | None = None,
    progress: Progress | None = None,
    layers_file: str | None = None,
    layer_depth: int | None = None,
    data_parallel: bool = True,
    scaling: Scaling = "weak",
    default_sweep: bool = True,
    cache: PlanCache | bool = True,
    keep_merged_weights: bool = False,
) -> WhatIfReport:
    """Plan the model on the given cluster and on each derived scenario (module doc).

    `adds`: 'KIND:N,N,...' strings (one sweep each); `replaces`: 'OLD=NEW'; `links`:
    link preset names; with none of these, the default sweep (x2, x4 of the most common
    kind) unless `default_sweep` is False (then only the given cluster). `cache`: a `PlanCache`, True (the default folder) or False (no
    disk cache). `progress(done, total, label)` is called before and after each scenario.
    Raises `PipeplanError` for bad input (unknown kinds, malformed flags), never
    `DoesNotFitError`: a scenario that does not fit is a row with `fits: false`."""
    started = time.perf_counter()
    config = config or PlanConfig()
    bindings = bindings or ShapeBindings()
    if scaling not in ("weak", "strong"):
        raise PipeplanError(f"unknown scaling {scaling!r} (choose from weak, strong)")
    if scaling == "strong" and config.auto_microbatches:
        raise PipeplanError(
            "--scaling strong splits a fixed global batch over replicas: give --microbatches N, not auto"
        )
    if not isinstance(cluster, Cluster):
        cluster = load_cluster(cluster)
    scenarios = build_scenarios(
        cluster, list(adds), list(replaces), list(links), default_sweep=default_sweep
    )
    kind_spec = resolve_kind(cluster, min_devices_kind) if min_devices_kind else None
    if not isinstance(cache, PlanCache):
        cache = PlanCache(enabled=bool(cache))
    mg, lg = load_model(
        model,
        bindings,
        layers_file=layers_file,
        layer_depth=layer_depth,
        keep_merged_weights=keep_merged_weights,
    )
    options = LayerOptions(layers_file=layers_file, layer_depth=layer_depth)
    planner = _Planner(mg, lg, config, bindings, cache, options, data_parallel, scaling)

    total = len(scenarios) + (1 if kind_spec else 0)
    rows: list[Row] = []
    kept: dict[str, tuple[Scenario, LayoutResult | None]] = {}
    for i, sc in enumerate(scenarios):
        if progress:
            progress(i, total, sc.name)
        result, failure = planner.best(sc.cluster)
        note = ""
        if sc.added and sc.sweep != "base":
            prev_sc, prev = kept.get(sc.sweep, (scenarios[0], kept["base"][1]))
            if prev is not None and (result is None or prev.throughput > result.throughput):
                idle = sc.cluster.num_devices - prev.devices_used
                note = f"layout of '{prev_sc.name}' kept ({idle} devices idle): faster than any using the added devices"
                result = prev
            kept[sc.sweep] = (sc, result)
        elif sc.sweep == "base":
            kept["base"] = (sc, result)
        rows.append(_row(sc, result, failure, note))
    rows = _relative(rows, scenarios)

    report = WhatIfReport(
        model=str(model),
        graph_hash=mg.graph_hash,
        cluster=cluster.summary(),
        config=config,
        bindings=bindings.as_dict(),
        data_parallel=data_parallel and config.training,
        scaling=scaling,
        rows=rows,
        warnings=list(mg.warnings),
    )
    if kind_spec is not None:
        if progress:
            progress(len(scenarios), total, f"fewest {kind_spec.name}")
        n, p, note = _min_devices(planner, kind_spec, cluster)
        report.min_devices_kind = kind_spec.name
        report.min_devices, report.min_devices_plan, report.min_devices_note = n, p, note
    if progress:
        progress(total, total, "done")
    report.cache_hits, report.cache_misses = cache.hits, cache.misses
    report.seconds = time.perf_counter() - started
    return report


def _relative(rows: list[Row], scenarios: list[Scenario]) -> list[Row]:
    """Speed-up vs base and marginal gain per added device within each sweep."""
    base = rows[0]
    base_t = base.throughput_samples_per_s if base.fits else None
    prev: dict[str, tuple[int, float]] = {}
    out = []
    for row, sc in zip(rows, scenarios, strict=True):
        update: dict = {
            "speedup": row.throughput_samples_per_s / base_t if base_t else None,
        }
        if sc.added:
            added0, t0 = prev.get(sc.sweep, (0, base.throughput_samples_per_s))
            if sc.added > added0:
                update["marginal_gain_per_device"] = (row.throughput_samples_per_s - t0) / (
                    sc.added - added0
                )
            prev[sc.sweep] = (sc.added, row.throughput_samples_per_s)
        out.append(row.model_copy(update=update))
    return out


def _min_devices(planner: _Planner, spec, like: Cluster) -> tuple[int | None, Plan | None, str]:
    """Fewest devices `spec` (nodes of 8) whose plan fits: doubling, then bisection.

    Returns (N, plan on N, note); N fits and N - 1 does not (N - 1 = 0 never fits). No
    answer when even one device per layer does not fit (more devices than layers cannot
    help a pipeline)."""
    cap = max(len(planner.lg.layers), planner.config.stages or 1)
    plans: dict[int, Plan] = {}
    errors: dict[int, str] = {}

    def fits(n: int) -> bool:
        try:
            plans[n] = planner.plan(homogeneous_cluster(spec, n, like, name=f"{n}x {spec.name}"))
            return True
        except PipeplanError as exc:
            errors[n] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return False

    lo, hi = 0, 1
    while not fits(hi):
        lo = hi
        if hi >= cap:
            return (
                None,
                None,
                f"does not fit on {hi} {spec.name} (one layer per device at most): {errors[hi]}",
            )
        hi = min(2 * hi, cap)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            hi = mid
        else:
            lo = mid
    why = f"{hi - 1} do not fit: {errors[hi - 1]}" if hi > 1 else "one device fits"
    return hi, plans[hi], why


__all__ = ["Row", "WhatIfReport", "whatif", "allreduce_seconds", "stage_gradient_bytes"]
