"""`plan`: model + cluster + settings -> Plan. The library entry point behind `pipeplan plan`."""

from __future__ import annotations

import os
from pathlib import Path

from cost.cluster import Cluster, load_cluster
from cost.tensor import dtype_name
from planner.baselines import BASELINES
from planner.config import PlanConfig
from planner.errors import DoesNotFitError, PipeplanError
from planner.fitting import explain_does_not_fit
from planner.fmt import nbytes
from planner.graph import ModelGraph
from planner.ilp import solve_ilp
from planner.inspection import load_model
from planner.layers import LayerGraph
from planner.objective import Assignment, Evaluation, check_assignment, evaluate
from planner.pipeline import TimedPipeline, schedule_plan, stage_memory
from planner.plan_model import (
    BaselineRow,
    ModelInfo,
    Plan,
    Predicted,
    Route,
    Routing,
    ScheduleTrial,
    Simulation,
    SolverReport,
    StagePlan,
    TensorRef,
    device_timelines,
)
from planner.problem import Problem, build_problem
from planner.shapes import ShapeBindings


def plan(
    model: str | os.PathLike[str],
    cluster: Cluster | str | os.PathLike[str],
    config: PlanConfig | None = None,
    bindings: ShapeBindings | None = None,
    *,
    layers_file: str | None = None,
    layer_depth: int | None = None,
) -> Plan:
    """Partition `model` over `cluster`: the best plan under the cost model, explained.

    Raises `PipeplanError` for bad input and `DoesNotFitError` when no split fits memory.
    """
    config = config or PlanConfig()
    if not isinstance(cluster, Cluster):
        cluster = load_cluster(cluster)
    mg, lg = load_model(model, bindings, layers_file=layers_file, layer_depth=layer_depth)
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


MAX_AUTO_MICROBATCHES = 64


def _plan_once(
    mg: ModelGraph, lg: LayerGraph, cluster: Cluster, config: PlanConfig, bindings: ShapeBindings
) -> Plan:
    _check_settings(lg, cluster, config)
    problem = build_problem(mg, lg, cluster, config)
    rows: list[BaselineRow] = []
    best: tuple[Assignment, Evaluation, str] | None = None
    candidates: dict[str, tuple[Assignment, Evaluation]] = {}
    for name, baseline in BASELINES.items():
        a = baseline(problem)
        check_assignment(problem, a)
        ev = evaluate(problem, a)
        candidates[name] = (a, ev)
        rows.append(_baseline_row(name, a, ev, mg, config))
        if ev.fits and (best is None or ev.objective < best[1].objective):
            best = (a, ev, name)
    if config.strategy != "ilp":
        a, ev = candidates[config.strategy]
        if not ev.fits:
            raise explain_does_not_fit(problem, ev, strategy=config.strategy)
        report = SolverReport(
            strategy=config.strategy,
            backend="none",
            status="heuristic",
            optimal=False,
            objective=ev.objective,
            bound=None,
            gap=None,
            seconds=0.0,
        )
        return _to_plan(mg, lg, problem, a, ev, report, rows, bindings)
    result = solve_ilp(
        problem,
        warm=best[0] if best else None,
        alternatives=[a for a, ev in candidates.values() if ev.fits],
    )
    if result.assignment is None:
        if result.solve.status == "infeasible":
            worst = min((c[1] for c in candidates.values()), key=_deficit)
            raise explain_does_not_fit(problem, worst, strategy="ilp")
        if best is None:
            raise PipeplanError(
                f"the ILP solver failed ({result.solve.backend}: {result.solve.status}) and no baseline fits"
            )
        a, ev = best[0], best[1]
        status, backend = "baseline_fallback", result.solve.backend
    else:
        a = result.assignment
        check_assignment(problem, a)
        ev = evaluate(problem, a)
        status, backend = result.solve.status, result.solve.backend
    bound = max(b for b in (result.solve.bound, result.lower_bound) if b is not None)
    gap = max(0.0, (ev.objective - bound) / ev.objective) if ev.objective > 0 else 0.0
    report = SolverReport(
        strategy="ilp",
        backend=backend,
        status=status,
        optimal=status == "optimal",
        objective=ev.objective,
        bound=bound,
        gap=gap,
        seconds=result.solve.seconds,
        build_seconds=result.build_seconds,
        variables=result.variables,
        constraints=result.constraints,
        warm_start=best[2] if best else None,
    )
    return _to_plan(mg, lg, problem, a, ev, report, rows, bindings)


