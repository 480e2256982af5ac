"""`plan`: model + cluster + settings -> Plan. The library entry point behind `pipeplan plan`.

The data path, one step per package: `planner.graph` loads and prices the ONNX graph and
groups its layers -> `planner.partition` prices every layer on every device group and
finds the split (baselines, then the exact ILP) -> `planner.simulate` schedules the
split and simulates it, keeping the fastest schedule that fits -> `planner.assemble`
writes it all down as a `Plan`.
"""

from __future__ import annotations

import os

from cost.cluster import Cluster, load_cluster
from cost.errors import DoesNotFitError, PipeplanError
from cost.timings import phase
from planner.assemble import assemble_plan
from planner.config import PlanConfig
from planner.graph.inspect import load_model
from planner.graph.layers import LayerGraph
from planner.graph.load import ModelGraph
from planner.graph.shapes import ShapeBindings
from planner.partition.problem import build_problem
from planner.partition.search import find_split
from planner.plan_file import Plan
from planner.simulate.choose import choose_schedule

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
    """Plan an already loaded model (what-if sweeps reuse one load for many clusters)."""
    if not config.auto_microbatches:
        return _plan_once(mg, lg, cluster, config, bindings)
    first = _plan_once(
        mg, lg, cluster, config.model_copy(update={"auto_microbatches": False}), bindings
    )
    p = len({s.device for s in first.stages})
    m = max(1, min(MAX_AUTO_MICROBATCHES, 9 * (p - 1)))
    last_error: DoesNotFitError | None = None
    while m >= 1:
        try:
            return _plan_once(
                mg, lg, cluster, config.model_copy(update={"microbatches": m}), bindings
            )
        except DoesNotFitError as exc:
            last_error = exc
            m //= 2
    raise last_error if last_error else DoesNotFitError("no micro-batch count fits")


def _plan_once(
    mg: ModelGraph, lg: LayerGraph, cluster: Cluster, config: PlanConfig, bindings: ShapeBindings
) -> Plan:
    _check_settings(lg, cluster, config)
    with phase("problem"):
        problem = build_problem(mg, lg, cluster, config)
    split = find_split(problem)
    with phase("simulate"):
        timed, tried = choose_schedule(problem, split.assignment)
    with phase("assemble"):
        return assemble_plan(mg, lg, problem, split, timed, tried, bindings)


def _check_settings(lg: LayerGraph, cluster: Cluster, config: PlanConfig) -> None:
    n = len(lg.layers)
    if cluster.num_devices < 1:
        raise PipeplanError("the cluster has no devices")
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
