"""`plan`: model + cluster + settings -> Plan. The library entry point behind `pipeplan plan`.

The data path, one step per package: `planner.graph` loads and prices the ONNX graph and
groups its layers -> `planner.partition` prices every layer on every device group and
finds the split (baselines, then the exact programme or ILP) -> `planner.simulate`
schedules the split and simulates it, keeping the fastest schedule that fits ->
`planner.assemble` writes it all down as a `Plan` -> `planner.parallel` does this for
every data-parallel layout (r replicas of a pipeline) and keeps the fastest.
"""

from __future__ import annotations

import os
from dataclasses import replace

from cost.cluster import Cluster, load_cluster
from cost.collectives import ReplicaRing
from cost.errors import DoesNotFitError, PipeplanError
from cost.timings import phase
from planner.assemble import assemble_plan, microbatch_size
from planner.config import PlanConfig
from planner.graph.inspect import load_model
from planner.graph.layers import LayerGraph
from planner.graph.load import ModelGraph
from planner.graph.shapes import ShapeBindings
from planner.graph.shard_price import TensorParallelGraph
from planner.parallel.job import job_plan
from planner.parallel.search import LayoutOption, layout_options, search_layouts
from planner.parallel.tensor import tensor_job_plan, tensor_layouts
from planner.partition.problem import Problem, build_problem
from planner.partition.search import Split, find_split
from planner.plan_file import Plan
from planner.simulate.choose import TimedPipeline, choose_schedule
from planner.sources import missing_family_warnings, pricing_sources

#: `--microbatches auto` tries at most this many micro-batches.
MAX_AUTO_MICROBATCHES = 64


def plan(
    model: str | os.PathLike[str],
    cluster: Cluster | str | os.PathLike[str],
    config: PlanConfig | None = None,
    bindings: ShapeBindings | None = None,
    *,
    layers_file: str | None = None,
    layer_depth: int | None = None,
    keep_merged_weights: bool = False,
) -> Plan:
    """Partition `model` over `cluster`: the best plan under the cost model, explained.

    `keep_merged_weights`: keep the weights the exporter merged with equal ones as shared
    (`planner.graph.aliases`; default: separate them). Raises `PipeplanError` for bad
    input and `DoesNotFitError` when no split fits memory.
    """
    config = config or PlanConfig()
    if not isinstance(cluster, Cluster):
        cluster = load_cluster(cluster)
    mg, lg = load_model(
        model,
        bindings,
        layers_file=layers_file,
        layer_depth=layer_depth,
        keep_merged_weights=keep_merged_weights,
    )
    return plan_graph(mg, lg, cluster, config, bindings or ShapeBindings())


def plan_graph(
    mg: ModelGraph, lg: LayerGraph, cluster: Cluster, config: PlanConfig, bindings: ShapeBindings
) -> Plan:
    """Plan an already loaded model (what-if sweeps reuse one load for many clusters).

    With `parallel: auto` (and training) the data-parallel degree and the replicas'
    devices are chosen with the split (`planner.parallel.search`); `pp` plans one
    pipeline over the cluster."""
    mb = microbatch_size(mg)
    _check_settings(lg, cluster, config, mb)
    with phase("tensor"):
        tensors, skipped = tensor_layouts(mg, lg, cluster, config)
    options = [
        replace(option, tensor=tensor)
        for tensor in tensors
        for option in layout_options(tensor.cluster if tensor else cluster, config, mb)
    ]
    if not options:
        raise PipeplanError(_no_layout(cluster, config, mb))

    def layers_of(option: LayoutOption) -> LayerGraph:
        return option.tensor.layers if option.tensor is not None else lg

    def graph_of(option: LayoutOption):
        return option.tensor.graph if option.tensor is not None else None

    def build(option: LayoutOption) -> Problem:
        with phase("problem"):
            return build_problem(
                mg, layers_of(option), option.layout.sub, option.config, option.ring,
                graph_of(option),
            )  # fmt: skip

    def solve(option: LayoutOption, problem: Problem):
        return solve_pipeline(
            mg, layers_of(option), option.layout.sub, option.config, option.ring,
            problem=problem, tensor=graph_of(option),
        )  # fmt: skip

    trials = search_layouts(options, build, solve, mb)
    best = trials[0]
    if not best.fits:
        # nothing fits: the reason of the first candidate (one pipeline, when tried)
        first = next(t for t in trials if t.option is options[0])
        raise first.exception or best.exception or DoesNotFitError("no layout fits memory")
    problem, split, (timed, tried) = best.problem, best.split, best.outcome
    tensor = best.option.tensor
    with phase("assemble"):
        replica = assemble_plan(mg, layers_of(best.option), problem, split, timed, tried, bindings)
        job = job_plan(replica, tensor.cluster if tensor else cluster, best, trials, mb)
        if tensor is not None:
            job = tensor_job_plan(job, cluster, tensor)
        sources = pricing_sources(
            mg, job.stages, cluster, config.dtype, config.training,
            set(tensor.graph.costs) if tensor is not None else set(),
        )  # fmt: skip
        job = job.model_copy(
            update={
                "pricing": sources.model_dump(),
                "warnings": [*job.warnings, *missing_family_warnings(sources)],
            }
        )
        if skipped and len(config.tensor_degrees) > 1:
            job = job.model_copy(
                update={"explanation": [*job.explanation, *(f"not tried: {s}" for s in skipped)]}
            )
        return job