def _timed(problem: Problem, a: Assignment) -> tuple[TimedPipeline, list[TimedPipeline]]:
    """Simulate the schedule(s) asked for on split `a`; the fastest that fits wins."""
    cfg = problem.config
    kinds = ["1f1b", "zb", "interleaved", "gpipe"] if cfg.schedule == "auto" else [cfg.schedule]
    tried: list[TimedPipeline] = []
    for kind in kinds:
        try:
            tried.append(schedule_plan(problem, a, kind, cfg.virtual_stages))
        except ValueError as exc:
            if len(kinds) == 1:
                raise PipeplanError(
                    f"cannot build a {kind} schedule for this plan: {exc}"
                ) from None
    fitting = [t for t in tried if t.fits]
    if not fitting:
        t = min(tried, key=lambda t: max(t.peak_memory[d] - t.capacity[d] for d in t.capacity))
        d = max(t.capacity, key=lambda d: t.peak_memory[d] - t.capacity[d])
        short = t.peak_memory[d] - t.capacity[d]
        raise DoesNotFitError(
            f"model does not fit with the {t.kind} schedule: device {d} peaks at {nbytes(t.peak_memory[d])} "
            f"of {nbytes(t.capacity[d])} usable, short by {nbytes(short)} ({short} bytes); "
            "try --schedule 1f1b, --recompute or fewer micro-batches"
        )
    return min(fitting, key=lambda t: t.sim.iteration_s), tried


def _deficit(ev: Evaluation) -> float:
    return max(s.memory_bytes - s.capacity_bytes for s in ev.stages)


def _check_settings(lg: LayerGraph, cluster: Cluster, config: PlanConfig) -> None:
    n = len(lg.layers)
    if cluster.num_devices < 1:
        raise PipeplanError("the cluster has no devices")
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


def microbatch_size(mg: ModelGraph) -> int:
    for name in mg.inputs:
        info = mg.tensors.get(name)
        if info is not None and info.shape:
            return info.shape[0]
    return 1


def _baseline_row(
    name: str, a: Assignment, ev: Evaluation, mg: ModelGraph, config: PlanConfig
) -> BaselineRow:
    samples = microbatch_size(mg) * (config.microbatches if config.objective == "throughput" else 1)
    return BaselineRow(
        strategy=name,
        stages=a.num_stages,
        iteration_ms=ev.iteration_s * 1e3,
        throughput_samples_per_s=samples / ev.iteration_s if ev.iteration_s > 0 else 0.0,
        fits=ev.fits,
    )


def _tensor_ref(mg: ModelGraph, name: str) -> TensorRef:
    info = mg.tensors.get(name)
    return TensorRef(
        name=name,
        shape=list(info.shape) if info is not None and info.shape is not None else None,
        dtype=dtype_name(info.dtype) if info is not None else "unknown",
    )


def _routing(mg: ModelGraph, problem: Problem, a: Assignment, ev: Evaluation) -> Routing:
    forward, backward = [], []
    flows = {f.tensor: f for f in problem.flows}
    for s, names in enumerate(ev.crossing):
        for t in names:
            flow = flows[t]
            ref = _tensor_ref(mg, t)
            consumers = sorted(
                {a.stage_of_layer[c] for c in flow.consumers} - {a.stage_of_layer[flow.producer]}
            )
            route = Route(
                tensor=t,
                src_stage=s,
                dst_stage=s + 1,
                bytes=flow.nbytes,
                origin_stage=a.stage_of_layer[flow.producer],
                consumer_stages=consumers,
                shape=ref.shape,
                dtype=ref.dtype,
            )
            forward.append(route)
            if flow.is_float and problem.training:
                backward.append(route.model_copy(update={"src_stage": s + 1, "dst_stage": s}))
    return Routing(forward=forward, backward=backward)


