"""What-if analysis: how would this model train on more, other or better-linked devices?

`whatif(model, cluster, config, bindings, adds=..., replaces=..., links=...)` loads the
model once, derives scenario clusters from the given one (`planner.whatif.scenarios`: the
given cluster first, then each `--add` sweep, each `--replace`, each `--link`), plans
each one and returns a `WhatIfReport`: one `Row` per scenario with throughput, speed-up,
memory, bubble, price and marginal gain. `min_devices_kind` also finds the fewest
devices of one kind on which the model trains at all.

Pipeline x data parallelism. Each scenario is planned by `planner.api.plan_graph`, the
same search `pipeplan plan` runs (`planner.parallel.search`: r identical replicas of a
pipeline for every replica layout, each replica's split priced with the ring all-reduce
of its stages' gradients, the fastest layout by the closed form kept), cached on disk
(`planner.whatif.cache`). A row reports the job plan's simulated figures: throughput over
all replicas, iteration time with the all-reduce, the replica pipeline's bubble. With
`--objective latency` (inference of one sample) or `data_parallel=False`, one pipeline.

Scaling. `weak` (the default): every replica runs the given settings, so the global
batch grows with r (r x B samples per iteration; `Row.global_batch` says what it is), as
when the per-replica batch is fixed. `strong`: the global batch B = micro-batch size x m
is fixed (the planner's `global_batch`) and split, each replica running m / r
micro-batches (layouts whose r does not divide m are skipped); fewer micro-batches per
pipeline mean a larger bubble, the trade-off Narayanan et al. (SC 2021) discuss in
their section 3.3. Compare rows under one scaling.

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
from planner.assemble import microbatch_size
from planner.config import PlanConfig
from planner.graph.inspect import load_model
from planner.graph.shapes import ShapeBindings
from planner.plan_file import Plan
from planner.whatif.cache import LayerOptions, PlanCache
from planner.whatif.scenarios import (
    Scenario,
    build_scenarios,
    device_kinds,
    homogeneous_cluster,
    resolve_kind,
)

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
    tensor_parallel: int = Field(1, description="devices per stage (its tensor-parallel group)")
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
    """A scenario's job plan (`planner.api.plan_graph`: its layout chosen by the planner's
    search) and the whole-cluster figures read from it."""

    plan: Plan

    @property
    def used_devices(self) -> list[str]:
        """Ids of the devices running a stage, all replicas (every device of a
        tensor-parallel group)."""
        replicas = self.plan.replicas or [[s.device for s in self.plan.stages]]
        groups = self.plan.tensor_groups
        return list(dict.fromkeys(m for rep in replicas for d in rep for m in groups.get(d, [d])))

    @property
    def devices_used(self) -> int:
        """Devices running a stage, all replicas (interleaved stages share devices)."""
        return len(self.used_devices)

    @property
    def replicas(self) -> int:
        return self.plan.layout.data_parallel

    @property
    def throughput(self) -> float:
        return self.plan.predicted.throughput_samples_per_s

    @property
    def iteration_s(self) -> float:
        return self.plan.predicted.iteration_ms * 1e-3

    @property
    def allreduce_s(self) -> float:
        return max((s.sync_ms for s in self.plan.stages), default=0.0) * 1e-3

    @property
    def global_batch(self) -> int:
        return self.plan.predicted.global_batch

    @property
    def description(self) -> str:
        lay = self.plan.layout
        tensor = f", tensor parallel {lay.tensor_parallel}" if lay.tensor_parallel > 1 else ""
        return f"{lay.data_parallel} x ({lay.shape}){tensor}" if lay.shape else ""


class _Planner:
    """Plans clusters for one loaded model, through the cache, with the planner's layout
    search (data parallelism on unless switched off, or for inference)."""

    def __init__(
        self, mg, lg, config, bindings, cache: PlanCache, layer_options, dp: bool, scaling: str
    ):
        self.mg, self.lg, self.bindings = mg, lg, bindings
        self.cache, self.layer_options, self.dp = cache, layer_options, dp
        self.scaling = scaling
        update: dict = {}
        if not dp:
            update["parallel"] = "pp"
        if scaling == "strong" and config.global_batch is None:
            update["global_batch"] = microbatch_size(mg) * config.microbatches
        self.config = config.model_copy(update=update)

    def plan(self, cluster: Cluster, config: PlanConfig | None = None) -> Plan:
        config = config or self.config
        if cluster.num_devices == 1 and config.schedule in ("auto", "interleaved"):
            # One device, one stage: every schedule is the same (and the interleaved
            # builder wants two devices), so plan it as 1F1B.
            config = config.model_copy(update={"schedule": "1f1b"})
        return self.cache.plan(self.mg, self.lg, cluster, config, self.bindings, self.layer_options)

    def best(self, cluster: Cluster) -> tuple[LayoutResult | None, str]:
        """The planner's job plan on `cluster`, or None and why nothing fits."""
        try:
            return LayoutResult(self.plan(cluster)), ""
        except PipeplanError as exc:  # DoesNotFitError, or e.g. --stages > devices
            return None, str(exc).splitlines()[0] if str(exc) else type(exc).__name__


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
            "replicas": result.replicas,
            "tensor_parallel": p.layout.tensor_parallel,
            "devices_used": len(used),
            "idle_devices": [d for d in cluster.device_ids() if d not in used],
            "cost_per_hour": price,
            "layout": result.description,
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


__all__ = ["Row", "WhatIfReport", "whatif"]