def solve_pipeline(
    mg: ModelGraph,
    lg: LayerGraph,
    cluster: Cluster,
    config: PlanConfig,
    ring: ReplicaRing | None = None,
    *,
    problem: Problem | None = None,
    tensor: TensorParallelGraph | None = None,
) -> tuple[Problem, Split, tuple[TimedPipeline, list[TimedPipeline]]]:
    """One pipeline on `cluster` (one of `ring.replicas` replicas): the split and its
    simulated schedule; `--microbatches auto` tried from 9(p - 1) down, halving.
    `problem`: `build_problem`'s answer for these arguments, when the caller has it;
    `tensor`: every device of `cluster` is a tensor-parallel group (`build_problem`)."""
    if not config.auto_microbatches:
        return _solve_once(mg, lg, cluster, config, ring, problem, tensor)
    fixed = config.model_copy(update={"auto_microbatches": False})
    _, first, _ = _solve_once(mg, lg, cluster, fixed, ring, tensor=tensor)
    p = len(set(first.assignment.devices))
    m = max(1, min(MAX_AUTO_MICROBATCHES, 9 * (p - 1)))
    last_error: DoesNotFitError | None = None
    while m >= 1:
        try:
            return _solve_once(
                mg, lg, cluster, fixed.model_copy(update={"microbatches": m}), ring,
                tensor=tensor,
            )  # fmt: skip
        except DoesNotFitError as exc:
            last_error = exc
            m //= 2
    raise last_error if last_error else DoesNotFitError("no micro-batch count fits")


def _solve_once(
    mg: ModelGraph,
    lg: LayerGraph,
    cluster: Cluster,
    config: PlanConfig,
    ring: ReplicaRing | None,
    problem: Problem | None = None,
    tensor: TensorParallelGraph | None = None,
) -> tuple[Problem, Split, tuple[TimedPipeline, list[TimedPipeline]]]:
    if problem is None:
        with phase("problem"):
            problem = build_problem(mg, lg, cluster, config, ring, tensor)
    split = find_split(problem)
    with phase("simulate"):
        timed, tried = choose_schedule(problem, split.assignment)
    return problem, split, (timed, tried)


def _no_layout(cluster: Cluster, config: PlanConfig, mb: int) -> str:
    if config.data_parallel is not None:
        return (
            f"no layout of {config.data_parallel} identical replicas fits this cluster's nodes "
            f"({cluster.summary()})"
        )
    return (
        f"the global batch {config.global_batch} does not split into micro-batches of "
        f"{mb} samples for any replica count"
    )


def _check_settings(lg: LayerGraph, cluster: Cluster, config: PlanConfig, mb: int) -> None:
    n = len(lg.layers)
    if cluster.num_devices < 1:
        raise PipeplanError("the cluster has no devices")
    if config.data_parallel is not None:
        if config.parallel == "pp":
            raise PipeplanError("--dp needs --parallel auto (--parallel pp plans one pipeline)")
        if cluster.num_devices % config.data_parallel:
            raise PipeplanError(
                f"--dp {config.data_parallel} does not divide the cluster's {cluster.num_devices} devices"
            )
        if config.data_parallel > 1 and not config.training:
            raise PipeplanError("--dp above 1 needs training (--objective throughput)")
    if config.zero and config.parallel == "pp":
        raise PipeplanError("--zero 1 shards over data-parallel replicas: use --parallel auto")
    if config.global_batch is not None:
        if config.auto_microbatches:
            raise PipeplanError("give --global-batch or --microbatches auto, not both")
        if config.global_batch % mb:
            raise PipeplanError(
                f"--global-batch {config.global_batch} is not a multiple of the micro-batch "
                f"size {mb}"
            )
        if config.data_parallel and config.global_batch % (config.data_parallel * mb):
            raise PipeplanError(
                f"--global-batch {config.global_batch} does not split over --dp "
                f"{config.data_parallel} replicas of micro-batch {mb}"
            )
    if config.recompute and config.schedule == "zb" and config.training:
        raise PipeplanError(
            "--recompute with --schedule zb is not supported: the runner recomputes a "
            "stage's forward for each backward pass, so B and W would both pay it "
            "(use 1f1b, interleaved or gpipe; auto skips zb with --recompute)"
        )
    if config.stages is not None:
        if config.stages > n:
            raise PipeplanError(
                f"{config.stages} stages asked for, but the model has only {n} layers "
                "(use finer layers: --max-layer-share or --layer-depth)"
            )
        if config.stages > cluster.num_devices:
            raise PipeplanError(
                f"{config.stages} stages asked for, but the cluster has only {cluster.num_devices} devices"
            )