def _to_plan(
    mg, lg, problem: Problem, a: Assignment, ev: Evaluation, report: SolverReport, rows, bindings
) -> Plan:
    config = problem.config
    cluster = problem.cluster
    analytic = ev
    timed, tried = _timed(problem, a)
    a, ev = timed.assignment, timed.evaluation
    stages = []
    graph_inputs = {t: set(ls) for t, ls in lg.input_consumers.items()}
    memory = stage_memory(problem, a, ev)
    for st in ev.stages:
        layers = [lg.layers[i] for i in st.layers]
        params = {p for layer in layers for p in layer.params}
        spec = cluster.device(st.device)
        compute_bound = st.occupied_s >= max(st.send_s, st.grad_send_s)
        if not st.fits:
            binds = "memory"
        elif abs(max(st.occupied_s, st.send_s, st.grad_send_s) - ev.bottleneck_s) <= 1e-12 * max(
            ev.bottleneck_s, 1e-30
        ):
            binds = "compute" if compute_bound else "link"
        elif st.memory_bytes >= 0.9 * st.capacity_bytes:
            binds = "memory"
        else:
            binds = "nothing"
        stages.append(
            StagePlan(
                index=st.index,
                device=st.device,
                device_kind=spec.name,
                node=cluster.node_of(st.device),
                layers=[layer.name for layer in layers],
                nodes=[n for layer in layers for n in layer.nodes],
                graph_inputs=sorted(t for t, ls in graph_inputs.items() if ls & set(st.layers)),
                graph_outputs=sorted(t for t, li in lg.output_producers.items() if li in st.layers),
                forward_ms=st.forward_s * 1e3,
                backward_ms=st.backward_s * 1e3,
                weight_grad_ms=st.weight_grad_s * 1e3,
                compute_ms=st.compute_s * 1e3,
                optimizer_ms=st.optimizer_s * 1e3,
                send_blocking_ms=st.send_blocking_s * 1e3,
                send_ms=st.send_s * 1e3,
                grad_send_ms=st.grad_send_s * 1e3,
                param_bytes=sum(mg.params[p].nbytes for p in params if mg.params[p].trainable),
                params_state_bytes=st.params_state_bytes,
                activation_bytes=st.activation_bytes,
                in_flight_microbatches=st.in_flight,
                static_memory_bytes=memory[st.index][0],
                activation_bytes_per_microbatch=memory[st.index][1],
                peak_memory_bytes=st.memory_bytes,
                memory_capacity_bytes=st.capacity_bytes,
                device_memory_bytes=spec.memory_bytes,
                binds=binds,
                bottleneck=ev.bottleneck == f"stage {st.index} compute"
                or ev.bottleneck.startswith(f"link {st.index}->"),
            )
        )
    mb = microbatch_size(mg)
    samples = mb * (config.microbatches if config.objective == "throughput" else 1)
    sim = timed.sim
    predicted = Predicted(
        schedule=timed.kind,
        iteration_ms=sim.iteration_s * 1e3,
        throughput_samples_per_s=samples / sim.iteration_s if sim.iteration_s > 0 else 0.0,
        bottleneck_ms=ev.bottleneck_s * 1e3,
        bottleneck=ev.bottleneck,
        bubble_fraction=sim.bubble_fraction,
        global_batch=samples,
        analytic_iteration_ms=analytic.iteration_s * 1e3,
    )
    simulation = Simulation(
        per_device=device_timelines(sim, timed.capacity),
        tried=[
            ScheduleTrial(
                kind=t.kind,
                virtual_stages=t.virtual_stages,
                iteration_ms=t.sim.iteration_s * 1e3,
                fits=t.fits,
            )
            for t in tried
        ],
    )
    info = ModelInfo(
        path=str(Path(mg.path)),
        graph_hash=mg.graph_hash,
        producer=mg.producer,
        opset=mg.opset,
        symbols=mg.symbols,
        microbatch_size=mb,
        inputs=[_tensor_ref(mg, t) for t in mg.inputs],
        outputs=[_tensor_ref(mg, t) for t in mg.outputs],
        params=mg.param_count,
        param_bytes=mg.param_bytes,
        has_weights=mg.has_weights,
    )
    return Plan(
        model=info,
        config=config,
        bindings={
            "dims": dict(bindings.dims),
            "batch": bindings.batch,
            "input_shapes": {k: list(v) for k, v in bindings.input_shapes.items()},
        },
        cluster=cluster,
        stages=stages,
        routing=_routing(mg, problem, a, ev),
        predicted=predicted,
        solver=report,
        simulation=simulation,
        schedule=timed.schedule,
        baselines=rows,
        explanation=_explain(problem, a, ev, report, rows, timed),
        warnings=list(mg.warnings),
    )


def _explain(
    problem: Problem,
    a: Assignment,
    ev: Evaluation,
    report: SolverReport,
    rows: list[BaselineRow],
    timed: TimedPipeline,
) -> list[str]:
    lines = []
    used = len(set(a.devices))
    total = problem.num_devices
    lines.append(
        f"{used} of {total} devices used"
        + (
            ""
            if used == total
            else f": more stages would add fill/drain time or link cost than they save ({total - used} left idle)"
        )
    )
    lines.append(
        f"bottleneck: {ev.bottleneck} at {ev.bottleneck_s * 1e3:.3f} ms per micro-batch; "
        f"simulated bubble {timed.sim.bubble_fraction:.1%}"
    )
    fitting = [r for r in rows if r.fits]
    if fitting and report.objective:
        best = min(fitting, key=lambda r: r.iteration_ms)
        lines.append(
            f"{report.strategy} gives {best.iteration_ms / (report.objective * 1e3):.2f}x the throughput of the best "
            f"baseline ({best.strategy}, {best.iteration_ms:.3f} ms per iteration, closed form)"
        )
    if problem.training:
        lines.append(
            f"schedule {timed.kind}"
            + (
                f" with {timed.virtual_stages} chunks per device"
                if timed.kind == "interleaved"
                else ""
            )
            + f": simulated {timed.sim.iteration_s * 1e3:.3f} ms per iteration"
        )
    tight = [s for s in ev.stages if s.memory_bytes > 0.9 * s.capacity_bytes]
    if tight:
        lines.append(
            "memory nearly full on "
            + ", ".join(f"stage {s.index} ({s.memory_bytes / s.capacity_bytes:.0%})" for s in tight)
        )
    return lines
